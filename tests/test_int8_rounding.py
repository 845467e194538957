"""core.serving.int8_rounding: kernels on TFLite's int8 grid, chosen to keep each layer's output, kept by the converter."""

import numpy as np
import pytest
from tiny_models import build_bottleneck_model

from core.serving import export, int8_rounding

from core.training import models
SIZE = (24, 32)


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Pixel images with structure at several scales (pure noise would make every layer's input white)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 3, 4, 3))
    fine = rng.normal(0, 25, size=(n, *SIZE, 3))
    up = np.repeat(np.repeat(coarse, SIZE[0] // 3, axis=1), SIZE[1] // 4, axis=2)
    return np.clip(up + fine, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return build_bottleneck_model(*SIZE, seed=5)


@pytest.fixture(scope="module")
def calibration():
    return smooth_images(48, seed=1)


@pytest.fixture(scope="module")
def rounded(model, calibration):
    return int8_rounding.round_weights(model, calibration)


def kernels(model) -> dict:
    return {layer.name: (layer.get_weights()[0], type(layer).__name__ == "DepthwiseConv2D")
            for layer in model.layers if type(layer).__name__ in int8_rounding.KERNEL_LAYERS}


def test_every_kernel_lies_on_its_per_channel_grid_with_the_largest_code_127(rounded):
    found = kernels(rounded)
    assert set(found) == {"stem", "expand", "depthwise", "project", "last_conv"}
    for name, (kernel, depthwise) in found.items():
        codes, _ = int8_rounding.grid_codes(kernel, depthwise)
        assert np.abs(codes - np.round(codes)).max() < 1e-3, name
        assert np.all(np.abs(np.round(codes)).max(axis=1) == 127), name


def test_the_input_model_is_left_unchanged(model, calibration):
    before = [w.copy() for w in model.get_weights()]
    int8_rounding.round_weights(model, calibration[:8])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("layer_name", ["stem", "depthwise", "expand"])
def test_patches_times_kernel_rows_is_the_layer_output(model, calibration, layer_name):
    import keras

    layer = model.get_layer(layer_name)
    x = np.asarray(keras.Model(model.input, layer.input)(calibration[:2]))
    expected = np.asarray(layer(x))
    kernel = layer.get_weights()[0]
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    rows = int8_rounding.kernel_rows(kernel, depthwise)
    cols = int8_rounding.patches(x, layer)
    got = np.einsum("nkc,ck->nc", cols, rows) if depthwise else cols @ rows.T
    np.testing.assert_allclose(got, expected.reshape(len(got), -1), atol=1e-4)
    np.testing.assert_array_equal(int8_rounding.rows_to_kernel(rows, kernel.shape), kernel)


def test_gptq_lands_on_the_grid_and_beats_nearest_rounding_on_its_objective():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 12)) @ rng.normal(size=(12, 12))  # correlated inputs
    hessian = x.T @ x / len(x)
    rows = rng.normal(size=(6, 12)) * 0.01
    got = int8_rounding.gptq(rows, hessian)
    scale = np.abs(rows).max(1, keepdims=True) / 127
    nearest = np.round(rows / scale) * scale
    codes = got / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)
    assert np.all(np.abs(np.round(codes)).max(1) == 127)

    def loss(q):
        d = rows - q
        return np.einsum("oi,ij,oj->", d, hessian, d)

    assert loss(got) < 0.8 * loss(nearest)  # 0.64 on these inputs


def test_the_converter_keeps_the_rounded_codes(rounded, calibration):
    from ai_edge_litert.interpreter import Interpreter

    content = export.convert(rounded, SIZE, quantize="int8", representative=calibration[:16])
    interpreter = Interpreter(model_content=content)
    filters = {}
    for detail in interpreter.get_tensor_details():
        scales = detail["quantization_parameters"]["scales"]
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 4 and len(scales) > 1:
            filters[tuple(detail["shape"])] = interpreter.get_tensor(detail["index"]).astype(np.int64)
    for name, (kernel, depthwise) in kernels(rounded).items():
        codes = np.round(int8_rounding.grid_codes(kernel, depthwise)[0]).astype(np.int64)
        kh, kw, cin, cout = kernel.shape
        if depthwise:  # TFLite lays a depthwise filter out as (1, kh, kw, channels)
            stored = filters[(1, kh, kw, cin)].reshape(kh * kw, cin).T
        else:  # and a convolution's as (out, kh, kw, in)
            stored = filters[(cout, kh, kw, cin)].reshape(cout, -1)
        assert np.array_equal(stored, codes), name  # the BatchNorms' gammas are positive: no sign flips


def nearest_rounded(model):
    """A copy of ``model`` with every kernel rounded to the nearest code of its grid (what the converter does)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, (kernel, depthwise) in kernels(copy).items():
        codes, scale = int8_rounding.grid_codes(kernel, depthwise)
        rows = np.round(codes) * scale[:, None]
        copy.get_layer(name).set_weights([int8_rounding.rows_to_kernel(rows, kernel.shape).astype(np.float32),
                                          *copy.get_layer(name).get_weights()[1:]])
    return copy


def test_rounded_kernels_keep_the_int8_output_closer_to_float_than_nearest_rounding(model, rounded, calibration):
    """On held-out images, with every convolution input quantised to 8 bits as in the int8 file.

    (The file's own output is an int8 tensor whose step hides differences this small on a tiny model;
    that the file keeps the kernels exactly is the test above.)
    """
    held_out = smooth_images(64, seed=9)
    reference = np.asarray(model(held_out))
    names = list(kernels(model))
    ranges = int8_rounding.input_ranges(model, names, calibration)

    def error(candidate) -> float:
        return float(np.abs(int8_rounding.simulate(candidate, held_out, ranges) - reference).mean())

    assert error(rounded) < error(nearest_rounded(model))


@pytest.mark.parametrize(("layer_name", "into"), [("expand", "BatchNormalization"), ("last_conv", "bias")])
def test_a_mean_output_shift_is_absorbed_by_what_follows_the_layer(model, layer_name, into):
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layer = copy.get_layer(layer_name)
    shift = np.random.default_rng(2).normal(size=layer.get_weights()[0].shape[-1])
    after = copy.get_layer(f"{layer_name}_bn") if into == "BatchNormalization" else None
    y = np.random.default_rng(3).normal(size=(2, 4, 5, len(shift))).astype(np.float32)
    expected = np.asarray(after(y + shift, training=False)) if after else None
    bias = layer.get_weights()[1].copy() if not after else None
    int8_rounding._absorb_shift(copy, layer, shift)
    if after:
        np.testing.assert_allclose(np.asarray(after(y, training=False)), expected, atol=1e-5)
    else:
        np.testing.assert_allclose(layer.get_weights()[1], bias + shift, atol=1e-6)



def test_grouped_convolutions_are_left_to_the_converter(calibration):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(*SIZE, 3))
    x = keras.layers.Conv2D(filters=4, kernel_size=3, padding="same", name="plain")(inputs)
    x = keras.layers.Conv2D(filters=4, kernel_size=1, groups=2, name="grouped")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    rounded = int8_rounding.round_weights(model, calibration[:8])
    grouped = [m.get_layer("grouped").get_weights()[0] for m in (rounded, model)]
    np.testing.assert_array_equal(*grouped)
    codes, _ = int8_rounding.grid_codes(rounded.get_layer("plain").get_weights()[0], depthwise=False)
    assert np.abs(codes - np.round(codes)).max() < 1e-3


def test_simulate_runs_the_float_model_where_no_input_is_quantised(model, calibration):
    expected = np.asarray(model(calibration, training=False))
    np.testing.assert_allclose(int8_rounding.simulate(model, calibration, {}), expected, atol=1e-6)
    unquantised = dict.fromkeys(kernels(model))  # a range of None leaves the input float
    np.testing.assert_allclose(int8_rounding.simulate(model, calibration, unquantised), expected, atol=1e-6)


@pytest.mark.parametrize("arch", models.ARCHITECTURES)
def test_simulate_runs_every_architecture_as_keras_does(arch):
    """``simulate`` walks Keras's own call records; any architecture it cannot replay fails here."""
    model = models.build_model(arch, 32, n_classes=7)  # MobileNetV3's smallest input
    images = np.random.default_rng(4).uniform(0, 255, size=(6, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(int8_rounding.simulate(model, images, {}),
                               np.asarray(model(images, training=False)), atol=1e-6)


def test_simulate_quantises_the_named_input_and_shows_it_to_before(model, calibration):
    import keras

    seen = {}
    ranges = {"expand": (0.0, 6.0)}
    out = int8_rounding.simulate(model, calibration, ranges, before=lambda layer, x: seen.update({layer.name: x}))
    assert list(seen) == ["expand"]
    stem = np.asarray(keras.Model(model.input, model.get_layer("stem_relu").output)(calibration, training=False))
    step = 6.0 / 255
    np.testing.assert_allclose(seen["expand"], np.round(stem / step) * step, atol=1e-5)
    assert not np.allclose(out, np.asarray(model(calibration, training=False)), atol=1e-6)


def test_a_layer_called_twice_is_refused_by_name(calibration):
    import keras

    inputs = keras.Input(shape=(*SIZE, 3))
    shared = keras.layers.Conv2D(3, 1, name="shared")
    x = shared(shared(inputs))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    with pytest.raises(ValueError, match="layer shared is called 2 times"):
        int8_rounding.round_weights(keras.Model(inputs, outputs), calibration[:4])
