"""Leakage guards: does an evaluation set share images or lesions with a model's training data?

A model folder carries the split it was trained on (``splits.csv``: ``image_id,
lesion_id, dx, split``; its SHA-256 is ``model.json["split_sha256"]``). An
external image *overlaps* when

* its ``image_id`` is in that split (``match = "image_id"``),
* else its ``lesion_id`` is (another image of the same lesion, ``"lesion_id"``),
* else, for files without HAM10000 ids, its 32×24 grey thumbnail correlates at
  :data:`NEAR_DUPLICATE` or more with that of a training or validation image of
  the dataset (``"near-duplicate"``). Measured on the real data: the 64 of the
  70 600×450 originals whose 200×150 copies are in train/val correlate ≥ 0.9949
  with their copy; the best match of 600 test images among train/val images
  (other lesions) is at most 0.987 (99.5th percentile 0.972).

:func:`overlap_report` gives one row per image with the split it collides with;
metrics are then given on all images and on the clean part: the images the
model never saw in training or validation (its test split counts as clean).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from core.contracts.runfolder import write_npz_atomic
from core.dataset.splits import SPLIT_FILE, load_splits, split_hash

THUMB_SIZE = (32, 24)  # width, height: the 4:3 frame of HAM10000
NEAR_DUPLICATE = 0.993  # thumbnail correlation; see the module docstring for the measured margins
SEVERITY = ("train", "val", "test")  # the worst collision wins: training data is the worst
SEEN = ("train", "val")  # what a model learnt or was tuned on; its test split stays clean


class SplitMismatch(ValueError):
    """The split file is missing or is not the one the model was trained on."""


def model_split(model_dir: Path, meta: dict, splits_csv: Path | None = None) -> pd.DataFrame:
    """The split a model was trained on: ``splits_csv`` or the folder's own, checked against its hash."""
    path = Path(splits_csv) if splits_csv else Path(model_dir) / SPLIT_FILE
    if not path.is_file():
        raise SplitMismatch(f"{path}: no split file; the model folder should carry the {SPLIT_FILE} it was trained on")
    expected = meta.get("split_sha256")
    if expected and split_hash(path) != expected:
        raise SplitMismatch(f"{path}: SHA-256 {split_hash(path)[:12]}… differs from the model's split "
                            f"{expected[:12]}… (model.json split_sha256)")
    try:
        return load_splits(path)
    except ValueError as err:
        raise SplitMismatch(str(err)) from err


def find_model_split(model_dir: Path, meta: dict) -> pd.DataFrame | None:
    """:func:`model_split` of the folder, or None when it carries no usable split file."""
    try:
        return model_split(model_dir, meta)
    except SplitMismatch:
        return None


def split_of(image_id: str, split: pd.DataFrame | None) -> str | None:
    """The split (``train``/``val``/``test``) of a dataset image, or None when unknown."""
    if split is None:
        return None
    found = split.loc[split["image_id"] == str(image_id), "split"]
    return str(found.iloc[0]) if len(found) else None


def _worst(splits) -> str:
    present = set(splits)
    return next(s for s in SEVERITY if s in present)


def id_overlap(table: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """``image_id, match, split`` for each row of ``table`` matched by image id or lesion id."""
    by_image = dict(zip(split["image_id"].astype(str), split["split"]))
    by_lesion = split.groupby("lesion_id")["split"].agg(_worst).to_dict()
    rows = []
    for image_id, lesion_id in zip(table["image_id"].astype(str), table.get("lesion_id", table["image_id"]).astype(str)):
        if image_id in by_image:
            rows.append((image_id, "image_id", by_image[image_id]))
        elif lesion_id in by_lesion and lesion_id != image_id:
            rows.append((image_id, "lesion_id", by_lesion[lesion_id]))
        else:
            rows.append((image_id, "", ""))
    return pd.DataFrame(rows, columns=["image_id", "match", "split"])


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The perceptual fingerprint: a 32×24 grey thumbnail, centred and scaled to unit length (float32)."""
    from PIL import Image

    grey = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).convert("L")
    x = np.asarray(grey.resize(THUMB_SIZE, Image.Resampling.BOX), dtype=np.float64).ravel()
    x -= x.mean()
    return (x / max(float(np.linalg.norm(x)), 1e-9)).astype(np.float32)


def fingerprints(paths) -> np.ndarray:
    """:func:`thumbnail` of each image file, one row each (decoded as uploads are)."""
    from core.dataset.images import read_image

    rows = [thumbnail(read_image(p)) for p in paths]
    return np.stack(rows) if rows else np.zeros((0, THUMB_SIZE[0] * THUMB_SIZE[1]), np.float32)


def nearest(prints: np.ndarray, bank: np.ndarray) -> tuple:
    """``(index, correlation)`` of the most similar bank entry of each fingerprint."""
    similarity = np.asarray(prints, np.float32) @ np.asarray(bank, np.float32).T
    return similarity.argmax(axis=1), similarity.max(axis=1)


def near_duplicates(table: pd.DataFrame, bank: np.ndarray, bank_split: np.ndarray) -> pd.DataFrame:
    """``image_id, match, split, similarity`` of each row against a bank of dataset fingerprints."""
    index, similarity = nearest(fingerprints(table["path"]), bank)
    close = similarity >= NEAR_DUPLICATE
    return pd.DataFrame({"image_id": table["image_id"].astype(str).to_numpy(),
                         "match": np.where(close, "near-duplicate", ""),
                         "split": np.where(close, np.asarray(bank_split)[index], ""),
                         "similarity": np.round(similarity, 4)})


def overlap_report(table: pd.DataFrame, split: pd.DataFrame, *, bank=None, bank_split=None) -> pd.DataFrame:
    """One row per image: ``image_id, match, split`` (empty when clean), ids first, then near-duplicates.

    Args:
        table: the evaluation set (``image_id``, optional ``lesion_id``, ``path`` for hashing).
        split: the model's split table.
        bank, bank_split: fingerprints of dataset images and their splits (see :func:`dataset_bank`);
            without them only ids are compared.
    """
    report = id_overlap(table, split)
    if bank is not None and len(bank) and "path" in table:
        unmatched = (report["match"] == "").to_numpy()
        if unmatched.any():
            found = near_duplicates(table[unmatched], bank, bank_split)
            report.loc[unmatched, ["match", "split"]] = found[["match", "split"]].to_numpy()
    return report


def dataset_bank(dataset: pd.DataFrame, split: pd.DataFrame, splits=("train", "val")) -> tuple:
    """Fingerprints and split names of the dataset images in ``splits`` (the ones a model has seen)."""
    seen = dataset.merge(split[["image_id", "split"]], on="image_id")
    seen = seen[seen["split"].isin(splits) & (seen["path"].astype(str) != "")]
    return fingerprints(seen["path"]), seen["split"].to_numpy()


def clean_mask(report: pd.DataFrame) -> np.ndarray:
    """True for images the model never saw: no match, or a match in its (held-out) test split."""
    return ~report["split"].isin(SEEN).to_numpy()


def summary(report: pd.DataFrame) -> dict:
    """Counts per kind of match and per split, and the number of clean images (see :func:`clean_mask`)."""
    hit = report[report["match"] != ""]
    return {"n": int(len(report)), "clean": int(clean_mask(report).sum()),
            "by_split": {str(k): int(v) for k, v in hit["split"].value_counts().items()},
            "by_match": {str(k): int(v) for k, v in hit["match"].value_counts().items()}}


def describe(counts: dict) -> str:
    """One sentence for a user, e.g. "64 of 70 images were used to train or tune the model: 51 in …"."""
    named = {"train": "training", "val": "validation"}
    seen = counts["n"] - counts["clean"]
    in_test = counts["by_split"].get("test", 0)
    test = f" ({in_test} of them from its held-out test split)" if in_test else ""
    if seen == 0:
        return f"None of the {counts['n']} images was used to train or tune the model{test}."
    parts = [f"{counts['by_split'][k]} in its {named[k]} split" for k in SEEN if counts["by_split"].get(k)]
    how = ", ".join(f"{v} by {k}" for k, v in counts["by_match"].items())
    return (f"{seen} of {counts['n']} images were used to train or tune the model: {', '.join(parts)} "
            f"(matched {how}). {counts['clean']} are clean{test}.")


def cached_bank(dataset: pd.DataFrame, split: pd.DataFrame, cache_root: Path) -> tuple:
    """:func:`dataset_bank`, kept in ``cache_root`` (derived data: never shipped) keyed by split and files."""
    import hashlib

    key = hashlib.sha256(split.to_csv(index=False).encode())
    key.update("\n".join(dataset["path"].astype(str)).encode())
    path = Path(cache_root) / f"thumbnails_{THUMB_SIZE[0]}x{THUMB_SIZE[1]}_{key.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return saved["bank"].astype(np.float32), saved["split"]
    bank, bank_split = dataset_bank(dataset, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz_atomic(path, {"bank": bank.astype(np.float16), "split": bank_split.astype(str)}, compressed=False)
    return bank, bank_split
