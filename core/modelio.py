"""Read and write model folders (``model.keras`` + ``model.json``).

``read_metadata`` needs no TensorFlow, so pages can list models cheaply;
``load_model`` imports Keras only when called.
"""

import json
from pathlib import Path

from core.runfolder import METADATA_FILE, MODEL_FILE, write_json_atomic

REQUIRED_KEYS = ("classes", "last_conv_layer")


class ModelFolderError(ValueError):
    """A model folder that is missing files or has unusable metadata."""


def read_metadata(model_dir: Path) -> dict:
    """Return the metadata of a model folder, checked for the keys serving needs."""
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        raise ModelFolderError(f"{path}: model metadata not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if "image_size" not in meta and not {"image_height", "image_width"} <= meta.keys():
        missing.append("image_height/image_width")
    if missing:
        raise ModelFolderError(f"{path}: missing keys {missing}")
    meta.setdefault("temperature", None)
    return meta


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


def load_model(model_dir: Path):
    """Load the Keras model of a model folder (imports TensorFlow)."""
    import keras

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFolderError(f"{path}: model file not found")
    return keras.models.load_model(path, compile=False)
