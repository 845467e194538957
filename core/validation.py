"""Checks at the door for files and options that come from users.

Every check raises :class:`InputError` (a ``ValueError``) with one line that
names the file by its name only (never its folder, which may be a server path)
and says what is wrong and, where it helps, how to fix it. The command lines
turn these errors into ``error: <message>`` on stderr and exit code 2.

Ground-truth CSVs of external test sets come in two formats:

* ISIC one-hot: ``image`` then one column per class, every class cell exactly
  0 or 1 and exactly one 1 per row.
* labelled: ``image_id, dx`` (plus optional HAM10000 metadata columns), one
  row per image, ``dx`` never empty.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd

EXIT_BAD_INPUT = 2
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
        raw = Path(path).read_bytes()
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


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
