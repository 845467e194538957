"""Feature-space out-of-distribution score."""

import json

import numpy as np
import pytest

from core import ood
from core.models import build_model
from core.predict import Predictor


def test_distance_grows_away_from_the_training_features():
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (500, 20)) * np.linspace(3, 0.1, 20)
    stats = ood.fit(train, components=8)
    inside = ood.distance(rng.normal(0, 1, (200, 20)) * np.linspace(3, 0.1, 20), stats)
    outside = ood.distance(train[:200] + 10, stats)
    assert outside.min() > np.percentile(inside, 99)


def test_threshold_flags_the_chosen_share_of_validation_images():
    rng = np.random.default_rng(1)
    stats = ood.fit(rng.normal(0, 1, (1000, 10)), components=10)
    val = rng.normal(0, 1, (2000, 10))
    entry = ood.threshold_entry(stats, val, percentile=95)
    assert entry["method"] == ood.METHOD and entry["n"] == 2000
    assert np.mean(ood.distance(val, stats) > entry["threshold"]) == pytest.approx(0.05, abs=0.005)


def test_predictor_flags_an_image_unlike_the_training_images(tmp_path):
    rng = np.random.default_rng(2)
    model = build_model("small_cnn", image_size=32, n_classes=7)
    skin = lambda n: np.clip(rng.normal((190, 120, 100), 12, (n, 32, 32, 3)), 0, 255).astype(np.float32)  # noqa: E731
    folder = tmp_path / "model"
    folder.mkdir()
    entry = ood.fit_for_model(folder, model, skin(300), skin(200))
    meta = {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], "image_size": 32,
            "last_conv_layer": "last_conv", "ood": entry}
    (folder / "model.json").write_text(json.dumps(meta))
    predictor = Predictor(folder, model=model)
    assert predictor.ood_method == ood.METHOD
    usual = predictor.predict(skin(1)[0].astype(np.uint8))
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    odd = predictor.predict(np.stack([checkerboard, 255 - checkerboard, checkerboard], axis=-1))
    assert not usual.ood.flagged and odd.ood.flagged and odd.ood.score > usual.ood.score
    assert np.isclose(odd.probabilities.sum(), 1)
