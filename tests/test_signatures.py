"""Public ``core`` functions take at most three positional parameters; the rest are keyword-only.

As scikit-learn does (``f(y_true, y_score, *, sample_weight=None)``): the data a
function acts on goes first, options by name, so a call reads without the
signature at hand and a new option can never shift the meaning of an old call.
``self`` and ``cls`` do not count; private helpers (``_name``) are free.
"""

import ast
import textwrap
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
MAX_POSITIONAL = 3


def _positional(fn: ast.FunctionDef, in_class: bool) -> list:
    """The names ``fn`` accepts by position, without the bound ``self``/``cls`` of a method."""
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    return names[1:] if in_class and not static and names else names


def offenders(source: str, where: str) -> list:
    """``"<where>:<line> name(a, b, c, d)"`` for each public function or method of a public class in
    ``source`` with more than :data:`MAX_POSITIONAL` positional parameters (nested functions are local)."""
    found = []

    def visit(body, prefix: str, in_class: bool):
        for node in body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                visit(node.body, f"{prefix}{node.name}.", True)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                names = _positional(node, in_class)
                if len(names) > MAX_POSITIONAL:
                    found.append(f"{where}:{node.lineno} {prefix}{node.name}({', '.join(names)})")

    visit(ast.parse(source, filename=where).body, "", False)
    return found


def test_public_core_functions_take_at_most_three_positional_parameters():
    found = []
    for path in sorted((PROJECT / "core").rglob("*.py")):
        found += offenders(path.read_text(encoding="utf-8"), str(path.relative_to(PROJECT)))
    assert not found, (f"{len(found)} public core functions take more than {MAX_POSITIONAL} positional parameters; "
                       "put a * before the options:\n" + "\n".join(found))


def test_the_check_names_each_offender_and_spares_what_is_allowed():
    source = textwrap.dedent("""\
        def scored(y_true, y_score, classes, positive="mel"):
            def local(a, b, c, d):
                pass
        def fine(y_true, y_score, classes, *, positive="mel", threshold=0.5):
            pass
        def _helper(a, b, c, d, e):
            pass
        class Trainer:
            def end_epoch(self, epoch, lr, loss, seconds):
                pass
            def phase(self, name, message, total, *, unit="images"):
                pass
            @classmethod
            def of(cls, a, b, c):
                pass
            @staticmethod
            def pair(a, b, c, d):
                pass
        class _Private:
            def step(self, a, b, c, d):
                pass
        """)
    assert offenders(source, "core/x.py") == [
        "core/x.py:1 scored(y_true, y_score, classes, positive)",
        "core/x.py:9 Trainer.end_epoch(epoch, lr, loss, seconds)",
        "core/x.py:17 Trainer.pair(a, b, c, d)",
    ]
