"""The tree tells the architecture: no import cycles in ``core/`` or ``ui/``, and ``core``'s packages in their order.

Imports are read from the source (``ast``), those inside functions included: a cycle
hidden in a function is still a cycle a reader has to hold in mind.
"""

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
CORE_PACKAGES = ("contracts", "dataset", "serving", "evaluation", "explaining", "training")


def modules(*tops) -> dict:
    """``{dotted name: path}`` of every module under the given top-level folders."""
    found = {}
    for top in tops:
        for path in (PROJECT / top).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            parts = path.relative_to(PROJECT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(path: Path):
    """Every module name an ``import`` or ``from … import`` in the file names (a ``from`` also yields ``module.name``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def import_graph(*tops) -> dict:
    """``{module: set of project modules it imports}``; a package does not count as importing its own modules."""
    known = modules(*tops)

    def resolve(name):
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in known.items():
        targets = {resolve(n) for n in imported_names(path)} - {"", name}
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict) -> list | None:
    """One import cycle as a list of modules (first = last), or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from core.serving import predict\n")
    assert set(imported_names(module)) == {"os", "core.serving", "core.serving.predict"}


@pytest.mark.parametrize("top", ["core", "ui"])
def test_no_import_cycles(top):
    graph = import_graph(top)
    assert len(graph) > 10
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_core_is_six_packages_and_no_flat_modules():
    flat = sorted(p.name for p in (PROJECT / "core").glob("*.py") if p.name not in ("__init__.py", "__main__.py", "cli.py"))
    assert flat == []
    assert sorted(p.name for p in (PROJECT / "core").iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(CORE_PACKAGES)


def _may_import(package: str) -> tuple:
    init = ast.parse((PROJECT / "core" / package / "__init__.py").read_text())
    assert ast.get_docstring(init), f"core/{package}/__init__.py says what the package owns"
    for node in init.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "MAY_IMPORT":
            return ast.literal_eval(node.value)
    raise AssertionError(f"core/{package}/__init__.py declares no MAY_IMPORT")


def test_each_core_package_imports_only_what_it_declares_and_the_order_has_no_loop():
    graph = import_graph("core")
    allowed = {package: set(_may_import(package)) for package in CORE_PACKAGES}
    crossings = []
    for module, targets in graph.items():
        here = module.split(".")[1] if module.count(".") else None
        for target in targets:
            there = target.split(".")[1] if target.count(".") else None
            if here in allowed and there and there != here and there not in allowed[here]:
                crossings.append(f"{module} -> {target}")
    assert crossings == []
    assert find_cycle({p: allowed[p] for p in CORE_PACKAGES}) is None


def test_core_never_imports_streamlit_or_the_pages():
    offenders = [f"{module} -> {name}" for module, path in modules("core").items() for name in imported_names(path)
                 if name.split(".")[0] in ("streamlit", "ui", "pages")]
    assert offenders == []


PAGE_SCRIPTS_NEVER_IMPORT = ("core", "pandas", "numpy", "tensorflow")  # a page calls ui/, which calls these


def page_script_offenders(paths) -> list:
    """``"script -> module"`` for every import of :data:`PAGE_SCRIPTS_NEVER_IMPORT` in the given scripts."""
    return [f"{path.name} -> {name}" for path in paths for name in imported_names(path)
            if name.split(".")[0] in PAGE_SCRIPTS_NEVER_IMPORT]


def test_page_scripts_are_thin_they_import_ui_not_core_or_data_libraries(tmp_path):
    from ui.frame import PAGES

    scripts = sorted({PROJECT / "app.py", *(PROJECT / "app_pages").glob("*.py"), *(PROJECT / e.script for e in PAGES)})
    assert len(scripts) == len(PAGES) + 1  # the entry script and every declared page, no stray script
    assert not (PROJECT / "pages").exists()  # it would turn on Streamlit's legacy navigation (see app.py)
    assert page_script_offenders(scripts) == []
    fat = tmp_path / "fat_page.py"
    fat.write_text("import pandas as pd\nimport streamlit as st\n"
                   "from core.dataset import explore\nfrom ui import loaders\n")
    assert page_script_offenders([fat]) == ["fat_page.py -> pandas", "fat_page.py -> core.dataset",
                                            "fat_page.py -> core.dataset.explore"]
