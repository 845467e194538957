"""The predictions file: one contract for every CSV of predictions the project writes or reads.

Columns, in this order (optional ones only when known):

=================  ======================================================================
``image_id``       the dataset id, or the file stem of a predicted file
``dx``             the **truth** (evaluation files only; never the prediction)
``dx_pred``        the predicted class: the arg-max of the probabilities
``ood_flag``       1 when the image was flagged as unlike the training images, else 0
``ood_score``      the out-of-distribution score, × its threshold (flagged above 1)
``<class>``        one probability per class of ``model.json``, in model order
``calibration``    ``calibrated`` (temperature scaling applied) or ``raw`` (the model's softmax)
``temperature``    the temperature T applied (empty when raw)
``temperature_n``  the validation images T was fitted on (empty when raw or unknown)
=================  ======================================================================

The last three say which probabilities the file holds, on every row, so the file
stays a plain CSV that ``pandas.read_csv(path)``, Python's ``csv`` module and a
spreadsheet read with their defaults. ``core.serving.predict`` and the Predict page write
calibrated probabilities; the trainer's ``predictions_val.csv`` /
``predictions_test.csv`` are raw (temperature scaling is fitted on them). Older
files, whose first line said so as a ``# probabilities: ...`` comment, and files
from before either (``image_id, dx, <classes>``) read the same.

Every CSV the project writes goes through :func:`csv_text` / :func:`write_csv`: text
cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return; file names and ids come from users) get a leading
single quote, as OWASP advises against CSV injection; numeric columns are left alone.
"""

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from core.contracts.labels import encode_labels
from core.contracts.runfolder import predictions_file

FILES = {split: predictions_file(split) for split in ("val", "test", "external")}
IMAGE_ID = "image_id"
TRUTH = "dx"
PREDICTED = "dx_pred"
OOD_FLAG = "ood_flag"
OOD_SCORE = "ood_score"
CALIBRATION = "calibration"
TEMPERATURE = "temperature"
TEMPERATURE_N = "temperature_n"
PROVENANCE = (CALIBRATION, TEMPERATURE, TEMPERATURE_N)
OPTIONAL = (PREDICTED, OOD_FLAG, OOD_SCORE, *PROVENANCE)
RAW = "raw"
CALIBRATED = "calibrated"
LEGACY_HEADER = "# probabilities: "  # the first line of files written before the calibration columns
DECIMALS = 6
# Probabilities written with a few decimals do not sum to exactly 1.
SUM_TOLERANCE = 1e-3
# A spreadsheet runs a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


class PredictionsError(ValueError):
    """A predictions CSV that cannot be used, with a message naming the file and the problem."""


def make_table(image_ids, probs: np.ndarray, classes, *, truth=None, ood_scores=None, ood_flags=None) -> pd.DataFrame:
    """A predictions table in contract order; ``dx_pred`` is the arg-max of ``probs``.

    Args:
        image_ids: one id per row.
        probs: ``(N, C)`` probabilities in ``classes`` order.
        classes: the model's class codes.
        truth: the true labels, when known.
        ood_scores, ood_flags: the out-of-distribution score and flag of each row, when scored.
    """
    classes = [str(c) for c in classes]
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    table = pd.DataFrame({IMAGE_ID: pd.Series(list(image_ids), dtype=str)})
    if truth is not None:
        table[TRUTH] = pd.Series(list(truth), dtype=str).to_numpy()
    table[PREDICTED] = [classes[i] for i in probs.argmax(axis=1)] if len(probs) else []
    if ood_scores is not None:
        table[OOD_FLAG] = np.asarray(ood_flags, dtype=bool).astype(int)
        table[OOD_SCORE] = np.round(np.asarray(ood_scores, dtype=np.float64), 4)
    for k, c in enumerate(classes):
        table[c] = probs[:, k]
    return table


def percent(probability: float) -> str:
    """A probability as every page shows it: ``49.6%``."""
    return f"{float(probability):.1%}"


def neutralise(value):
    """A text cell a spreadsheet would run as a formula, with a leading single quote; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return QUOTE + value
    return value


def unquote(value):
    """Undo :func:`neutralise`, so an id read back is the id written."""
    if isinstance(value, str) and value.startswith(QUOTE) and value[1:].startswith(FORMULA_START):
        return value[1:]
    return value


def csv_text(frame: pd.DataFrame, *, index: bool = False, float_format: str | None = None) -> str:
    """The one CSV writer of the project: a plain CSV with a header row and no comment line.

    Text cells and column names are passed through :func:`neutralise`; numeric and boolean
    columns are written as numbers, so a negative number stays a number. ``index=True``
    writes the index as the first column(s).
    """
    frame = frame.reset_index() if index else frame
    safe = frame.copy()
    text = [c for c in safe.columns
            if not (pd.api.types.is_numeric_dtype(safe[c]) or pd.api.types.is_bool_dtype(safe[c]))]
    for column in text:
        safe[column] = safe[column].map(neutralise)
    # With "\n" line ends the csv writer leaves a bare "\r" unquoted, and other readers take it for a line end.
    carriage = any(safe[c].map(lambda v: isinstance(v, str) and "\r" in v).any() for c in text)
    quoting = csv.QUOTE_ALL if carriage else csv.QUOTE_MINIMAL
    safe.columns = [neutralise(str(c)) for c in safe.columns]
    return safe.to_csv(index=False, float_format=float_format, lineterminator="\n", quoting=quoting)


def read_csv(source, **kwargs) -> pd.DataFrame:
    """Read a CSV written by :func:`csv_text` (``pandas.read_csv`` with ``kwargs``), text cells as written."""
    frame = pd.read_csv(source, **kwargs)
    for column in frame.columns:
        if pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(unquote)
    return frame


def write_csv(path: Path, frame: pd.DataFrame, *, index: bool = False, float_format: str | None = None) -> None:
    """Write ``frame`` with :func:`csv_text` (UTF-8)."""
    Path(path).write_text(csv_text(frame, index=index, float_format=float_format), encoding="utf-8")


def kind(temperature) -> str:
    """``"calibrated"`` when a temperature is applied, else ``"raw"``: a predictions file's ``calibration``."""
    return CALIBRATED if temperature is not None else RAW


def with_calibration(table: pd.DataFrame, probabilities: str, *, temperature=None, n=None) -> pd.DataFrame:
    """``table`` with the ``calibration``, ``temperature`` and ``temperature_n`` columns filled on every row."""
    if probabilities not in (RAW, CALIBRATED):
        raise ValueError(f"probabilities must be {RAW!r} or {CALIBRATED!r}, got {probabilities!r}")
    if probabilities == CALIBRATED and not temperature:
        raise ValueError("calibrated probabilities need the temperature that calibrated them")
    calibrated = probabilities == CALIBRATED
    out = table.drop(columns=[c for c in PROVENANCE if c in table.columns])
    out[CALIBRATION] = probabilities
    out[TEMPERATURE] = float(temperature) if calibrated else np.nan
    out[TEMPERATURE_N] = pd.array([int(n) if calibrated and n else pd.NA] * len(out), dtype="Int64")
    return out


def to_csv(table: pd.DataFrame, probabilities: str, *, temperature=None, n=None) -> str:
    """A predictions file's text: the table, its calibration columns, probabilities to 6 decimals."""
    return csv_text(with_calibration(table, probabilities, temperature=temperature, n=n), float_format=f"%.{DECIMALS}f")


def write(path: Path, table: pd.DataFrame, probabilities: str, *, temperature=None, n=None) -> None:
    """Write a predictions file (see :func:`to_csv`); ``probabilities`` is ``"raw"`` or ``"calibrated"``."""
    Path(path).write_text(to_csv(table, probabilities, temperature=temperature, n=n), encoding="utf-8")


def _legacy_line(path: Path) -> str:
    """The ``# probabilities: ...`` first line of an older file, or an empty string."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().strip()
    return first if first.startswith(LEGACY_HEADER.strip()) else ""


def info(frame: pd.DataFrame, legacy_line: str = "") -> dict:
    """Which probabilities a predictions table holds.

    Returns:
        ``{"probabilities": "raw" | "calibrated" | "unknown", "temperature": T or None, "n": n or None}``,
        from the calibration columns, else from an older file's first line.
    """
    if CALIBRATION in frame.columns and len(frame):
        kinds = set(frame[CALIBRATION].astype(str))
        kind = kinds.pop() if len(kinds) == 1 else "unknown"
        t = pd.to_numeric(frame.get(TEMPERATURE, pd.Series(dtype=float)), errors="coerce").dropna()
        n = pd.to_numeric(frame.get(TEMPERATURE_N, pd.Series(dtype=float)), errors="coerce").dropna()
        return {"probabilities": kind, "temperature": float(t.iloc[0]) if len(t) else None,
                "n": int(n.iloc[0]) if len(n) else None}
    if legacy_line:
        kind, _, detail = legacy_line[len(LEGACY_HEADER) :].partition(",")
        t = detail.replace("temperature", "").strip()
        return {"probabilities": kind.strip(), "temperature": float(t) if t else None, "n": None}
    return {"probabilities": "unknown", "temperature": None, "n": None}


def read_info(path: Path) -> dict:
    """:func:`info` of a predictions file."""
    return info(read_frame(path), _legacy_line(path))


def read_frame(path: Path) -> pd.DataFrame:
    """The raw table of a predictions file (an older file's comment line skipped), ids as written."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    skip = 1 if _legacy_line(path) else 0
    text_columns = (IMAGE_ID, TRUTH, PREDICTED, CALIBRATION)
    try:
        with open(path, encoding="utf-8", newline="") as handle:  # a "\r" inside a quoted cell stays one
            text = handle.read()
        return read_csv(io.StringIO(text), skiprows=skip, dtype={c: str for c in text_columns})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictionsError(f"{path}: not a readable CSV ({err})") from err


def validate(frame: pd.DataFrame, classes, *, source: str = "predictions", truth: bool = True) -> pd.DataFrame:
    """Check a predictions table against the model's classes and return a clean copy.

    Returns:
        ``image_id`` (and ``dx`` when ``truth``) as strings, the optional columns present,
        then the class columns as float64 in ``classes`` order.

    Raises:
        PredictionsError: missing columns, class columns that differ from ``classes``,
            empty or duplicate rows, non-numeric or out-of-range probabilities, rows not
            summing to 1, or true labels outside ``classes``.
    """
    classes = [str(c) for c in classes]
    required = [IMAGE_ID, *([TRUTH] if truth else []), *classes]
    missing = [c for c in required if c not in frame.columns]
    extra = [c for c in frame.columns if c not in {*required, *OPTIONAL, *([] if truth else [TRUTH])}]
    if missing or extra:
        raise PredictionsError(f"{source}: columns do not match the model (classes {classes}): "
                               f"missing {missing}, unexpected {extra}")
    if frame.empty:
        raise PredictionsError(f"{source}: no rows")
    labels = [c for c in (IMAGE_ID, TRUTH, PREDICTED) if c in frame.columns]
    out = frame[labels].astype(str)
    duplicated = out[IMAGE_ID][out[IMAGE_ID].duplicated()].unique().tolist()
    if duplicated:
        raise PredictionsError(f"{source}: duplicate image_id rows {duplicated[:5]}")
    unknown = sorted(set(out[TRUTH]) - set(classes)) if TRUTH in out else []
    if unknown:
        raise PredictionsError(f"{source}: unknown labels in dx {unknown}; model classes are {classes}")
    ood = frame[[c for c in (OOD_FLAG, OOD_SCORE) if c in frame.columns]].apply(pd.to_numeric, errors="coerce")
    probs = _probability_block(frame, classes, source)
    return pd.concat([out.reset_index(drop=True), ood.reset_index(drop=True), probs.reset_index(drop=True)], axis=1)


def _probability_block(frame: pd.DataFrame, classes: list, source: str) -> pd.DataFrame:
    """The class columns as floats, checked to be probabilities that sum to 1."""
    probs = frame[classes].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = frame.loc[probs.isna().any(axis=1), IMAGE_ID].tolist()
    if bad:
        raise PredictionsError(f"{source}: missing or non-numeric probabilities for images {bad[:5]}")
    values = probs.to_numpy()
    if (values < 0).any() or (values > 1).any():
        raise PredictionsError(f"{source}: probabilities outside [0, 1]")
    sums = values.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > SUM_TOLERANCE)
    if off.size:
        first = frame[IMAGE_ID].iloc[off[0]]
        raise PredictionsError(f"{source}: probabilities of {off.size} rows do not sum to 1 "
                               f"(e.g. {first}: {sums[off[0]]:.4f}); expected softmax outputs")
    return probs


def read(path: Path, classes, truth: bool = True) -> pd.DataFrame:
    """Read and validate one predictions file (see :func:`validate`)."""
    return validate(read_frame(path), classes, source=str(path), truth=truth)


def truth_and_probs(table: pd.DataFrame, classes) -> tuple:
    """``(true labels, probability matrix)`` of a validated table with truth."""
    return table[TRUTH], table[list(classes)].to_numpy(dtype=np.float64)


def label_indices_and_probs(table: pd.DataFrame, classes) -> tuple:
    """``(y_true, probs)``: true labels as indices into ``classes`` and the probability matrix, as metrics take them."""
    classes = list(classes)
    truth, probs = truth_and_probs(table, classes)
    return encode_labels(truth, classes), probs
