"""The predictions file: one contract for every CSV of predictions the project writes or reads.

Columns, in this order (optional ones only when known):

=============  ==========================================================================
``image_id``   the dataset id, or the file stem of a predicted file
``dx``         the **truth** (evaluation files only; never the prediction)
``dx_pred``    the predicted class: the arg-max of the probabilities
``ood_flag``   1 when the image was flagged as unlike the training images, else 0
``ood_score``  the out-of-distribution score, × its threshold (flagged above 1)
``<class>``    one probability per class of ``model.json``, in model order
=============  ==========================================================================

The first line says which probabilities follow, e.g.
``# probabilities: calibrated, temperature 1.3834`` (what ``core.predict`` and the
Predict page write) or ``# probabilities: raw`` (the trainer's ``predictions_val.csv``
/ ``predictions_test.csv``: temperature scaling is fitted on them, so they stay
the model's own softmax). Files from before this contract (``image_id, dx,
<classes>``, no first line) read the same.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd

from core.metrics import encode_labels
from core.runfolder import predictions_file

FILES = {split: predictions_file(split) for split in ("val", "test", "external")}
IMAGE_ID = "image_id"
TRUTH = "dx"
PREDICTED = "dx_pred"
OOD_FLAG = "ood_flag"
OOD_SCORE = "ood_score"
OPTIONAL = (PREDICTED, OOD_FLAG, OOD_SCORE)
RAW = "raw"
CALIBRATED = "calibrated"
HEADER = "# probabilities: "
DECIMALS = 6
# Probabilities written with a few decimals do not sum to exactly 1.
SUM_TOLERANCE = 1e-3


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


def header(probabilities: str, temperature=None) -> str:
    """The first line of a predictions file."""
    if probabilities not in (RAW, CALIBRATED):
        raise ValueError(f"probabilities must be {RAW!r} or {CALIBRATED!r}, got {probabilities!r}")
    detail = f", temperature {float(temperature):.4f}" if probabilities == CALIBRATED and temperature else ""
    return f"{HEADER}{probabilities}{detail}\n"


def to_csv(table: pd.DataFrame, probabilities: str, temperature=None) -> str:
    """The file's text: the header line, then the table with probabilities to 6 decimals."""
    body = table.to_csv(index=False, float_format=f"%.{DECIMALS}f", lineterminator="\n")
    return header(probabilities, temperature) + body


def write(path: Path, table: pd.DataFrame, probabilities: str, temperature=None) -> None:
    """Write a predictions file (see :func:`to_csv`); ``probabilities`` is ``"raw"`` or ``"calibrated"``."""
    Path(path).write_text(to_csv(table, probabilities, temperature), encoding="utf-8")


def read_info(path: Path) -> dict:
    """What the first line says: ``{"probabilities": "raw" | "calibrated" | "unknown", "line": ...}``."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().strip()
    if not first.startswith(HEADER.strip()):
        return {"probabilities": "unknown", "line": ""}
    kind = first[len(HEADER) :].split(",")[0].strip()
    return {"probabilities": kind, "line": first}


def read_frame(path: Path) -> pd.DataFrame:
    """The raw table of a predictions file, its first line skipped when it is the header."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsError(f"{path}: predictions file not found")
    skip = 1 if read_info(path)["line"] else 0
    try:
        text = path.read_text(encoding="utf-8")
        return pd.read_csv(io.StringIO(text), skiprows=skip, dtype={IMAGE_ID: str, TRUTH: str, PREDICTED: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PredictionsError(f"{path}: not a readable CSV ({err})") from err


def validate(frame: pd.DataFrame, classes, source: str = "predictions", truth: bool = True) -> pd.DataFrame:
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
