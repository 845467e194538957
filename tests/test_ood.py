"""Feature-space out-of-distribution score."""

import json

import numpy as np
import pytest

from core import ood
from core.models import build_model
from core.predict import Predictor


def test_both_distances_grow_away_from_the_training_features():
    rng = np.random.default_rng(0)
    scale = np.linspace(3, 0.1, 20)
    stats = ood.fit(rng.normal(0, 1, (500, 20)) * scale + 5)
    inside = ood.distances(rng.normal(0, 1, (200, 20)) * scale + 5, stats)
    turned = 5 * np.where(np.arange(20) % 2 == 0, 1, -1)  # same spread, another direction
    outside = ood.distances(rng.normal(0, 1, (200, 20)) * scale + turned, stats)
    for kind in ("mahalanobis", "knn"):
        assert np.median(outside[kind]) > np.percentile(inside[kind], 99), kind


def test_thresholds_flag_about_one_percent_of_validation_images():
    rng = np.random.default_rng(1)
    stats = ood.fit(rng.normal(3, 1, (1000, 10)))
    val = rng.normal(3, 1, (4000, 10))
    entry = ood.threshold_entry(stats, val)
    assert entry["method"] == ood.METHOD and entry["n"] == 4000 and entry["percentile"] == 99
    flagged = np.mean(ood.score(val, stats, entry["thresholds"]) > 1)
    assert flagged == pytest.approx(entry["val_flagged"]) and 0.01 <= flagged <= 0.02


def test_saved_statistics_round_trip(tmp_path):
    stats = ood.fit(np.random.default_rng(2).normal(0, 1, (50, 6)))
    ood.save(tmp_path, stats)
    loaded = ood.load(tmp_path)
    x = np.random.default_rng(3).normal(0, 1, (5, 6))
    for kind, values in ood.distances(x, stats).items():
        assert np.allclose(ood.distances(x, loaded)[kind], values, rtol=1e-2, atol=1e-3)
    assert ood.load(tmp_path / "elsewhere") is None


def test_predictor_flags_an_image_unlike_the_training_images(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(2)
    model = build_model("small_cnn", image_size=32, n_classes=7)
    skin = lambda n: np.clip(rng.normal((190, 120, 100), 12, (n, 32, 32, 3)), 0, 255).astype(np.float32)  # noqa: E731
    folder = tmp_path / "model"
    folder.mkdir()
    entry = ood.fit_for_model(folder, model, skin(300), skin(400))
    meta = {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], "image_size": 32,
            "last_conv_layer": "last_conv", "ood": entry}
    (folder / "model.json").write_text(json.dumps(meta))
    predictor = Predictor(folder, model=model)
    assert predictor.ood_method == ood.METHOD
    # thresholds sit at the 99th percentile of 400 such images: over 100 fresh ones a few may pass it
    usual = predictor.predict_batch(list(skin(100).astype(np.uint8)))
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    odd = predictor.predict(np.stack([checkerboard, 255 - checkerboard, checkerboard], axis=-1))
    assert np.mean([p.ood.flagged for p in usual]) <= 0.08
    assert odd.ood.flagged and odd.ood.score > max(p.ood.score for p in usual)
    assert np.isclose(odd.probabilities.sum(), 1)
