"""The restricted reader of legacy torch checkpoints: reads tensors, refuses code."""

import pickle

import numpy as np
import pytest

from core.training.torch_weights import LEGACY_MAGIC, CheckpointError, read_legacy_checkpoint


def _write_legacy(path, tensors: dict, storage_global=("torch", "FloatStorage")):
    """Write a legacy-format checkpoint the way torch's old serializer lays it out."""
    import io

    def global_bytes(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    body = io.BytesIO()
    body.write(pickle.dumps(LEGACY_MAGIC, protocol=2))
    body.write(pickle.dumps(1001, protocol=2))
    body.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
    # hand-assembled protocol-2 pickle of OrderedDict(name -> _rebuild_tensor_v2(storage, ...))
    out = b"\x80\x02" + global_bytes("collections", "OrderedDict") + b")R"
    for key, (name, array) in enumerate(tensors.items()):
        pid = b"(X\x07\x00\x00\x00storage" + global_bytes(*storage_global)
        pid += pickle.dumps(str(key), protocol=2)[2:-1] + b"X\x03\x00\x00\x00cpu" + pickle.dumps(array.size, protocol=2)[2:-1] + b"Nt"
        args = b"(" + pid + b"Q" + b"K\x00" + pickle.dumps(tuple(array.shape), protocol=2)[2:-1]
        stride = tuple(int(s // array.itemsize) for s in array.strides)
        args += pickle.dumps(stride, protocol=2)[2:-1] + b"\x89" + global_bytes("collections", "OrderedDict") + b")Rt"
        out += pickle.dumps(name, protocol=2)[2:-1] + global_bytes("torch._utils", "_rebuild_tensor_v2") + args + b"Rs"
    body.write(out + b".")
    body.write(pickle.dumps([str(k) for k in range(len(tensors))], protocol=2))
    for array in tensors.values():
        body.write(np.int64(array.size).tobytes() + array.astype("<f4").tobytes())
    path.write_bytes(body.getvalue())


def test_reads_tensors_with_their_shapes(tmp_path):
    tensors = {"a.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "a.bias": np.array([1.5, -2.0], np.float32)}
    _write_legacy(tmp_path / "ok.pth", tensors)
    state = read_legacy_checkpoint(tmp_path / "ok.pth")
    assert list(state) == ["a.weight", "a.bias"]
    for name, array in tensors.items():
        assert np.array_equal(state[name], array)


def test_refuses_any_other_class(tmp_path):
    _write_legacy(tmp_path / "evil.pth", {"w": np.zeros(2, np.float32)}, storage_global=("os", "system"))
    with pytest.raises(CheckpointError, match="os.system"):
        read_legacy_checkpoint(tmp_path / "evil.pth")


def test_refuses_a_file_that_is_not_a_legacy_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(pickle.dumps(123) * 3)
    with pytest.raises(CheckpointError, match="not a legacy"):
        read_legacy_checkpoint(tmp_path / "x.pth")
