"""Read and write model folders (``model.keras`` + ``model.json``).

``read_metadata`` needs no TensorFlow, so pages can list models cheaply;
``load_model`` imports Keras only when called. :class:`ModelFolder` is a
folder opened once: prediction, evaluation and saliency share it, so
``model.json`` is read and checked once however many of them use the folder.

The class list of ``model.json`` is checked because nothing else would catch a
wrong one: it must name known classes (``core.contracts.labels.CLASSES``) once each, in
the order the folder's ``config.json`` and ``predictions_val.csv`` / ``predictions_test.csv`` recorded
when they exist, and as many as the model has outputs (checked on loading).
Without any recorded order, a list out of ``CLASSES`` order (which no training
here writes) is refused: a reordered list would put one class's name on
another's probability. Input sizes are whole numbers in ``MIN_INPUT_SIDE`` ..
``MAX_INPUT_SIDE``, ``last_conv_layer`` a name and ``temperature`` null or a
positive number, all checked before any tensor is built; on loading, the input
size must be the model's own, ``last_conv_layer`` one of its layers with a
feature map and the OOD check's layers its layers. Messages name the folder by
its name only.
"""

import csv
import json
from pathlib import Path

from core.contracts.labels import CLASSES
from core.contracts.runfolder import (  # noqa: F401  (is_model_dir: part of the model folder's interface here)
    CONFIG_FILE, METADATA_FILE, MODEL_FILE, is_model_dir, predictions_file, write_json_atomic)

REQUIRED_KEYS = ("classes", "last_conv_layer")
# Model input sides accepted from model.json: training offers 32 .. 512 px; twice that bounds what one
# image costs (1024 x 1024 x 3 float32 = 12 MB), where 100000 x 100000 would ask for 120 GB.
MIN_INPUT_SIDE = 8
MAX_INPUT_SIDE = 1024


class ModelFolderError(ValueError):
    """A model folder that is missing files or has unusable metadata."""


def read_metadata_file(path: Path, what: str = "model metadata") -> dict:
    """The JSON object of a ``model.json`` (a classifier's or a segmenter's), unchecked.

    Raises:
        ModelFolderError: the file is missing, not valid JSON or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: {what} not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{path}: not a JSON object")
    return meta


def read_metadata(model_dir: Path) -> dict:
    """Return the metadata of a model folder, checked for the keys serving needs."""
    path = Path(model_dir) / METADATA_FILE
    meta = read_metadata_file(path)
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if "image_size" not in meta and not {"image_height", "image_width"} <= meta.keys():
        missing.append("image_height/image_width")
    if missing:
        raise ModelFolderError(f"{path}: missing keys {missing}")
    check_classes(meta["classes"], Path(model_dir))
    check_input_size(meta, f"model {Path(model_dir).name}: {METADATA_FILE}")
    if not isinstance(meta["last_conv_layer"], str) or not meta["last_conv_layer"].strip():
        raise ModelFolderError(f"model {Path(model_dir).name}: {METADATA_FILE} 'last_conv_layer' must be a layer name")
    meta.setdefault("temperature", None)
    temperature = meta["temperature"]
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 < temperature < float("inf")):
        raise ModelFolderError(f"model {Path(model_dir).name}: {METADATA_FILE} 'temperature' is {temperature!r}: "
                               "it must be a positive number, or null for none")
    return meta


def check_classes(classes, model_dir: Path) -> None:
    """Refuse a class list that is not a list of known, distinct codes in the recorded order.

    Raises:
        ModelFolderError: naming the folder and the problem.
    """
    where = f"model {Path(model_dir).name}: {METADATA_FILE}"
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelFolderError(f"{where} 'classes' must be a non-empty list of class codes")
    duplicated = sorted({c for c in classes if classes.count(c) > 1})
    if duplicated:
        raise ModelFolderError(f"{where} lists classes more than once: {duplicated}")
    unknown = [c for c in classes if c not in CLASSES]
    if unknown:
        raise ModelFolderError(f"{where} lists unknown classes {unknown}; known classes are {list(CLASSES)}")
    recorded_orders = _recorded_orders(Path(model_dir))
    for name, recorded in recorded_orders:
        if recorded != classes:
            raise ModelFolderError(f"{where} lists classes {classes} but {name} recorded {recorded}")
    if not recorded_orders and classes != sorted(classes, key=CLASSES.index):
        raise ModelFolderError(f"{where} lists classes {classes}, not in the order training writes "
                               f"({[c for c in CLASSES if c in classes]}), and no {CONFIG_FILE} or predictions file "
                               "records the order: the labels cannot be trusted")


def _recorded_orders(model_dir: Path) -> list:
    """``(file name, class list)`` from the folder's ``config.json`` and its predictions files' headers."""
    found = []
    config = model_dir / CONFIG_FILE
    try:
        recorded = json.loads(config.read_text(encoding="utf-8")).get("classes") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, list):
        found.append((config.name, recorded))
    for split in ("val", "test"):
        columns = _class_columns(model_dir / predictions_file(split))
        if columns:
            found.append((predictions_file(split), columns))
    return found


def _class_columns(path: Path) -> list:
    """The class columns of a predictions file's header row (its ``# probabilities`` line skipped)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            header = next(rows, [])
            if header and header[0].startswith("#"):
                header = next(rows, [])
    except (OSError, UnicodeDecodeError, csv.Error):
        header = []
    return [c for c in header if c in CLASSES]


def check_input_size(meta: dict, where: str) -> tuple[int, int]:
    """The input ``(height, width)`` of a ``model.json``, refused unless whole numbers in the bounds.

    Raises:
        ModelFolderError: ``where`` then the key and its value.
    """
    keys = ("image_height", "image_width") if "image_height" in meta or "image_width" in meta else ("image_size",)
    for key in keys:
        value = meta.get(key)
        whole = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        if not whole or not MIN_INPUT_SIDE <= value <= MAX_INPUT_SIDE:
            raise ModelFolderError(f"{where} '{key}' is {value!r}: a model input side must be a whole number "
                                   f"of pixels from {MIN_INPUT_SIDE} to {MAX_INPUT_SIDE}")
    return input_size(meta)


def input_size(meta: dict) -> tuple[int, int]:
    """The model's input ``(height, width)``: ``image_height``/``image_width``, or a square ``image_size``."""
    if "image_height" in meta:
        return int(meta["image_height"]), int(meta["image_width"])
    return int(meta["image_size"]), int(meta["image_size"])


def write_metadata(model_dir: Path, meta: dict) -> None:
    """Write ``model.json`` atomically."""
    write_json_atomic(Path(model_dir) / METADATA_FILE, meta, sort_keys=True)


def load_model(model_dir: Path, meta: dict | None = None):
    """Load the Keras model of a model folder (imports TensorFlow).

    The model must have one output per class of ``model.json`` (``meta``, read
    from the folder when not given).

    Raises:
        ModelFolderError: no model file, a file Keras cannot load, or a class count
            that differs from the model's outputs.
    """
    import keras

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFolderError(f"{path}: model file not found")
    meta = read_metadata(model_dir) if meta is None else meta
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (Keras raises many types for a damaged file)
        raise ModelFolderError(f"model {Path(model_dir).name}: {MODEL_FILE} cannot be loaded ({type(err).__name__})") from err
    outputs = int(model.outputs[0].shape[-1])
    if outputs != len(meta["classes"]):
        raise ModelFolderError(
            f"model {Path(model_dir).name}: {METADATA_FILE} lists {len(meta['classes'])} classes "
            f"but the model has {outputs} outputs"
        )
    check_against_model(model, meta, f"model {Path(model_dir).name}: {METADATA_FILE}")
    return model


def check_against_model(model, meta: dict, where: str) -> None:
    """Refuse metadata whose input size is not the model's, or whose ``last_conv_layer`` has no feature map.

    Raises:
        ModelFolderError: ``where`` then the disagreement.
    """
    taken = tuple(model.inputs[0].shape[1:3])
    if None not in taken and tuple(int(n) for n in taken) != input_size(meta):
        height, width = input_size(meta)
        raise ModelFolderError(f"{where} gives the input as {height}x{width} (height x width) but the model "
                               f"takes {taken[0]}x{taken[1]}")
    name = meta["last_conv_layer"]
    if len(_layer_shape(model, name, f"{where} 'last_conv_layer'")) != 4:
        raise ModelFolderError(f"{where} 'last_conv_layer' {name!r} has no feature map")
    ood = meta.get("ood")
    for layer in (ood.get("layers") or []) if isinstance(ood, dict) else []:
        _layer_shape(model, layer, f"{where} 'ood' layer")


def _layer_shape(model, name, what: str) -> tuple:
    """The output shape of the layer ``name``; a ModelFolderError starting with ``what`` when there is none."""
    try:
        return tuple(model.get_layer(name=name).output.shape)
    except (ValueError, AttributeError, TypeError) as err:
        raise ModelFolderError(f"{what} {name!r} is not a layer of the model") from err


def compiled_forward(model):
    """A traced inference function of a Keras model: much faster per call than ``model.predict``.

    It takes a float32 batch and returns numpy: one array, or a tuple of arrays
    for a model with several outputs (imports TensorFlow).
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    def run(x):
        out = forward(tf.convert_to_tensor(x, dtype=tf.float32))
        return tuple(o.numpy() for o in out) if isinstance(out, (list, tuple)) else out.numpy()

    return run
