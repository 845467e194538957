"""Age, sex and body site as an optional second input: the metadata branch of a model folder.

The branch is the metadata encoding concatenated to the image features before
the classifier's last layer. Because that layer is linear, this is the image
model's logits plus ``encoding @ weights``; the image part stays the trained
model, frozen, and only ``weights`` are fitted (``lesionlab metadata-branch``,
:mod:`core.training.metadata_fit`). Two properties follow, and tests hold them:

* **No metadata, no change.** An absent field encodes as zeros and the branch has
  no bias, so with no field given the probabilities are exactly the image-only
  ones. A field given alone moves the prediction by that field's weights only.
* **The graph stays one flat image model.** Saliency, the OOD gate, the exports
  and private mode read the image model; the branch is applied after it, to its
  calibrated probabilities: ``softmax(log(p) + encoding @ weights)``.

The encoding (:func:`encode`): age in five bins, sex (male, female), and the
body site among the 14 HAM10000 sites; ``unknown`` or empty is absent.

The folder's ``metadata_branch.npz`` holds ``weights`` (D, K), ``features`` (D,)
the encoding's feature names, and ``meta`` a JSON string (classes, how it was
fitted, its validation figures with and without metadata). numpy reads it
without pickle. This module imports neither TensorFlow nor Streamlit.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.contracts import runfolder as rf

FORMAT = 1
# Age bins: [lower, upper) in years; the last is open.
AGE_BINS = ((0, 30), (30, 45), (45, 60), (60, 75), (75, math.inf))
SEXES = ("male", "female")
# The 14 body sites of HAM10000's localization column ("unknown" is absent).
SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck",
         "scalp", "trunk", "upper extremity")
FIELDS = ("age", "sex", "site")
# Each field's columns in the encoding, in :data:`FIELDS` order: one-hot over its values.
FIELD_COLUMNS = {"age": slice(0, len(AGE_BINS)),
                 "sex": slice(len(AGE_BINS), len(AGE_BINS) + len(SEXES)),
                 "site": slice(len(AGE_BINS) + len(SEXES), len(AGE_BINS) + len(SEXES) + len(SITES))}
ABSENT = ("", "unknown", "nan", "none")


class MetadataBranchError(ValueError):
    """A metadata branch file that cannot be used, or a field value it does not know."""


def age_label(low: float, high: float) -> str:
    """``"30–44"`` for the bin [30, 45); ``"75+"`` for the open one."""
    return f"{low:g}+" if math.isinf(high) else f"{low:g}–{high - 1:g}"


def feature_names() -> tuple:
    """The encoding's features, in column order: ``age 0–29`` … ``sex male`` … ``site face`` …"""
    return (tuple(f"age {age_label(*b)}" for b in AGE_BINS) + tuple(f"sex {s}" for s in SEXES)
            + tuple(f"site {s}" for s in SITES))


def absent(value) -> bool:
    """True for a field left empty: None, NaN, blank or ``unknown``."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return str(value).strip().lower() in ABSENT


def encode(*, age=None, sex=None, site=None) -> np.ndarray:
    """One image's metadata as a float32 vector; every absent field is zeros.

    Raises:
        MetadataBranchError: an age outside 0–120, or a sex or site not in :data:`SEXES` / :data:`SITES`.
    """
    out = np.zeros(FIELD_COLUMNS["site"].stop, np.float32)
    if not absent(age):
        years = float(age)
        if not 0 <= years <= 120:
            raise MetadataBranchError(f"age {age!r}: expected years between 0 and 120")
        _one_hot(out, "age", next(i for i, (low, high) in enumerate(AGE_BINS) if low <= years < high))
    if not absent(sex):
        key = str(sex).strip().lower()
        if key not in SEXES:
            raise MetadataBranchError(f"sex {sex!r}: expected one of {', '.join(SEXES)} or nothing")
        _one_hot(out, "sex", SEXES.index(key))
    if not absent(site):
        key = str(site).strip().lower()
        if key not in SITES:
            raise MetadataBranchError(f"body site {site!r}: expected one of {', '.join(SITES)} or nothing")
        _one_hot(out, "site", SITES.index(key))
    return out


def _one_hot(encoded: np.ndarray, field: str, index: int) -> None:
    encoded[FIELD_COLUMNS[field].start + index] = 1


def encode_table(table: pd.DataFrame, *, keep=FIELDS) -> np.ndarray:
    """``(N, D)`` encodings of an image table's ``age``, ``sex`` and ``localization`` columns.

    Only the fields in ``keep`` are read (the others count as absent); a missing column is absent too.
    """
    def column(name, field):
        if field in keep and name in table.columns:
            return table[name].tolist()
        return [None] * len(table)

    rows = zip(column("age", "age"), column("sex", "sex"), column("localization", "site"))
    return np.stack([encode(age=a, sex=s, site=l) for a, s, l in rows]) if len(table) else \
        np.zeros((0, len(feature_names())), np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def combine(probs: np.ndarray, encoded: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``softmax(log(probs) + encoded @ weights)``: image probabilities moved by the metadata.

    A row without any metadata is returned as it came, bit for bit.
    """
    probs, encoded = np.asarray(probs, np.float64), np.asarray(encoded, np.float64)
    logits = np.log(np.clip(probs, 1e-12, None))
    moved = _softmax(logits + encoded @ np.asarray(weights, np.float64))
    return np.where(encoded.any(axis=1, keepdims=True), moved, probs)


@dataclass(frozen=True)
class MetadataBranch:
    """A fitted metadata branch: ``weights`` (D, K) over :func:`feature_names`, and how it was fitted."""

    weights: np.ndarray
    classes: tuple
    meta: dict

    def apply(self, probs: np.ndarray, *, age=None, sex=None, site=None) -> np.ndarray:
        """One image's calibrated probabilities ``(K,)`` with its metadata applied (unchanged with none)."""
        return combine(probs[None], encode(age=age, sex=sex, site=site)[None], self.weights)[0]

    def apply_table(self, probs: np.ndarray, table: pd.DataFrame, *, keep=FIELDS) -> np.ndarray:
        """``(N, K)`` probabilities of an image table's rows with their metadata applied."""
        return combine(probs, encode_table(table, keep=keep), self.weights)

    def contributions(self) -> pd.DataFrame:
        """The weights as a table: one row per feature, one column per class (log-odds added)."""
        return pd.DataFrame(self.weights, index=list(feature_names()), columns=list(self.classes))


def path_in(model_dir: Path) -> Path:
    """Where a model folder keeps its metadata branch."""
    return Path(model_dir) / rf.METADATA_BRANCH_FILE


def write(model_dir: Path, branch: MetadataBranch) -> Path:
    """Write ``metadata_branch.npz`` into a model folder (atomically)."""
    meta = {"format": FORMAT, "classes": list(branch.classes), **branch.meta}
    path = path_in(model_dir)
    rf.write_atomic(path, lambda tmp: np.savez(tmp, weights=branch.weights.astype(np.float32),
                                               features=np.array(feature_names()),
                                               meta=np.array(json.dumps(meta))))
    return path


def read(model_dir: Path, classes) -> MetadataBranch | None:
    """A model folder's metadata branch, or None when it has none.

    Raises:
        MetadataBranchError: the file is unreadable, of another format, or does not match ``classes``.
    """
    path = path_in(model_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights, features, meta = npz["weights"], tuple(npz["features"].tolist()), json.loads(str(npz["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise MetadataBranchError(f"{path}: unreadable metadata branch ({err})") from err
    if meta.get("format") != FORMAT:
        raise MetadataBranchError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
    if features != feature_names() or tuple(meta.get("classes", ())) != tuple(classes) \
            or weights.shape != (len(features), len(tuple(classes))):
        raise MetadataBranchError(f"{path}: its features or classes do not match this model")
    return MetadataBranch(weights.astype(np.float64), tuple(classes), meta)
