"""Saliency maps: the contract of every method, the fast path against tf-keras-vis, stages, sanity checks."""

import numpy as np
import pytest
from tiny_models import SIZE, build_colour_model, build_strided_model, build_tiny_model, red_left_green_right

from core.explaining.saliency import (
    DEFAULT_METHOD,
    METHODS,
    Explainer,
    energy_inside,
    explain,
    explain_image,
    gradcam,
    gradcam_fast,
    normalize_map,
    pointing_game,
)
from core.explaining.saliency import cam as cams
from core.explaining.saliency import sanity

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(build_colour_model(), "last_conv")


@pytest.fixture(scope="module")
def strided():
    return Explainer(build_strided_model(), "last_conv")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_maps_the_target_class_half(explainer, method):
    x = red_left_green_right()
    left, right = slice(0, SIZE // 2), slice(SIZE // 2, SIZE)
    for target, looks_at, ignores in ((0, left, right), (1, right, left)):
        saliency = explain(explainer, x, method, class_index=target)
        assert saliency.shape == (SIZE, SIZE) and saliency.dtype == np.float32
        assert saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
        assert saliency[:, looks_at].mean() > 2 * saliency[:, ignores].mean(), (method, target)


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].backend == "fast"])
def test_fast_methods_keep_a_non_square_input_frame(strided, method):
    x = np.random.default_rng(1).uniform(0, 255, (48, 64, 3)).astype(np.float32)
    saliency = explain(strided, x, method, class_index=2)
    assert saliency.shape == (48, 64) and saliency.dtype == np.float32 and saliency.min() >= 0.0


def test_unknown_method_is_rejected(explainer):
    with pytest.raises(ValueError, match="unknown saliency method"):
        explain(explainer, red_left_green_right(), "Occlusion", class_index=0)
    assert DEFAULT_METHOD in METHODS


def test_stage_layers_by_stride_and_native_sizes(strided):
    assert strided.stage_layers() == {8: "stage8", 16: "stage16", 32: "last_conv"}
    natives = {name: METHODS[name].native_size(strided) for name in METHODS}
    assert natives["LayerCAM, stride 8"] == (6, 8) and natives["Grad-CAM, stride 32"] == (2, 2)
    assert natives["LayerCAM, fused strides 8+16+32"] == (6, 8)
    assert natives["Integrated gradients"] == (48, 64)
    tiny = Explainer(build_tiny_model(), "last_conv")  # no strided stages: every stage is the last conv
    assert tiny.stage_layers() == {1: "last_conv"} and tiny.stage_layer(8) == "last_conv"


def _random_input(size=(SIZE, SIZE), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (*size, 3)).astype(np.float32)


@pytest.mark.parametrize("weighting,reference", [("gradcam", cams.gradcam), ("layercam", cams.layercam)])
def test_fast_path_matches_tf_keras_vis(weighting, reference):
    model = build_tiny_model(seed=3)
    explainer = Explainer(model, "last_conv")
    x = _random_input()
    target = int(np.argmax(model.predict(x[None], verbose=0)))
    fast = cams.cam_batch(explainer, x[None], [target], weighting=weighting)[0][0]
    slow = reference(explainer, x, target)
    assert slow.max() > 0, "the seeded model gives a non-empty reference map"
    assert np.corrcoef(fast.ravel(), slow.ravel())[0, 1] > 0.95


def test_fast_gradcam_on_the_strided_model_matches_tf_keras_vis(strided):
    x = _random_input((48, 64), seed=2)
    fast, slow = gradcam_fast(strided, x, 4), gradcam(strided, x, 4)
    assert slow.shape == fast.shape == (48, 64)
    if slow.max() > 0:
        assert np.corrcoef(fast.ravel(), slow.ravel())[0, 1] > 0.9


def test_fused_layercam_is_the_maximum_of_scaled_stage_maps(strided):
    x = _random_input((48, 64), seed=4)
    fused, probs = cams.fused_batch(strided, x[None], [1])
    assert fused.shape == (1, 48, 64) and probs.shape == (1, 7)
    raw, _ = cams.raw_cams(strided, x[None], [1], layers=["stage8", "stage16", "last_conv"], weighting="layercam")
    scaled = [m / m.max() if m.max() > 0 else m for m in raw]
    scaled = [np.tanh(2 * m) for m in scaled[:2]] + scaled[2:]
    expected = normalize_map(np.max([cams.upsample(m, (48, 64))[0] for m in scaled], axis=0))
    np.testing.assert_allclose(fused[0], expected, atol=1e-5)


def test_agreement_is_the_geometric_mean_of_the_two_scaled_stages(strided):
    x = _random_input((48, 64), seed=4)
    agreed, probs = cams.agreement_batch(strided, x[None], [1])
    assert agreed.shape == (1, 48, 64) and probs.shape == (1, 7)
    raw, _ = cams.raw_cams(strided, x[None], [1], layers=["stage8", "stage16"], weighting="layercam")
    scaled = [cams.upsample(m / m.max() if m.max() > 0 else m, (48, 64))[0] for m in raw]
    expected = normalize_map(np.sqrt(np.clip(scaled[0], 0, None) * np.clip(scaled[1], 0, None)))
    np.testing.assert_allclose(agreed[0], expected, atol=1e-5)
    assert METHODS["LayerCAM, strides 8 × 16 (geometric mean)"].native_size(strided) == (6, 8)


def test_shifted_copies_move_the_image_by_a_quarter_cell_with_mirrored_edges():
    x = _random_input((48, 64), seed=5)
    copies, offsets = cams.shifted_copies(x, 4)
    assert copies.shape == (4, 48, 64, 3) and offsets == [(-4, -4), (-4, 4), (4, -4), (4, 4)]
    for copy, (dy, dx) in zip(copies, offsets):  # copy[i, j] = x[i + dy, j + dx] wherever that exists
        np.testing.assert_array_equal(copy[max(0, -dy): 48 - max(0, dy), max(0, -dx): 64 - max(0, dx)],
                                      x[max(0, dy): 48 + min(0, dy), max(0, dx): 64 + min(0, dx)])
    np.testing.assert_array_equal(copies[0][0], x[4, np.r_[4:0:-1, 0:60]])  # mirrored, not padded with zeros


def test_interleave_puts_each_shift_on_its_own_rows_and_columns():
    maps = np.arange(4)[:, None, None] * np.ones((4, 2, 3))
    woven = cams.interleave(maps)
    assert woven.shape == (4, 6)
    np.testing.assert_array_equal(woven[:2, :2], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(woven[0], [0, 1, 0, 1, 0, 1])


def _red_patch_model():
    """The stride-16 stage is the mean red of each 16 × 16 window; class 0 is scored by it."""
    import keras

    inputs = keras.Input(shape=(48, 64, 3), name="image")
    x = keras.layers.Conv2D(filters=1, kernel_size=1, use_bias=False, name="red")(inputs)
    x = keras.layers.AveragePooling2D(pool_size=16, strides=16, padding="same", name="stage16")(x)
    x = keras.layers.AveragePooling2D(pool_size=2, padding="same", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(units=2, activation="softmax", name="probs")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    model.get_layer("red").set_weights([np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 3, 1) / 255])
    model.get_layer("probs").set_weights([np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32)])
    return model


def test_stitched_map_finds_a_small_patch_that_the_stride_16_map_smears():
    explainer = Explainer(_red_patch_model(), "last_conv")
    x = np.zeros((48, 64, 3), np.float32)
    x[18:24, 34:40, 0] = 255.0  # a 6 × 6 red patch near the corner of one stride-16 cell
    stitched = explain(explainer, x, "LayerCAM, stride 16 sampled at 8 (4 shifts)", class_index=0)
    coarse = explain(explainer, x, "LayerCAM, stride 16", class_index=0)
    assert stitched.shape == (48, 64) and stitched.max() == pytest.approx(1.0)
    near = np.zeros((48, 64), bool)
    near[14:28, 30:44] = True  # the patch and 4 pixels around it
    assert energy_inside(stitched, near) > energy_inside(coarse, near) + 0.05
    peak = np.unravel_index(np.argmax(stitched), stitched.shape)
    assert abs(peak[0] - 20.5) <= 4 and abs(peak[1] - 36.5) <= 4
    assert METHODS["LayerCAM, stride 16 sampled at 8 (4 shifts)"].native_size(explainer) == (6, 8)


def test_traced_functions_are_built_once(explainer):
    gradcam_fast(explainer, red_left_green_right(), 0)
    count = len(explainer._traced)
    gradcam_fast(explainer, red_left_green_right(), 1)
    assert len(explainer._traced) == count


def test_tf_keras_vis_explainers_are_cached_and_do_not_touch_the_model(explainer):
    gradcam(explainer, red_left_green_right(), 0)
    first = explainer.tfkv("gradcam")
    assert explainer.tfkv("gradcam") is first
    assert explainer.tfkv("layercam").model is explainer.linear_model()
    # ReplaceToLinear works on a clone: the served model keeps its softmax
    probs = explainer.model.predict(red_left_green_right()[None], verbose=0)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_explain_image_returns_the_image_own_size(explainer):
    rgb = np.zeros((45, 60, 3), np.uint8)
    rgb[10:35, 5:28, 0] = 255
    saliency = explain_image(explainer, rgb, DEFAULT_METHOD, class_index=0)
    assert saliency.shape == (45, 60) and saliency.dtype == np.float32 and saliency.min() >= 0
    assert saliency[:, :30].mean() > saliency[:, 30:].mean()


def test_mask_metrics_are_exported_for_any_mask_size():
    saliency = np.zeros((8, 8), np.float32)
    saliency[2:4, 2:4] = 1.0
    mask = np.zeros((40, 40), bool)
    mask[:20, :20] = True
    assert energy_inside(saliency, mask) == pytest.approx(1.0)
    assert pointing_game(saliency, mask)
    assert not pointing_game(saliency, ~mask)


def test_normalize_map_handles_flat_and_nan():
    assert normalize_map(np.full((3, 3), 5.0)).max() == 0.0
    out = normalize_map(np.array([[np.nan, 1.0], [3.0, 2.0]]))
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0


def test_weight_groups_run_from_the_top(strided):
    groups = sanity.weight_groups(strided.model)
    assert [(name, stride) for name, stride, _ in groups][:3] == [("probs", 0), ("conv4", 32), ("conv3", 16)]
    assert [len(layers) for _, _, layers in groups[1:]] == [2] * 5  # each conv with its batch norm
    assert sanity.depths(groups)[:2] == [("head", 1), ("down to stride 32", 2)]
    assert sanity.depths(groups)[-1] == ("all weights", 6)


def test_randomise_redraws_kernels_on_a_copy_and_keeps_batch_norm(strided):
    clone = sanity.copy_model(strided.model)
    layers = [clone.get_layer("conv4"), clone.get_layer("conv4_bn")]
    before = [w.numpy().copy() for layer in layers for w in layer.weights]
    sanity.randomise(layers, np.random.default_rng(0))
    after = [w.numpy() for layer in layers for w in layer.weights]
    assert not np.allclose(before[0], after[0])  # conv kernel re-drawn
    assert np.std(after[0]) == pytest.approx(np.std(before[0]), rel=0.2)
    for b, a in zip(before[2:], after[2:]):  # batch-norm parameters and statistics kept
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(strided.model.get_layer("conv4").weights[0].numpy(), before[0])


def test_randomising_the_colour_model_decorrelates_its_maps():
    model = build_colour_model()
    x = red_left_green_right()
    trained = explain(Explainer(model, "last_conv"), x, "LayerCAM, stride 32", class_index=0)
    clone = sanity.copy_model(model)
    randomised = Explainer(clone, "last_conv")
    assert sanity.spearman(trained, explain(randomised, x, "LayerCAM, stride 32", class_index=0)) == pytest.approx(1.0)
    for _, _, layers in sanity.weight_groups(clone):
        sanity.randomise(layers, np.random.default_rng(0))
    randomised.weights_changed()
    assert sanity.spearman(trained, explain(randomised, x, "LayerCAM, stride 32", class_index=0)) < 0.5
    assert sanity.spearman(trained, np.zeros_like(trained)) == 0.0
