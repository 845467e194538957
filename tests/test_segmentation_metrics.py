"""Dice, Jaccard and the ISIC 2018 thresholded Jaccard on hand-made masks; bootstrap and per-class tables."""

import numpy as np
import pandas as pd
import pytest

from core.evaluation import segmentation_metrics as sm
def square(top: int, left: int, side: int = 4, shape=(10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_half_overlapping_squares():
    a, b = square(2, 2), square(2, 4)  # 16 pixels each, 8 shared, 24 in the union
    assert sm.dice(a, b) == pytest.approx(0.5)
    assert sm.jaccard(a, b) == pytest.approx(8 / 24)
    assert sm.thresholded_jaccard(a, b) == 0.0  # 0.33 is below the ISIC cut-off 0.65


def test_identical_disjoint_and_empty_masks():
    a = square(1, 1)
    assert sm.dice(a, a) == sm.jaccard(a, a) == sm.thresholded_jaccard(a, a) == 1.0
    assert sm.dice(a, square(6, 6)) == sm.jaccard(a, square(6, 6)) == 0.0
    empty = np.zeros((10, 10), bool)
    assert sm.dice(empty, empty) == sm.jaccard(empty, empty) == 1.0
    assert sm.dice(a, empty) == 0.0


def test_thresholded_jaccard_keeps_scores_at_and_above_the_cut_off():
    truth = np.zeros((1, 20), bool)
    truth[0, :20] = True
    pred = np.zeros((1, 20), bool)
    pred[0, :13] = True  # Jaccard 13/20 = 0.65 exactly
    assert sm.thresholded_jaccard(truth, pred) == pytest.approx(0.65)
    pred[0, 12] = False  # 12/20 = 0.60
    assert sm.thresholded_jaccard(truth, pred) == 0.0
    assert sm.thresholded_jaccard(truth, pred, threshold=0.5) == pytest.approx(0.6)


def test_masks_are_checked_at_the_door():
    with pytest.raises(ValueError, match="shapes differ"):
        sm.dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="2-D"):
        sm.jaccard(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_image_scores_agree_with_the_single_metrics():
    a, b = square(2, 2), square(3, 3)
    scores = sm.image_scores(a, b)
    assert scores["dice"] == sm.dice(a, b) and scores["jaccard"] == sm.jaccard(a, b)
    assert scores["thresholded_jaccard"] == sm.thresholded_jaccard(a, b)
    assert (scores["true_area"], scores["pred_area"]) == (16, 16)


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = np.random.default_rng(0).uniform(0.6, 1.0, size=200)
    mean, low, high = sm.bootstrap_mean(values, n_boot=500, seed=3)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert sm.bootstrap_mean(values, n_boot=500, seed=3) == (mean, low, high)
    assert sm.bootstrap_mean(np.full(10, 0.9), n_boot=100) == pytest.approx((0.9, 0.9, 0.9))
    assert np.isnan(sm.bootstrap_mean([0.5])[1])


def scores_table() -> pd.DataFrame:
    dice = np.array([0.9, 0.8, 0.95, 0.5, 0.7, 0.92])
    jaccard = dice / (2 - dice)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(6)], "dx": ["nv", "nv", "nv", "mel", "mel", "vasc"],
                         "dice": dice, "jaccard": jaccard,
                         "thresholded_jaccard": np.where(jaccard >= 0.65, jaccard, 0.0)})


def test_summary_reports_every_metric_with_n():
    summary = sm.summary(scores_table(), n_boot=200)
    assert list(summary["metric"]) == list(sm.SCORE_COLUMNS)
    assert (summary["n"] == 6).all()
    assert summary.set_index("metric").at["dice", "mean"] == pytest.approx(scores_table()["dice"].mean())
    with pytest.raises(ValueError, match="lacks columns"):
        sm.summary(scores_table().drop(columns="jaccard"))


def test_per_class_groups_by_diagnosis_largest_first():
    table = sm.per_class(scores_table(), n_boot=200)
    assert list(table["dx"]) == ["nv", "mel", "vasc"]
    assert list(table["n"]) == [3, 2, 1]
    assert table.set_index("dx").at["mel", "dice"] == pytest.approx(0.6)
    assert np.isnan(table.set_index("dx").at["vasc", "dice_low"])  # one image: no interval


def test_load_scores_checks_the_columns(tmp_path):
    scores_table().to_csv(sm.scores_path(tmp_path, "test"), index=False)
    assert len(sm.load_scores(tmp_path, "test")) == 6
    scores_table().drop(columns="dice").to_csv(sm.scores_path(tmp_path, "val"), index=False)
    with pytest.raises(ValueError, match="dice"):
        sm.load_scores(tmp_path, "val")
