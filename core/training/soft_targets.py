"""The soft-targets file: teachers' probabilities on every image of a split file, for distillation.

``lesionlab soft-targets --out FILE --split-file SPLITS --teacher DIR [--teacher DIR ...]``
predicts every image of the split file (train, val and test, so the ensemble can be
scored too) with every teacher model folder, and writes one ``.npz`` file:

================  ================================================================================
``image_id``      (N,) the split file's images, in the dataset's order
``split``         (N,) ``train``, ``val`` or ``test``
``dx``            (N,) the truth
``teachers``      (M,) each teacher's name (its folder's name)
``probs``         (M, N, 4, K) float32: each teacher's probabilities after its own temperature, for
                  each of the 4 flips that keep a 4:3 frame, in :data:`FLIPS` order
``ensemble``      (N, K) float32: the mean over teachers and flips of ``probs``
``meta``          a JSON string: classes, flips, the split file's SHA-256, each teacher's path,
                  architecture, input size, temperature (with its n), model file SHA-256
================  ================================================================================

Each teacher is predicted once and kept in a cache folder beside the file
(``FILE.teachers/<name>.npz``), keyed by its model file's SHA-256, its temperature
and the split, so a teacher that finishes later is added by running the command
again with the longer list; the others are read back. The student trainer reads
the file with :func:`training_targets` (``lesionlab train --soft-targets FILE``).

Images are decoded by ``core.dataset.images`` through the trainer's own cache
(``core.training.pipeline``). Only the prediction functions import TensorFlow.
"""

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.serving import calibration, modelio

from core.contracts import cli_args, paths
from core.contracts import runfolder as rf
from core.contracts.labels import CLASSES
from core.dataset.splits import load_splits, split_hash

FORMAT = 1
# The order of the flip axis of ``probs``; the trainer's light augmentation draws these four.
FLIPS = ("none", "horizontal", "vertical", "both")
CACHE_SUFFIX = ".teachers"


class SoftTargetsError(ValueError):
    """A teacher or a soft-targets file that cannot be used, with the reason."""


@dataclass
class SoftTargets:
    """A soft-targets file, read back."""

    image_id: np.ndarray
    split: np.ndarray
    dx: np.ndarray
    teachers: list
    probs: np.ndarray
    ensemble: np.ndarray
    meta: dict

    def rows(self, image_ids) -> np.ndarray:
        """The file's row of each of ``image_ids``; raises when one is missing."""
        position = pd.Series(np.arange(len(self.image_id)), index=self.image_id)
        missing = pd.Index(image_ids).difference(position.index)
        if len(missing):
            raise SoftTargetsError(f"{len(missing)} images have no soft targets, e.g. {missing[0]}")
        return position.loc[list(image_ids)].to_numpy()


def flip_views(batch: np.ndarray) -> list:
    """The 4 flips of an ``(N, H, W, 3)`` batch that keep its frame, in :data:`FLIPS` order."""
    horizontal = batch[:, :, ::-1]
    return [batch, horizontal, batch[:, ::-1], horizontal[:, ::-1]]


# ---------------------------------------------------------------- the file


def write(path: Path, targets: SoftTargets) -> None:
    """Write a soft-targets file atomically (compressed ``.npz``, no pickled objects)."""
    arrays = {"image_id": targets.image_id.astype(str), "split": targets.split.astype(str),
              "dx": targets.dx.astype(str), "teachers": np.asarray(targets.teachers, dtype=str),
              "probs": targets.probs.astype(np.float32), "ensemble": targets.ensemble.astype(np.float32),
              "meta": np.asarray(json.dumps(targets.meta))}
    rf.write_npz_atomic(path, arrays)


def read(path: Path) -> SoftTargets:
    """A soft-targets file written by :func:`write`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            found = SoftTargets(data["image_id"], data["split"], data["dx"], data["teachers"].tolist(),
                                data["probs"], data["ensemble"], meta)
    except (OSError, ValueError, KeyError) as err:
        raise SoftTargetsError(f"{path}: not a soft-targets file ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT:
        raise SoftTargetsError(f"{path}: soft-targets format {meta.get('format')!r}, expected {FORMAT}")
    return found


def training_targets(path: Path, image_ids, *, split_sha256: str, temperature: float) -> tuple[np.ndarray, dict]:
    """The distillation targets of ``image_ids``: the ensemble's probabilities softened by ``temperature``.

    Returns ``(targets (N, K) float32, a summary for the run's config)``. Refuses a
    file made on another split: its teachers may have trained on this run's
    validation images.
    """
    found = read(path)
    if found.meta["split_sha256"] != split_sha256:
        raise SoftTargetsError(f"{path} was made on split {found.meta['split_sha256'][:12]}, this run's split is "
                               f"{split_sha256[:12]}: the teachers may have seen its validation images")
    targets = calibration.apply_temperature(found.ensemble[found.rows(image_ids)], temperature)
    summary = {"file": str(path), "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
               "teachers": [{k: t[k] for k in ("name", "arch", "temperature")} for t in found.meta["teachers"]]}
    return targets.astype(np.float32), summary


# ---------------------------------------------------------------- predicting the teachers


def split_frame(split_file: Path, data_dir: Path) -> pd.DataFrame:
    """The dataset's images of ``split_file`` with their ``split``, in the trainer's order (same image cache)."""
    from core.dataset.data import load_dataset

    splits = load_splits(split_file)
    frame = load_dataset(data_dir).merge(splits[["image_id", "split"]], on="image_id", how="inner")
    if len(frame) != len(splits):
        raise SoftTargetsError(f"{split_file}: {len(splits) - len(frame)} of its images are not in {data_dir}")
    return frame


def teacher_info(model_dir: Path, split_sha256: str) -> dict:
    """What identifies a teacher's predictions; refuses one trained on another split or without a temperature."""
    meta = modelio.read_metadata(model_dir)
    if list(meta["classes"]) != list(CLASSES):
        raise SoftTargetsError(f"{model_dir}: classes {meta['classes']} differ from {list(CLASSES)}")
    if meta.get("split_sha256") != split_sha256:
        raise SoftTargetsError(f"{model_dir} was trained on split {str(meta.get('split_sha256'))[:12]}, not on "
                               f"{split_sha256[:12]}: its probabilities on validation images would leak")
    if not meta.get("temperature"):
        raise SoftTargetsError(f"{model_dir}: model.json has no temperature (a finished run fits one on val)")
    model_file = Path(model_dir) / rf.MODEL_FILE
    return {"name": Path(model_dir).name, "path": str(model_dir), "arch": meta.get("arch"),
            "input": list(modelio.input_size(meta)), "temperature": float(meta["temperature"]),
            "temperature_n": meta.get("temperature_n"), "split_sha256": split_sha256,
            "model_sha256": hashlib.sha256(model_file.read_bytes()).hexdigest()}


def predict_teacher(model_dir: Path, frame: pd.DataFrame, info: dict, *, batch_size: int = 32,
                    progress=None) -> np.ndarray:
    """A teacher's probabilities after its temperature, ``(N, 4, K)``, on each flip of each image.

    ``progress(name, done, total)`` is called after each batch.
    """
    from core.training.pipeline import load_or_build_cache

    model = modelio.compiled_forward(modelio.load_model(model_dir))
    images = load_or_build_cache(frame["path"].tolist(), tuple(info["input"]), paths.cache_dir())
    out = np.zeros((len(frame), len(FLIPS), len(CLASSES)), np.float32)
    for start in range(0, len(frame), batch_size):
        batch = images[start : start + batch_size].astype(np.float32)
        for f, view in enumerate(flip_views(batch)):
            raw = model(np.ascontiguousarray(view))
            out[start : start + len(batch), f] = calibration.apply_temperature(raw, info["temperature"])
        if progress:
            progress(info["name"], min(start + batch_size, len(frame)), len(frame))
    return out


def cached_teacher(cache_dir: Path, model_dir: Path, frame: pd.DataFrame, *, info: dict, progress=None) -> np.ndarray:
    """:func:`predict_teacher`, read from ``cache_dir`` when the same teacher predicted the same images before."""
    cache = Path(cache_dir) / f"{info['name']}.npz"
    key = json.dumps({**info, "image_id": hashlib.sha256("\n".join(frame["image_id"]).encode()).hexdigest()},
                     sort_keys=True)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if str(data["key"]) == key:
                return data["probs"]
    probs = predict_teacher(model_dir, frame, info, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    rf.write_npz_atomic(cache, {"key": np.asarray(key), "probs": probs})
    return probs


def build(out: Path, teacher_dirs: list, split_file: Path, *, data_dir: Path, progress=None) -> SoftTargets:
    """Predict (or read from the cache) every teacher on every image of ``split_file`` and write ``out``."""
    names = [Path(d).name for d in teacher_dirs]
    if len(set(names)) != len(names):
        raise SoftTargetsError(f"teacher folders need distinct names, got {names}")
    digest = split_hash(split_file)
    infos = [teacher_info(d, digest) for d in teacher_dirs]
    frame = split_frame(split_file, data_dir)
    cache_dir = Path(out).with_name(Path(out).name + CACHE_SUFFIX)
    probs = np.stack([cached_teacher(cache_dir, d, frame, info=info, progress=progress)
                      for d, info in zip(teacher_dirs, infos)])
    meta = {"format": FORMAT, "classes": list(CLASSES), "flips": list(FLIPS), "split_sha256": digest,
            "split_file": str(split_file), "teachers": infos, "created": rf.now_iso(),
            "ensemble": "mean over teachers and flips of each teacher's softmax(log p / T_teacher)"}
    targets = SoftTargets(frame["image_id"].to_numpy(), frame["split"].to_numpy(), frame["dx"].to_numpy(),
                          names, probs, probs.mean(axis=(0, 2)), meta)
    write(out, targets)
    return targets


# ---------------------------------------------------------------- command line


def main(argv=None) -> int:
    """Run ``lesionlab soft-targets``; returns the exit code."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("soft-targets"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the soft-targets file to write (.npz)")
    parser.add_argument("--teacher", type=Path, action="append", required=True,
                        help="a teacher's model or run folder (model.keras + model.json); repeat for each")
    parser.add_argument("--split-file", type=Path, required=True, help="the split CSV every teacher trained on")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $HAM10000_DIR)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow threads per operation (0 = all cores)")
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    def progress(name, done, total):
        if done == total or done % 2048 < 32:
            print(f"{name}: {done}/{total} images x {len(FLIPS)} flips", file=sys.stderr, flush=True)

    try:
        targets = build(args.out, args.teacher, args.split_file, data_dir=args.data_dir or paths.dataset_dir(),
                        progress=progress)
    except (SoftTargetsError, modelio.ModelFolderError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    counts = pd.Series(targets.split).value_counts().to_dict()
    print(f"{args.out}: {len(targets.image_id)} images {counts}, teachers {targets.teachers}, "
          f"split {targets.meta['split_sha256'][:12]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
