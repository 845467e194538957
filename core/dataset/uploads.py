"""Where the app may read external test sets from, and where a session keeps its uploads.

A visitor of the app can name server folders only under the roots the operator
lists, and every message shown to a visitor has its server paths removed.

Environment variables:
    HAM_EXTERNAL_ROOTS: folders (``os.pathsep``-separated) under which the
        Evaluate page accepts typed image folders and truth CSVs. Default: the
        dataset folder (``core.contracts.paths.dataset_dir()``). Set it to an empty value
        to accept uploads only.

Uploaded external sets and their results live in a :class:`Workspace`: a
private temporary folder per browser session (``tempfile``, never the shared
cache), removed when the session ends, when the process exits, or when the
session starts a new external set.
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

from core.contracts.paths import dataset_dir

ROOTS_ENV = "HAM_EXTERNAL_ROOTS"
# An absolute POSIX or Windows path standing on its own (not "0.6/0.4", not a URL), up to
# whitespace, a quote, a bracket or punctuation; a trailing full stop is not part of it.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:\\|/)[^\s'\"`:,;()\[\]]*[^\s'\"`:,;()\[\].]")


class OutsideRootsError(ValueError):
    """A typed path outside the operator's roots; the message never shows a server path."""


def external_roots() -> list:
    """The resolved folders visitors may read external sets from (see the module docstring)."""
    value = os.environ.get(ROOTS_ENV)
    entries = [dataset_dir()] if value is None else [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]
    return [p.resolve() for p in entries]


def resolve_external(typed: str, what: str = "path") -> Path:
    """The real path of a typed folder or file, refused unless it lies under an external root.

    Symbolic links and ``..`` are resolved first, so a link inside a root that
    points outside it is refused too. Relative paths are taken relative to the
    first root.

    Raises:
        OutsideRootsError: empty, outside every root, or no roots configured.
    """
    roots = external_roots()
    if not roots:
        raise OutsideRootsError("Typed server paths are disabled here: upload the files instead.")
    text = str(typed).strip()
    if not text:
        raise OutsideRootsError(f"No {what} given.")
    if "\0" in text:
        raise OutsideRootsError(f"The {what} contains a NUL character, which no file name can hold.")
    path = Path(text).expanduser()
    real = (path if path.is_absolute() else roots[0] / path).resolve()
    if not _inside(real, roots):
        raise OutsideRootsError(
            f"The {what} is not inside a folder this server allows (HAM_EXTERNAL_ROOTS); upload the files instead."
        )
    return real


def _inside(real: Path, roots: list) -> bool:
    return any(real == root or root in real.parents for root in roots)


def check_files_inside(files, roots: list) -> None:
    """Refuse the first file whose real path (symbolic links resolved) is outside every root.

    A folder inside a root may hold a link to a file anywhere; resolving the folder
    alone would follow it, so each file is resolved and checked on its own.

    Raises:
        OutsideRootsError: naming the file by its name only.
    """
    roots = [Path(r).resolve() for r in roots]
    for file in map(Path, files):
        if not _inside(file.resolve(), roots):
            raise OutsideRootsError(f"{file.name} links to a file outside the folders this server allows "
                                    "(HAM_EXTERNAL_ROOTS); refused.")


def redact_paths(text: str, known: dict | None = None) -> str:
    """``text`` with server paths removed: known folders become their labels, other absolute paths their last part.

    Args:
        text: a message, e.g. an exception's.
        known: ``{folder: label}`` replaced first (e.g. a session workspace -> "upload").
    """
    text = str(text)
    for folder, label in sorted((known or {}).items(), key=lambda kv: -len(str(kv[0]))):
        for form in {str(folder), str(Path(folder).resolve())}:
            text = text.replace(form + os.sep, f"{label}{os.sep}").replace(form, label)
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0).replace("\\", "/")).name or "…", text)


class Workspace:
    """A private temporary folder of one session, removed by :meth:`clear` or when garbage-collected.

    Args:
        prefix: name prefix of the temporary folder.
    """

    def __init__(self, prefix: str = "ham-session-"):
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.path = Path(self._dir.name)

    def fresh(self, name: str) -> Path:
        """An empty sub-folder ``name`` (its previous content removed)."""
        folder = self.path / Path(name).name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def remove(self, name: str) -> None:
        """Remove the sub-folder ``name`` and its content (nothing when absent)."""
        shutil.rmtree(self.path / Path(name).name, ignore_errors=True)

    def save_upload(self, folder: Path, name: str, data: bytes) -> Path:
        """Write uploaded bytes under ``folder`` by the file's base name only (no path tricks)."""
        safe = Path(str(name).replace("\\", "/")).name.lstrip(".") or "upload"
        target = Path(folder) / safe
        target.write_bytes(data)
        return target

    def clear(self) -> None:
        """Remove the folder and everything in it."""
        self._dir.cleanup()

    @property
    def alive(self) -> bool:
        """False once :meth:`clear` has removed the folder."""
        return self.path.is_dir()
