"""Read and write model folders (``model.keras`` + ``model.json``).

``read_metadata`` needs no TensorFlow, so pages can list models cheaply;
``load_model`` imports Keras only when called. :class:`ModelFolder` is a
folder opened once: prediction, evaluation and saliency share it, so
``model.json`` is read and checked once however many of them use the folder.

The class list of ``model.json`` is checked because nothing else would catch a
wrong one: it must name known classes (``core.labels.CLASSES``) once each, in
the order the folder's ``config.json`` and ``predictions_val.csv`` recorded
when they exist, and as many as the model has outputs (checked on loading).
Messages name the folder by its name only.
"""

import csv
import json
from functools import cached_property
from pathlib import Path

from core.labels import CLASSES
from core.runfolder import CONFIG_FILE, METADATA_FILE, MODEL_FILE, predictions_file, write_json_atomic

REQUIRED_KEYS = ("classes", "last_conv_layer")


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
    meta.setdefault("temperature", None)
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
    for name, recorded in _recorded_orders(Path(model_dir)):
        if recorded != classes:
            raise ModelFolderError(f"{where} lists classes {classes} but {name} recorded {recorded}")


def _recorded_orders(model_dir: Path) -> list:
    """``(file name, class list)`` from the folder's ``config.json`` and ``predictions_val.csv`` header."""
    found = []
    config = model_dir / CONFIG_FILE
    try:
        recorded = json.loads(config.read_text(encoding="utf-8")).get("classes") if config.is_file() else None
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, list):
        found.append((config.name, recorded))
    val = model_dir / predictions_file("val")
    try:
        with open(val, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError):
        header = []
    columns = [c for c in header if c in CLASSES]
    if columns:
        found.append((val.name, columns))
    return found


def input_size(meta: dict) -> tuple[int, int]:
    """The model's input ``(height, width)``: ``image_height``/``image_width``, or a square ``image_size``."""
    if "image_height" in meta:
        return int(meta["image_height"]), int(meta["image_width"])
    return int(meta["image_size"]), int(meta["image_size"])


def write_metadata(model_dir: Path, meta: dict) -> None:
    """Write ``model.json`` atomically."""
    write_json_atomic(Path(model_dir) / METADATA_FILE, meta, sort_keys=True)


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds both a model and its metadata."""
    path = Path(path)
    return (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()


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
    return model


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

class ModelFolder:
    """A classifier's model folder, opened once.

    ``model.json`` is read and checked on opening; the Keras model, the
    calibration status and the out-of-distribution scorer are loaded when first
    asked for, then kept.

    Args:
        path: a folder with ``model.keras`` and ``model.json``.
        model: an already loaded Keras model (skips loading; for tests and benches).

    Raises:
        ModelFolderError: no ``model.json``, or one serving cannot use.
    """

    def __init__(self, path: Path, model=None):
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        if model is not None:
            self.__dict__["model"] = model  # what cached_property would have stored

    @classmethod
    def open(cls, folder) -> "ModelFolder":
        """``folder`` itself when it is already open, else the folder at that path opened."""
        return folder if isinstance(folder, ModelFolder) else cls(folder)

    @property
    def classes(self) -> tuple:
        """The class codes, in the model's output order."""
        return tuple(self.meta["classes"])

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input ``(height, width)``."""
        return input_size(self.meta)

    @property
    def last_conv_layer(self) -> str:
        """The layer saliency maps are read from."""
        return self.meta["last_conv_layer"]

    @cached_property
    def model(self):
        """The Keras model, checked to have one output per class (imports TensorFlow)."""
        return load_model(self.path, self.meta)

    @cached_property
    def calibration(self) -> dict:
        """``core.calibration.temperature_status``: the stored temperature and whether it is applied."""
        from core.calibration import temperature_status

        return temperature_status(self.meta, self.path)

    @property
    def temperature(self) -> float | None:
        """The temperature applied to probabilities, or None when they stay the model's own softmax."""
        return self.calibration["applied"]

    @cached_property
    def ood(self):
        """The folder's out-of-distribution scorer (``core.ood.load_scorer``)."""
        from core.ood import load_scorer

        return load_scorer(self.path, self.meta)
