"""Deletion/insertion curves and mask localisation, with a model that is a plain function."""

import numpy as np
import pytest

from core.explaining.faithfulness import (
    area_under,
    baseline_image,
    deletion_curve,
    energy_in_mask,
    gaussian_baseline,
    insertion_curve,
    pointing_game,
)

S = 16


def bright_left_model(batch: np.ndarray) -> np.ndarray:
    """Class 0 probability = mean brightness of the left half (the only evidence the model uses)."""
    p0 = batch[:, :, : S // 2].mean(axis=(1, 2, 3)) / 255.0
    return np.stack([p0, 1 - p0], axis=1)


def calls_counter(fn):
    calls = []

    def wrapped(batch):
        calls.append(len(batch))
        return fn(batch)

    return wrapped, calls


@pytest.fixture
def image():
    x = np.zeros((S, S, 3), np.float32)
    x[:, : S // 2] = 255.0
    return x


def left_map():
    m = np.zeros((S, S), np.float32)
    m[:, : S // 2] = 1.0
    return m


def test_deletion_faithful_map_beats_reversed_map(image):
    predict, calls = calls_counter(bright_left_model)
    good = deletion_curve(predict, image, left_map(), class_index=0, steps=8, baseline="mean")
    bad = deletion_curve(predict, image, 1 - left_map(), class_index=0, steps=8, baseline="mean")
    assert calls == [9, 9]  # one batched call per curve
    assert good.fractions[0] == 0 and good.fractions[-1] == 1 and len(good.scores) == 9
    assert good.scores[0] == pytest.approx(1.0)
    assert good.auc < bad.auc


def test_insertion_faithful_map_beats_reversed_map(image):
    good = insertion_curve(bright_left_model, image, left_map(), class_index=0, steps=8, baseline="mean")
    bad = insertion_curve(bright_left_model, image, 1 - left_map(), class_index=0, steps=8, baseline="mean")
    assert good.scores[-1] == pytest.approx(1.0)
    assert good.auc > bad.auc


def test_baselines():
    x = np.random.default_rng(0).uniform(0, 255, (S, S, 3)).astype(np.float32)
    mean = baseline_image(x, "mean")
    np.testing.assert_allclose(mean[3, 4], x.mean(axis=(0, 1)), rtol=1e-5)
    blur = baseline_image(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std() / 2
    with pytest.raises(ValueError):
        baseline_image(x, "noise")


def test_area_under():
    assert area_under(np.array([0, 0.5, 1]), np.array([1, 1, 1])) == pytest.approx(1.0)
    assert area_under(np.array([0, 1]), np.array([0, 1])) == pytest.approx(0.5)


def test_pointing_game_and_energy_share_resize_the_mask():
    mask = np.zeros((30, 30), bool)
    mask[:, :15] = True  # left half, at another size than the map
    saliency = left_map() * 0.5
    saliency[3, 2] = 1.0
    assert pointing_game(saliency, mask)
    assert not pointing_game(1 - left_map(), mask)
    assert energy_in_mask(left_map(), mask) == pytest.approx(1.0)
    assert energy_in_mask(np.ones((S, S)), mask) == pytest.approx(0.5)
    assert energy_in_mask(np.zeros((S, S)), mask) == 0.0


def test_gaussian_baseline_is_centred():
    g = gaussian_baseline((20, 30))
    assert g.shape == (20, 30) and g.dtype == np.float32
    assert g.max() <= 1.0 and g[0, 0] < 0.05 and g[10, 0] < g[10, 8] < g[10, 14]
    centre = np.unravel_index(np.argmax(g), g.shape)
    assert centre in {(9, 14), (9, 15), (10, 14), (10, 15)}
