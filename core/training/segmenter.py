"""The lesion segmenter's architecture: a U-Net on a MobileNetV2 encoder, and the ``model.json`` it is saved with.

The model is a flat functional graph: the MobileNetV2 encoder of
``core.training.models.build_model`` (with its offline ImageNet weights and its
preprocessing layer) and a U-Net decoder reading five of its activations. It
takes float32 RGB in 0..255 at ``(H, W, 3)`` and returns a ``(H, W, 1)``
lesion probability (sigmoid) from its layer ``mask``. Serving it is
:mod:`core.serving.segment`; training it, :mod:`core.training.segment_train`.
"""

from pathlib import Path

from core.serving.segment import OUTPUT_LAYER

ENCODER = "mobilenet_v2"
# Encoder activations at strides 2, 4, 8, 16 (skips) and 32 (bottom).
SKIPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu")
BOTTOM = "block_16_project"
DECODER_FILTERS = (128, 64, 48, 32, 16)
# Encoder layers before this one stay frozen when ``freeze_until`` is "block_6": the
# full-resolution blocks cost most of the backward pass and learn generic edges.
FREEZE_POINTS = ("none", "block_3", "block_6", "block_13", "all")


def build_segmenter(image_size, weights: str = "offline-imagenet", filters=DECODER_FILTERS):
    """Build the U-Net segmenter on a MobileNetV2 encoder.

    Args:
        image_size: the input ``(height, width)``; both must be multiples of 32.
        weights: encoder weights, as for ``core.training.models.build_model``.
        filters: decoder filters, from the stride-16 level up to full resolution.

    Returns:
        An uncompiled ``keras.Model`` named ``segmenter`` with a sigmoid output layer ``mask``.
    """
    import keras

    from core.dataset.images import as_hw
    from core.training.models import build_model

    height, width = as_hw(image_size)
    if height % 32 or width % 32:
        raise ValueError(f"segmenter input {height}×{width}: both sides must be multiples of 32")
    encoder = build_model(ENCODER, (height, width), n_classes=1, weights=weights)
    x = encoder.get_layer(BOTTOM).output
    skips = [encoder.get_layer(name).output for name in reversed(SKIPS)] + [None]
    for level, (skip, n) in enumerate(zip(skips, filters)):
        x = _up_block(x, skip, n, name=f"up{level}")
    outputs = keras.layers.Conv2D(filters=1, kernel_size=1, activation="sigmoid", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs=encoder.input, outputs=outputs, name="segmenter")


def _up_block(x, skip, filters: int, name: str):
    """Upsample ×2 (bilinear), join the skip connection, then two 3×3 convolutions."""
    import keras

    x = keras.layers.UpSampling2D(size=2, interpolation="bilinear", name=f"{name}_upsample")(x)
    if skip is not None:
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    for i in range(2):
        x = keras.layers.SeparableConv2D(filters=filters, kernel_size=3, padding="same", use_bias=False,
                                         name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def set_encoder_trainable(model, freeze_until: str) -> None:
    """Freeze the encoder below ``freeze_until`` (see ``FREEZE_POINTS``); encoder BatchNorm always stays frozen.

    Frozen BatchNorm runs in inference mode, keeping ImageNet statistics, as the
    Keras transfer-learning guide advises for small batches.
    """
    import keras

    if freeze_until not in FREEZE_POINTS:
        raise ValueError(f"unknown freeze point {freeze_until!r}; choose one of {FREEZE_POINTS}")
    frozen = freeze_until != "none"
    for layer in model.layers:
        if layer.name.startswith("up") or layer.name == OUTPUT_LAYER:
            layer.trainable = True
            continue
        if freeze_until not in ("none", "all") and layer.name.startswith(f"{freeze_until}_"):
            frozen = False
        layer.trainable = not frozen and not isinstance(layer, keras.layers.BatchNormalization)


RECIPE_OPTIONS = ("image_size", "image_height", "epochs", "batch_size", "lr", "freeze", "seed", "weights")


def recipe() -> dict:
    """The architecture facts a run's config and a model's metadata record."""
    return {"encoder": f"{ENCODER} (torchvision ImageNet weights, ported by core.training.models)",
            "decoder": f"U-Net: bilinear ×2 upsampling, skip concatenation, 2 separable 3×3 convs per level, "
                       f"filters {list(DECODER_FILTERS)}",
            "skips": list(SKIPS), "bottom": BOTTOM, "output_layer": OUTPUT_LAYER,
            "loss": "binary cross-entropy + (1 - soft Dice per image)",
            "augmentation": "flips (horizontal, vertical, both = 180° turn), image and mask together"}


def metadata(height: int, width: int, *, threshold: float, split_sha256: str, weights: str) -> dict:
    """The ``model.json`` of a segmenter folder (without run-specific fields)."""
    from core.training.models import preprocessing_text

    return {"task": "segmentation", "image_height": int(height), "image_width": int(width),
            "threshold": float(threshold), "split_sha256": split_sha256, "weights": weights,
            "preprocessing": preprocessing_text(ENCODER, weights),
            "input": "RGB float32 in 0..255, decoded by core.dataset.images, resized to image_height x image_width "
                     "(bilinear stretch, no crop)",
            "output": "lesion probability (sigmoid) at the input size; resized bilinearly to the image's own "
                      "size, then thresholded",
            **recipe()}


def write_segmenter_metadata(model_dir: Path, meta: dict) -> None:
    """Write a segmenter's ``model.json`` atomically."""
    from core.serving.modelio import write_metadata

    write_metadata(Path(model_dir), meta)
