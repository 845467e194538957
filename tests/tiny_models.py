"""Tiny flat functional classifiers saved as model folders, for prediction and saliency tests."""

from pathlib import Path

import numpy as np

from core.dataset.images import as_hw
from core.contracts.labels import CLASSES
from core.serving.modelio import write_metadata

SIZE = 32


def build_tiny_model(size=SIZE, seed: int = 0, n_classes: int = len(CLASSES)):
    """Rescaling → two Conv2D (the second named ``last_conv``) → GAP → Dense softmax.

    ``size`` is one side (a square input) or a ``(height, width)`` pair.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*as_hw(size), 3), name="image")
    x = keras.layers.Rescaling(scale=1.0 / 255.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(filters=4, kernel_size=3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.Conv2D(filters=4, kernel_size=1, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(units=n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="tiny")


def build_strided_model(height: int = 48, width: int = 64, seed: int = 0, n_classes: int = len(CLASSES)):
    """A non-square backbone with stages at strides 2 … 32, like MobileNetV2's, and a batch norm.

    The stage ends are ``stage8`` (6 × 8), ``stage16`` (3 × 4) and ``last_conv`` (2 × 2).
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = keras.layers.Rescaling(scale=1.0 / 255.0, name="rescale")(inputs)
    names = {8: "stage8", 16: "stage16", 32: "last_conv"}
    for k, stride in enumerate((2, 4, 8, 16, 32)):
        x = keras.layers.Conv2D(filters=8, kernel_size=3, strides=2, padding="same", name=f"conv{k}")(x)
        x = keras.layers.BatchNormalization(name=f"conv{k}_bn")(x)
        x = keras.layers.ReLU(name=names.get(stride, f"relu{k}"))(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(units=n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs=inputs, outputs=outputs, name="strided")


def build_colour_model(size: int = SIZE):
    """A tiny model wired by hand: class 0 ("akiec") fires on red pixels, class 1 ("bcc") on green.

    On an image with red on the left and green on the right, the two classes
    look at different halves, so a saliency map must depend on the target class.
    """
    model = build_tiny_model(size)
    conv1 = np.zeros((3, 3, 3, 4), np.float32)
    for c in range(3):
        conv1[1, 1, c, c] = 1.0  # pass R, G, B through unchanged
    model.get_layer("conv1").set_weights([conv1, np.zeros(4, np.float32)])
    last = np.zeros((1, 1, 4, 4), np.float32)
    last[0, 0, :3, 0] = (1.0, -1.0, -1.0)  # redness
    last[0, 0, :3, 1] = (-1.0, 1.0, -1.0)  # greenness
    model.get_layer("last_conv").set_weights([last, np.zeros(4, np.float32)])
    dense = np.zeros((4, len(CLASSES)), np.float32)
    dense[0, 0] = dense[1, 1] = 20.0
    model.get_layer("probs").set_weights([dense, np.zeros(len(CLASSES), np.float32)])
    return model


def build_nearest_colour_model(colours: np.ndarray, height: int, width: int, sharpness: float = 1 / 400):
    """A classifier wired by hand: the class whose colour (a row of ``colours``) is nearest the image's mean.

    Logits ``-sharpness · |mean - colour_k|²`` drop the ``|mean|²`` every class shares, which
    leaves a Dense layer on the mean colour. Swapping two rows makes a teacher that swaps two classes.
    """
    import keras

    inputs = keras.Input(shape=(height, width, 3), name="image")
    # An identity 1x1 convolution: the 4-D layer model.json names for saliency maps.
    x = keras.layers.Conv2D(filters=3, kernel_size=1, use_bias=False, name="last_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="mean_colour")(x)
    outputs = keras.layers.Dense(units=len(colours), activation="softmax", name="probs")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="nearest_colour")
    model.get_layer("last_conv").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    colours = np.asarray(colours, np.float64)
    kernel, bias = 2 * sharpness * colours.T, -sharpness * (colours**2).sum(axis=1)
    model.get_layer("probs").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def red_left_green_right(size: int = SIZE) -> np.ndarray:
    """A ``(size, size, 3)`` float32 image: a red square in the left half, a green one in the right."""
    x = np.zeros((size, size, 3), np.float32)
    q = size // 4
    x[q : 3 * q, 2 : size // 2 - 2, 0] = 255.0
    x[q : 3 * q, size // 2 + 2 : size - 2, 1] = 255.0
    return x


def save_model_folder(model, folder: Path, temperature=None, extra: dict | None = None) -> Path:
    """Write ``model.keras`` + ``model.json`` as the model folder contract describes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    height, width = (int(n) for n in model.inputs[0].shape[1:3])
    meta = {
        "classes": list(CLASSES),
        "image_size": height,
        "arch": "tiny_cnn",
        "preprocessing": "Rescaling(1/255) inside the model",
        "last_conv_layer": "last_conv",
        "temperature": temperature,
        "split_sha256": "0" * 64,
        "created": "2024-01-01T00:00:00",
        "run_id": "tiny",
    }
    if height != width:
        meta.update(image_height=height, image_width=width)
    meta.update(extra or {})
    write_metadata(folder, meta)
    return folder


def folder_trained_on(folder: Path, dataset: Path, model, save_split: bool = True) -> Path:
    """A model folder as a run on ``dataset`` leaves it: split hash, ``splits.csv``, Keras validation predictions.

    The split is the dataset's seed-42 split; with ``save_split=False`` the folder
    keeps only its hash, as the shipped model does.
    """
    from core.contracts import predictions
    from core.dataset import splits
    from core.dataset.data import load_dataset
    from core.dataset.images import read_model_pixels

    frame = load_dataset(dataset)
    table = splits.make_splits(frame, seed=42)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = splits.save_splits(table, folder / splits.SPLIT_FILE)
    if not save_split:
        (folder / splits.SPLIT_FILE).unlink()
    save_model_folder(model, folder, extra={"split_sha256": digest})
    val = frame[frame["image_id"].isin(table.loc[table["split"] == "val", "image_id"])]
    size = tuple(int(n) for n in model.inputs[0].shape[1:3])
    x = np.stack([read_model_pixels(p, size) for p in val["path"]]).astype(np.float32)
    table = predictions.make_table(val["image_id"], model(x, training=False).numpy(), list(CLASSES), truth=val["dx"])
    predictions.write(folder / "predictions_val.csv", table, predictions.RAW)  # as runs write it
    return folder


def skin_like(rng, n: int, size: int = SIZE) -> np.ndarray:
    """Skin-coloured noisy images with a darker blob: stand-ins for dermatoscopic images (float32 0..255)."""
    yy, xx = np.mgrid[:size, :size]
    images = np.clip(rng.normal((190, 120, 100), 12, (n, size, size, 3)), 0, 255)
    for image in images:
        cy, cx, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.12, 0.28)]
        image[(yy - cy * size) ** 2 + (xx - cx * size) ** 2 < (r * size) ** 2] *= 0.55
    return images.astype(np.float32)


def save_ood_model_folder(folder: Path, seed: int = 0) -> Path:
    """A small CNN whose out-of-distribution check is fitted on :func:`skin_like` images."""
    import keras

    from core.serving import ood_fit
    from core.training.models import build_model

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model("small_cnn", image_size=SIZE, n_classes=len(CLASSES))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entry = ood_fit.fit_for_model(folder, model, train_images=skin_like(rng, 300), val_images=skin_like(rng, 400),
                                  seed=seed, n_negatives=200)
    return save_model_folder(model, folder, extra={"ood": entry})


def build_bottleneck_model(height: int = 24, width: int = 32, seed: int = 0, n_classes: int = len(CLASSES)):
    """MobileNetV2 in miniature: a strided 3 × 3 stem, one inverted residual block (1 × 1 expand,
    padded 3 × 3 depthwise, 1 × 1 linear project, residual add), each convolution followed by a
    BatchNorm with non-trivial statistics, ReLU6, GAP and a Dense softmax."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = keras.layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = keras.layers.Conv2D(filters=8, kernel_size=3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    stem = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.Conv2D(filters=24, kernel_size=1, use_bias=False, name="expand")(stem)
    x = keras.layers.BatchNormalization(name="expand_bn")(x)
    x = keras.layers.ReLU(6.0, name="expand_relu")(x)
    x = keras.layers.ZeroPadding2D(padding=1, name="pad")(x)
    x = keras.layers.DepthwiseConv2D(kernel_size=3, padding="valid", use_bias=False, name="depthwise")(x)
    x = keras.layers.BatchNormalization(name="depthwise_bn")(x)
    x = keras.layers.ReLU(6.0, name="depthwise_relu")(x)
    x = keras.layers.Conv2D(filters=8, kernel_size=1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Add(name="add")([stem, x])
    x = keras.layers.Conv2D(filters=16, kernel_size=1, name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(units=n_classes, activation="softmax", name="probs")(x)
    model = keras.Model(inputs=inputs, outputs=outputs, name="bottleneck")
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.2, 2.0, c)])
    return model
