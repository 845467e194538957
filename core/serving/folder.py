"""A classifier's model folder opened once: metadata, Keras model, calibration and OOD scorer together.

:class:`ModelFolder` is what prediction, evaluation and saliency share, so one
folder's model is loaded once per process. The file-level contract it reads
(``model.json``, ``model.keras``) is :mod:`core.serving.modelio`.
"""

from functools import cached_property
from pathlib import Path

from core.serving import metadata_branch
from core.serving.calibration import temperature_status
from core.serving.modelio import input_size, load_model, read_metadata
from core.serving.ood import load_scorer


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
        """``core.serving.calibration.temperature_status``: the stored temperature and whether it is applied."""
        return temperature_status(self.meta, self.path)

    @property
    def temperature(self) -> float | None:
        """The temperature applied to probabilities, or None when they stay the model's own softmax."""
        return self.calibration["applied"]

    @cached_property
    def ood(self):
        """The folder's out-of-distribution scorer (``core.serving.ood.load_scorer``)."""
        return load_scorer(self.path, self.meta)

    @cached_property
    def metadata_branch(self):
        """The folder's optional age/sex/site branch (``core.serving.metadata_branch``), or None."""
        return metadata_branch.read(self.path, self.classes)
