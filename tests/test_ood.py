"""Out-of-distribution scorers: one interface, fitted thresholds from model.json, the fit on a tiny model."""

import json

import numpy as np
import pytest
from tiny_models import build_tiny_model, save_model_folder, save_ood_model_folder, skin_like

from core.serving import ood, ood_fit
from core.training.models import build_model
from core.serving.ood_negatives import FIT_PHOTOS, HELD_OUT_PHOTOS, TEXTURES, negatives, texture
from core.serving.predict import Predictor


def test_statistics_parts_grow_away_from_the_training_features():
    rng = np.random.default_rng(0)
    scale = np.linspace(3, 0.1, 20)
    train = rng.normal(0, 1, (600, 20)) * scale + 5
    negative = rng.normal(0, 4, (300, 20))
    fitted = ood_fit.fit_statistics(train, negative, seed=0)
    inside = rng.normal(0, 1, (300, 20)) * scale + 5
    turned = 5 * np.where(np.arange(20) % 2 == 0, 1, -1)  # same spread, another direction
    outside = rng.normal(0, 1, (300, 20)) * scale + turned
    assert np.median(fitted.distance(outside)) > np.percentile(fitted.distance(inside), 99)
    assert np.median(fitted.head(negative)) > 0.9 > 0.1 > np.median(fitted.head(inside))


def test_thresholds_come_from_validation_and_the_head_floor():
    rng = np.random.default_rng(1)
    train, val = rng.normal(3, 1, (1000, 10)), rng.normal(3, 1, (4000, 10))
    fitted = ood_fit.fit_statistics(train, rng.normal(-3, 1, (500, 10)), seed=0)
    entry = ood_fit.threshold_entry(fitted, ["a", "b"], val, n_train=1000, n_negative=500)
    assert entry["method"] == ood.STATISTICS and entry["n"] == 4000 and entry["layers"] == ["a", "b"]
    assert entry["thresholds"]["head"] >= ood_fit.HEAD_FLOOR
    assert entry["thresholds"]["distance"] == pytest.approx(np.percentile(fitted.distance(val), ood_fit.PERCENTILE))
    scorer = ood.FeatureStatistics(fitted, entry)
    assert np.mean(scorer.flagged(scorer.score(None, val))) == pytest.approx(entry["val_flagged"])
    assert entry["val_flagged"] <= 0.01
    assert entry["negative_photos"] == list(FIT_PHOTOS)


def test_saved_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    fitted = ood_fit.fit_statistics(rng.normal(0, 1, (80, 6)), rng.normal(4, 1, (40, 6)))
    ood.save_statistics(tmp_path, fitted)
    loaded = ood.load_statistics(tmp_path)
    x = rng.normal(0, 1, (5, 6))
    np.testing.assert_allclose(loaded.distance(x), fitted.distance(x), rtol=1e-3)
    np.testing.assert_allclose(loaded.head(x), fitted.head(x), rtol=1e-3, atol=1e-6)
    assert ood.load_statistics(tmp_path / "elsewhere") is None
    assert ood.load(tmp_path) is None  # statistics are not a feature_distance file


def test_feature_distance_files_still_load(tmp_path):
    precision = np.array([[2.0, 0.5, 0.0], [0.5, 3.0, 0.25], [0.0, 0.25, 1.0]])
    upper = precision[np.triu_indices(3)].astype(np.float32)
    bank = np.eye(3, dtype=np.float32)
    np.savez(tmp_path / ood.OOD_FILE, mean=np.ones(3, np.float32), precision_upper=upper, bank=bank)
    stats = ood.load(tmp_path)
    np.testing.assert_allclose(stats["precision"], precision)
    np.testing.assert_array_equal(stats["mean"], np.ones(3))
    np.testing.assert_array_equal(stats["bank"], bank)
    assert ood.load(tmp_path / "elsewhere") is None


def test_statistic_layers_take_the_last_layer_of_each_resolution():
    model = build_model("small_cnn", image_size=32, n_classes=7)
    assert ood_fit.statistic_layers(model) == ["rescale", "relu0", "relu1", "relu2", "last_conv"]


def test_negatives_are_seeded_and_keep_the_benchmark_photo_out():
    a, b = negatives(12, seed=3), negatives(12, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not set(FIT_PHOTOS) & set(HELD_OUT_PHOTOS)
    for kind in TEXTURES:
        image = texture(kind, np.random.default_rng(0))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_scorer_follows_the_method_in_model_json(tmp_path):
    model = build_tiny_model()
    none = ood.load_scorer(save_model_folder(model, tmp_path / "a"), {"classes": ["x"]})
    assert none.method == ood.MAX_SOFTMAX and none.source == "default"
    entry = ood.fit_msp_threshold(np.full((10, 2), 0.5) + [0.2, -0.2])
    fitted = ood.load_scorer(tmp_path / "a", {"classes": ["x"], "ood": entry})
    assert fitted.source == "metadata" and fitted.msp_threshold == pytest.approx(0.7)
    scores = fitted.score(np.array([[0.9, 0.1], [0.6, 0.4]]), None)
    assert list(fitted.flagged(scores)) == [False, True]
    assert "0.60" in fitted.describe(scores[1]) and "model.json" in fitted.describe(scores[1])


def test_fitted_predictor_flags_images_unlike_the_training_images(tmp_path):
    folder = save_ood_model_folder(tmp_path / "model")
    entry = json.loads((folder / "model.json").read_text())["ood"]
    predictor = Predictor(folder)
    assert predictor.ood.method == ood.STATISTICS and predictor.ood.threshold == entry["threshold"]
    assert predictor.ood.layers == ("rescale", "relu0", "relu1", "relu2", "last_conv")
    rng = np.random.default_rng(7)
    # thresholds sit at the 99.5th percentile of 400 such images: over 100 fresh ones a few may pass it
    usual = predictor.predict_batch(list(skin_like(rng, 100).astype(np.uint8)))
    assert np.mean([p.ood.flagged for p in usual]) <= 0.05
    odd = predictor.predict_batch([np.zeros((32, 32, 3), np.uint8), texture("stripes", np.random.default_rng(9)),
                                   texture("noise", np.random.default_rng(9))])
    assert all(p.ood.flagged for p in odd) and min(p.ood.score for p in odd) > max(p.ood.score for p in usual)
    assert "Dermatoscopy check" in odd[0].ood.text
    tta = predictor.predict(skin_like(rng, 1)[0].astype(np.uint8), tta=True)
    assert np.isfinite(tta.ood.score)
