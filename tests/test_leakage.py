"""Leakage guards: overlaps by image id, lesion id and near-duplicate, the split check, the report."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.dataset import leakage
from core.dataset.splits import SPLIT_FILE, save_splits

SPLIT = pd.DataFrame({
    "image_id": ["I1", "I2", "I3", "I4", "I5"],
    "lesion_id": ["L1", "L1", "L2", "L3", "L4"],
    "dx": ["nv", "nv", "mel", "bcc", "nv"],
    "split": ["train", "train", "val", "test", "test"],
})


def lesion_like(seed: int, size=(200, 150)) -> np.ndarray:
    """A smooth random image with a dark blob (different seeds give different images)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(80, 220, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[: size[1], : size[0]]
    cy, cx, r = rng.uniform(40, 110), rng.uniform(50, 150), rng.uniform(20, 45)
    base[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] *= 0.5
    return base.astype(np.uint8)


def test_ids_match_by_image_then_by_lesion_and_training_is_the_worst():
    table = pd.DataFrame({"image_id": ["I1", "X9", "I4", "Y1"], "lesion_id": ["L1", "L2", "L3", "L9"]})
    report = leakage.id_overlap(table, SPLIT)
    assert report.values.tolist() == [["I1", "image_id", "train"], ["X9", "lesion_id", "val"],
                                      ["I4", "image_id", "test"], ["Y1", "", ""]]
    worst = leakage.id_overlap(pd.DataFrame({"image_id": ["Z"], "lesion_id": ["L1"]}), SPLIT.assign(
        split=["val", "train", "val", "test", "test"]))
    assert worst["split"].tolist() == ["train"]


def test_near_duplicates_survive_resizing_and_recompression(tmp_path):
    seen = []
    for k in range(20):
        path = tmp_path / f"seen{k}.jpg"
        Image.fromarray(lesion_like(k)).save(path, quality=90)
        seen.append(path)
    bank, bank_split = leakage.dataset_bank(
        pd.DataFrame({"image_id": [f"S{k}" for k in range(20)], "path": [str(p) for p in seen]}),
        pd.DataFrame({"image_id": [f"S{k}" for k in range(20)], "split": ["train"] * 10 + ["val"] * 10}))
    big = tmp_path / "copy_of_3.png"
    Image.fromarray(lesion_like(3)).resize((600, 450), Image.Resampling.BICUBIC).save(big)
    other = tmp_path / "new.jpg"
    Image.fromarray(lesion_like(99)).save(other, quality=90)
    table = pd.DataFrame({"image_id": ["copy_of_3", "new"], "path": [str(big), str(other)]})
    found = leakage.near_duplicates(table, bank, bank_split)
    assert found["match"].tolist() == ["near-duplicate", ""] and found["split"].tolist() == ["train", ""]
    assert found["similarity"][0] >= leakage.NEAR_DUPLICATE > found["similarity"][1]
    report = leakage.overlap_report(table, SPLIT, bank=bank, bank_split=bank_split)
    assert report["match"].tolist() == ["near-duplicate", ""]


def test_summary_and_sentence_name_every_split():
    report = pd.DataFrame({"image_id": list("abcde"), "match": ["image_id", "image_id", "lesion_id", "", ""],
                           "split": ["train", "train", "val", "", ""]})
    counts = leakage.summary(report)
    assert counts == {"n": 5, "clean": 2, "by_split": {"train": 2, "val": 1},
                      "by_match": {"image_id": 2, "lesion_id": 1}}
    sentence = leakage.describe(counts)
    assert sentence.startswith("3 of 5 images were used to train or tune the model: 2 in its training split, "
                               "1 in its validation split (matched 2 by image_id, 1 by lesion_id). 2 are clean.")
    held_out = leakage.summary(report.assign(split=["test", "", "", "", ""], match=["image_id", "", "", "", ""]))
    assert held_out["clean"] == 5
    assert leakage.describe(held_out) == ("None of the 5 images was used to train or tune the model "
                                          "(1 of them from its held-out test split).")


def test_model_split_must_be_the_one_the_model_was_trained_on(tmp_path):
    digest = save_splits(SPLIT, tmp_path / SPLIT_FILE)
    assert leakage.model_split(tmp_path, {"split_sha256": digest})["image_id"].tolist() == SPLIT["image_id"].tolist()
    with pytest.raises(leakage.SplitMismatch, match="differs"):
        leakage.model_split(tmp_path, {"split_sha256": "0" * 64})
    with pytest.raises(leakage.SplitMismatch, match="no split file"):
        leakage.model_split(tmp_path / "other", {})
    assert leakage.find_model_split(tmp_path / "other", {}) is None
    assert leakage.split_of("I3", SPLIT) == "val" and leakage.split_of("nope", SPLIT) is None
