"""Checks at the door for files and options that come from users.

Every check raises :class:`InputError` (a ``ValueError``) with one line that
names the file by its name only (never its folder, which may be a server path)
and says what is wrong and, where it helps, how to fix it. The command lines
turn these errors into ``error: <message>`` on stderr and exit code 2.

Files are read only when regular (:func:`read_regular`: a FIFO would block the
reader forever). Output paths of the command lines are checked before any work
(:func:`check_output_file`, :func:`check_output_folder`): a command never writes
inside a model folder, nor over a file or into a folder it does not own, unless
``--force`` is given; what each command owns is said in its own docstring.

Ground-truth CSVs of external test sets come in two formats:

* ISIC one-hot: ``image`` then one column per class, every class cell exactly
  0 or 1 and exactly one 1 per row.
* labelled: ``image_id, dx`` (plus optional HAM10000 metadata columns), one
  row per image, ``dx`` never empty.
"""

import io
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.contracts.runfolder import METADATA_FILE, MODEL_FILE, is_model_dir

EXIT_BAD_INPUT = 2
# A folder holding either of these is a model folder: no command writes into it unless forced.
MODEL_FOLDER_FILES = (METADATA_FILE, MODEL_FILE)
FORCE_HINT = "choose another --out or pass --force"
_ISIC_EXTRA_COLUMNS = ("image", "score_weight")


class InputError(ValueError):
    """A user-supplied file or option that cannot be used; the message is one line."""


def read_csv_text(path: Path, what: str = "CSV") -> pd.DataFrame:
    """Read a UTF-8 CSV as strings, refusing empty, header-only, binary and non-UTF-8 files.

    Args:
        path: the file.
        what: how messages call the file (e.g. "ground-truth CSV").

    Returns:
        The table with every cell a string (empty cells are ``""``).

    Raises:
        InputError: unreadable, empty, header-only, not UTF-8 or not a CSV.
    """
    name = Path(path).name
    try:
        raw = read_regular(path)
    except OSError as err:
        raise InputError(f"{what} {name}: cannot be read ({err.strerror or err})") from err
    if not raw.strip():
        raise InputError(f"{what} {name} is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} {name} is not UTF-8 text (byte {err.start}; Latin-1 or Excel encoding?): save it as UTF-8"
        ) from err
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise InputError(f"{what} {name} is not a readable CSV ({str(err).splitlines()[0]})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise InputError(f"{what} {name} has a header but no rows")
    return frame


def check_truth(frame: pd.DataFrame, name: str) -> None:
    """Check a ground-truth table in either format (see the module docstring).

    Raises:
        InputError: unknown format, empty ids or labels, duplicate or conflicting
            rows, or one-hot rows that are not exactly one 1 among 0s.
    """
    if "image" in frame.columns:
        _check_ids(frame["image"], name, "image")
        _check_one_hot(frame, name)
    elif {"image_id", "dx"} <= set(frame.columns):
        _check_ids(frame["image_id"], name, "image_id")
        _check_labels(frame, name)
    else:
        raise InputError(
            f"ground-truth CSV {name}: needs an 'image' column (ISIC one-hot) or 'image_id' and 'dx' columns; "
            f"found {list(frame.columns)[:8]}"
        )


def _check_ids(ids: pd.Series, name: str, column: str) -> None:
    """No empty ids; duplicates are checked per format (they may conflict)."""
    empty = int((ids.str.strip() == "").sum())
    if empty:
        raise InputError(f"ground-truth CSV {name}: {empty} row(s) with an empty {column}")


def _check_labels(frame: pd.DataFrame, name: str) -> None:
    """``image_id, dx``: no empty dx, one row per image, no image with two labels."""
    ids, labels = frame["image_id"].str.strip(), frame["dx"].str.strip()
    empty = ids[labels == ""]
    if len(empty):
        raise InputError(f"ground-truth CSV {name}: {len(empty)} row(s) with an empty dx, e.g. {list(empty[:3])}")
    per_image = labels.groupby(ids).agg(lambda s: sorted(set(s)))
    conflicting = per_image[per_image.map(len) > 1]
    if len(conflicting):
        first = conflicting.index[0]
        raise InputError(
            f"ground-truth CSV {name}: {len(conflicting)} image(s) with conflicting labels, "
            f"e.g. {first} is both {' and '.join(conflicting.iloc[0])}"
        )
    _refuse_duplicates(ids, name)


def _refuse_duplicates(ids: pd.Series, name: str) -> None:
    duplicated = sorted(set(ids[ids.duplicated()]))
    if duplicated:
        raise InputError(
            f"ground-truth CSV {name}: {len(duplicated)} image(s) listed more than once, e.g. {duplicated[:3]}; "
            "each image must have exactly one row"
        )


def _check_one_hot(frame: pd.DataFrame, name: str) -> None:
    """ISIC one-hot: every class cell 0 or 1, exactly one 1 per row, one row per image."""
    class_columns = [c for c in frame.columns if c.lower() not in _ISIC_EXTRA_COLUMNS]
    if not class_columns:
        raise InputError(f"ground-truth CSV {name}: no class columns after 'image'")
    values = frame[class_columns].apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce")).to_numpy(float)
    bad_cell = ~np.isin(values, (0.0, 1.0))
    bad_row = bad_cell.any(axis=1) | ((np.nan_to_num(values) == 1).sum(axis=1) != 1)
    rows = np.flatnonzero(bad_row)
    if rows.size:
        k = rows[0]
        cells = ", ".join(f"{c}={frame[c].iloc[k]}" for c in class_columns if frame[c].iloc[k].strip() not in ("0", "0.0"))
        raise InputError(
            f"ground-truth CSV {name}: {rows.size} row(s) are not one-hot (every class cell 0 or 1, exactly one 1), "
            f"e.g. {frame['image'].iloc[k]}: {cells or 'no class set'}"
        )
    _refuse_duplicates(frame["image"].str.strip(), name)


def read_truth_csv(path: Path) -> pd.DataFrame:
    """Read and check a ground-truth CSV (:func:`read_csv_text` + :func:`check_truth`)."""
    frame = read_csv_text(path, "ground-truth CSV")
    check_truth(frame, Path(path).name)
    return frame


def positive_int(value: int, option: str) -> int:
    """``value`` when it is at least 1; raises :class:`InputError` naming the option otherwise."""
    if value is None or int(value) < 1:
        raise InputError(f"{option} must be a positive whole number, got {value}")
    return int(value)


def report(err: BaseException) -> int:
    """Say ``error: <first line>`` on stderr for a command line; returns :data:`EXIT_BAD_INPUT`."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file; a FIFO, device or socket is refused from its ``stat``, never opened.

    Opening a FIFO for reading blocks until a writer comes, so one in an image folder
    would hang the caller forever.

    Raises:
        InputError: not a regular file (names it by its name).
        OSError: the file cannot be read.
    """
    path = Path(path)
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"{path.name} is not a regular file (a pipe, device or socket); refused without reading it")
    with open(path, "rb") as handle:
        return handle.read()


def model_folder_of(path: Path) -> Path | None:
    """The model folder ``path`` lies in or is (the nearest folder above holding ``model.json`` or
    ``model.keras``, symbolic links resolved), or None."""
    for folder in (Path(path).resolve(), *Path(path).resolve().parents):
        if any((folder / name).exists() for name in MODEL_FOLDER_FILES):
            return folder
    return None


def check_model_folder(path: Path, option: str = "--model") -> Path:
    """``path`` when it is a model folder (it holds ``model.keras`` and ``model.json``), before any work.

    Only the files' presence is checked here; what they hold is checked when they are read.

    Raises:
        InputError: no such folder, or a folder without both files (one line naming the folder by its name).
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{option} {path.name}: " + ("a file, not a folder" if path.exists() else "no such folder"))
    if not is_model_dir(path):
        raise InputError(f"{option} {path.name}: not a model folder (it needs {MODEL_FILE} and {METADATA_FILE})")
    return path


def check_output_file(path: Path, option: str = "--out", *, force: bool = False, owned=None) -> Path:
    """Refuse an output file a command must not write, before any work is done.

    Refused: a folder, a path under a file, a path inside a model folder, and an existing
    file the command does not own (``owned(path)`` false; no ``owned``: none is owned).
    ``force`` lifts the last two refusals only.

    Raises:
        InputError: one line naming the file and what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path.name} is a folder: give the file to write")
    _check_parent(path, option)
    if force:
        return path
    _refuse_model_folder(path, option)
    if os.path.lexists(path) and not (owned is not None and path.is_file() and owned(path)):
        raise InputError(f"{option} {path.name} exists and was not written by this command: {FORCE_HINT}")
    return path


def check_output_folder(path: Path, marker: str, option: str = "--out", *, force: bool = False) -> Path:
    """Refuse an output folder a command must not write into, before any work is done.

    A folder is this command's when it is absent, empty, or holds ``marker`` (the table the
    command writes last). Refused: a file, a folder inside a model folder, a folder with other
    content; ``force`` lifts the last two refusals only.

    Raises:
        InputError: one line naming the folder and what to do.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(f"{option} {path.name} is a file, not a folder")
    _check_parent(path, option)
    if force:
        return path
    _refuse_model_folder(path, option)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InputError(f"{option} {path.name} holds files this command did not write (no {marker}): {FORCE_HINT}")
    return path


def _refuse_model_folder(path: Path, option: str) -> None:
    folder = model_folder_of(path)
    if folder is not None:
        raise InputError(f"{option} {path.name} is inside the model folder {folder.name}, whose files it could "
                         f"replace: {FORCE_HINT}")


def _check_parent(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder the process can write to."""
    above = Path(os.path.abspath(path)).parent
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InputError(f"{option} {path.name}: {above.name} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path.name}: the folder {above.name} is not writable")
