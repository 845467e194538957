"""Train/validation/test splits grouped by lesion, stratified by diagnosis.

HAM10000 has 10,015 images of 7,470 lesions; several images of one lesion in
different splits would leak, so whole lesions are assigned to one split. A split
is persisted as a CSV (``image_id, lesion_id, dx, split``) whose SHA-256 names it.
"""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")
SPLIT_FILE = "splits.csv"  # the split beside every run and model folder


def make_splits(
    frame: pd.DataFrame, seed: int = 42, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> pd.DataFrame:
    """Assign every image to train, val or test, whole lesions at a time.

    Args:
        frame: the image table (needs ``image_id``, ``lesion_id``, ``dx``).
        seed: the random seed; the same seed gives the same split.
        val_fraction: share of images for validation.
        test_fraction: share of images for test.

    Returns:
        A table ``image_id, lesion_id, dx, split`` sorted by ``image_id``.
    """
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val and test fractions must be in (0, 1) and sum to less than 1")
    table = frame[["image_id", "lesion_id", "dx"]].sort_values("image_id").reset_index(drop=True)
    table["split"] = "train"
    test_idx = _holdout(table, test_fraction, seed)
    table.loc[test_idx, "split"] = "test"
    rest = table[table["split"] == "train"]
    val_idx = _holdout(rest, val_fraction / (1 - test_fraction), seed + 1)
    table.loc[val_idx, "split"] = "val"
    return _cover_every_class(table, seed)


def _cover_every_class(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Move one training lesion into any split that lacks its class.

    Only small datasets need this (a class with a handful of lesions can miss a
    15 % split); classes with fewer than three lesions cannot cover three splits.
    """
    rng = np.random.default_rng(seed)
    for split in ("test", "val"):
        for dx in sorted(set(table["dx"]) - set(table.loc[table["split"] == split, "dx"])):
            train = table[(table["split"] == "train") & (table["dx"] == dx)]
            if train["lesion_id"].nunique() > 1:
                lesion = rng.choice(sorted(train["lesion_id"].unique()))
                table.loc[table["lesion_id"] == lesion, "split"] = split
    return table


def _holdout(table: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """Pick about ``fraction`` of ``table`` as whole lesions, keeping class shares."""
    n_folds = max(2, round(1 / fraction))
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    _, held = next(folds.split(table, y=table["dx"], groups=table["lesion_id"]))
    return table.index[held]


def save_splits(splits: pd.DataFrame, path: Path) -> str:
    """Write the split CSV and return its SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = splits[["image_id", "lesion_id", "dx", "split"]].to_csv(index=False, lineterminator="\n")
    path.write_bytes(data.encode("utf-8"))
    return split_hash(path)


def load_splits(path: Path) -> pd.DataFrame:
    """Read a split CSV written by :func:`save_splits`."""
    splits = pd.read_csv(path, dtype=str)
    missing = {"image_id", "lesion_id", "dx", "split"} - set(splits.columns)
    if missing:
        raise ValueError(f"{path}: split file lacks columns {sorted(missing)}")
    unknown = set(splits["split"]) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: unknown split names {sorted(unknown)}")
    return splits


def split_hash(path: Path) -> str:
    """The SHA-256 of a split file: the identity of a split."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split, with lesion counts: for display and checks."""
    counts = pd.crosstab(splits["dx"], splits["split"]).reindex(columns=list(SPLITS), fill_value=0)
    counts.loc["lesions"] = [splits.loc[splits["split"] == s, "lesion_id"].nunique() for s in SPLITS]
    counts.loc["images"] = [int((splits["split"] == s).sum()) for s in SPLITS]
    return counts.astype(np.int64)
