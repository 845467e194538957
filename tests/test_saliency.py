"""Saliency maps: shape, range, class dependence, caching, and the drawing helpers."""

import numpy as np
import pytest
from tiny_models import SIZE, build_colour_model, build_tiny_model, red_left_green_right

from core.saliency import (
    METHODS,
    Explainer,
    colorize,
    draw_outline,
    explain,
    gradcam,
    gradcam_fast,
    gradcam_fast_batch,
    normalize_map,
    outline,
    overlay,
    resize_map,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(build_colour_model(), "last_conv")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_maps_the_target_class_half(explainer, method):
    x = red_left_green_right()
    left, right = slice(0, SIZE // 2), slice(SIZE // 2, SIZE)
    for target, looks_at, ignores in ((0, left, right), (1, right, left)):
        saliency = explain(explainer, x, method, target)
        assert saliency.shape == (SIZE, SIZE) and saliency.dtype == np.float32
        assert saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
        assert saliency[:, looks_at].mean() > 2 * saliency[:, ignores].mean(), (method, target)


def test_unknown_method_is_rejected(explainer):
    with pytest.raises(ValueError, match="unknown saliency method"):
        explain(explainer, red_left_green_right(), "Occlusion", 0)


def test_fast_gradcam_matches_tf_keras_vis_on_a_random_model():
    model = build_tiny_model(seed=3)
    explainer = Explainer(model, "last_conv")
    x = np.random.default_rng(0).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32)
    target = int(np.argmax(model.predict(x[None], verbose=0)))
    fast, reference = gradcam_fast(explainer, x, target), gradcam(explainer, x, target)
    if reference.max() == 0:
        pytest.skip("random model produced an all-zero Grad-CAM")
    assert np.corrcoef(fast.ravel(), reference.ravel())[0, 1] > 0.95


def test_fast_gradcam_batch_returns_probabilities_and_is_built_once(explainer):
    x = np.stack([red_left_green_right()] * 2)
    cams, probs = gradcam_fast_batch(explainer, x, [0, 1])
    assert cams.shape == (2, SIZE, SIZE) and probs.shape == (2, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(cams[0], cams[1])
    fn = explainer.fast_fn()
    gradcam_fast(explainer, x[0], 1)
    assert explainer.fast_fn() is fn


def test_tf_keras_vis_explainers_are_cached_and_do_not_touch_the_model(explainer):
    gradcam(explainer, red_left_green_right(), 0)
    first = explainer.tfkv("gradcam")
    assert explainer.tfkv("gradcam") is first
    assert explainer.tfkv("layercam").model is explainer.linear_model()
    # ReplaceToLinear works on a clone: the served model keeps its softmax
    probs = explainer.model.predict(red_left_green_right()[None], verbose=0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_normalize_map_handles_flat_and_nan():
    assert normalize_map(np.full((3, 3), 5.0)).max() == 0.0
    out = normalize_map(np.array([[np.nan, 1.0], [3.0, 2.0]]))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_colorize_and_overlay():
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None].repeat(4, axis=0)
    for cmap in ("jet", "inferno"):
        heat = colorize(ramp, cmap)
        assert heat.shape == (4, 256, 3) and heat.dtype == np.uint8
    jet = colorize(ramp, "jet")
    assert jet[0, 0, 2] > 100 and jet[0, 0, 0] == 0 and jet[0, -1, 0] > 100 and jet[0, -1, 2] == 0
    with pytest.raises(ValueError):
        colorize(ramp, "viridis")
    rgb = np.full((30, 40, 3), 100, np.uint8)
    small = np.zeros((8, 8), np.float32)
    np.testing.assert_array_equal(overlay(rgb, small, opacity=0.0), rgb)
    full = overlay(rgb, small, opacity=1.0)
    assert full.shape == (30, 40, 3) and (full == colorize(np.zeros((30, 40)))).all()
    assert resize_map(np.ones((8, 8), np.float32), (30, 40)).shape == (30, 40)


def test_outline_is_the_mask_border():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    edge = outline(mask, width=1)
    assert edge.sum() == 20 and not edge[4, 4] and edge[2, 2]
    assert outline(mask, width=2).sum() > edge.sum()
    drawn = draw_outline(np.zeros((20, 20, 3), np.uint8), mask, color=(0, 255, 0), width=1)
    assert drawn.shape == (20, 20, 3) and (drawn[..., 1] == 255).any() and drawn[10, 10, 1] == 0
