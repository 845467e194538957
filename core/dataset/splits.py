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

from core.contracts.runfolder import SPLITS_FILE

SPLITS = ("train", "val", "test")
SPLIT_FILE = SPLITS_FILE  # the split a run was trained on, saved in its folder


def make_splits(
    frame: pd.DataFrame, *, seed: int = 42, val_fraction: float = 0.15, test_fraction: float = 0.15
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
    path.write_bytes(_csv_bytes(splits))
    return split_hash(path)


def _csv_bytes(splits: pd.DataFrame) -> bytes:
    """The exact bytes of a split file: what its SHA-256 is taken of."""
    return splits[["image_id", "lesion_id", "dx", "split"]].to_csv(index=False, lineterminator="\n").encode("utf-8")


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


def split_of_model(model_dir: Path, frame: pd.DataFrame, split_sha256: str | None, *, config: dict) -> tuple:
    """The split a model was trained on, and where it was found.

    First the model folder's own ``splits.csv``, then the run's ``split_file``
    option, each only when its SHA-256 equals ``split_sha256``; else the split remade from the
    dataset ``frame`` with the run's seed and fractions (``config``, the run's
    ``config.json``), accepted only when its SHA-256 equals ``split_sha256``.

    Returns:
        ``(splits, source)``: the split table and a short description of its origin.

    Raises:
        ValueError: no split with the model's hash can be found.
    """
    saved = Path(model_dir) / SPLIT_FILE
    for path in (saved, Path(config["split_file"]) if config.get("split_file") else None):
        if path is not None and path.is_file() and split_sha256 in (None, split_hash(path)):
            return load_splits(path), str(path)
    remade = make_splits(frame, seed=int(config.get("seed", 42)), val_fraction=float(config.get("val_fraction", 0.15)),
                         test_fraction=float(config.get("test_fraction", 0.15)))
    if split_sha256 is None or hashlib.sha256(_csv_bytes(remade)).hexdigest() == split_sha256:
        return remade, f"the dataset's split remade with seed {config.get('seed', 42)} (hash matches)"
    raise ValueError(f"the model's training split (sha256 {str(split_sha256)[:12]}…) is neither in {saved} "
                     "nor reproducible from the dataset")
