"""Classify images with a model folder: probabilities, top-k, malignancy, OOD flag.

Probabilities are reported in the class order of the model's ``model.json``.
When the metadata has a ``temperature`` T, probabilities are calibrated as
``softmax(log(p) / T)`` (the model folder contract); otherwise they are the
model's own softmax.

Out-of-distribution score, in order of preference:

1. **Feature distance** (``core.ood``), when the model folder has ``ood.npz`` and
   ``model.json["ood"]["method"] == "feature_distance"``: how far the image's
   pooled features lie from the training images (Mahalanobis and nearest-
   neighbour distances, each against its 99.5th percentile on validation);
   flagged when the score exceeds 1. It measures whether the image looks like
   the HAM10000 images at all, whatever the classifier says.
2. **Maximum softmax probability** (MSP, Hendrycks & Gimpel, 2017) of the
   uncalibrated model, for folders without feature statistics: it measures
   confidence; an image is flagged when its MSP falls below
   ``model.json["ood"]["threshold"]`` (method ``max_softmax``, written by
   :func:`fit_ood_threshold`), else the 5th percentile over the folder's
   ``predictions_val.csv``, else :data:`DEFAULT_OOD_THRESHOLD` (0.5), a fixed
   guess reported as such.

The flag is a hint, not a guarantee.

Command line::

    python -m core.predict --model DIR --out FILE.csv [--tta] PATH...

PATHs are image files, folders (searched recursively) or zip files. One row per
image: ``image_id`` (the file stem; the path from the first folder that differs
when two files share a stem), ``dx`` (the *predicted* class; in the
evaluation CSVs the same column holds the true label), then one probability column per class code. Unreadable files are reported on stderr
and skipped.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import ood as feature_ood
from core.calibration import apply_temperature
from core.images import ImageError, decode_image, iter_sources, model_pixels, to_model_input
from core.labels import MALIGNANT
from core.modelio import MODEL_FILE, input_size, is_model_dir, load_model, read_metadata
from core.paths import default_model_dir, runs_dir
from core.validation import EXIT_BAD_INPUT, one_line, positive_int

OOD_METHOD = "max_softmax"
OOD_PERCENTILE = 5.0
DEFAULT_OOD_THRESHOLD = 0.5


@dataclass(frozen=True)
class OodResult:
    """The out-of-distribution verdict for one image."""

    score: float
    threshold: float
    flagged: bool
    source: str  # "metadata", "validation predictions" or "default"
    method: str = OOD_METHOD  # "feature_distance" (higher = farther) or "max_softmax" (lower = less sure)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image."""

    classes: tuple
    probabilities: np.ndarray  # calibrated when the model has a temperature
    raw: np.ndarray  # the model's own softmax (averaged over TTA views)
    calibrated: bool
    ood: OodResult

    @property
    def predicted(self) -> str:
        """The class code with the highest probability."""
        return self.classes[int(np.argmax(self.probabilities))]

    @property
    def malignant(self) -> float:
        """Probability of a malignant class (mel + bcc + akiec)."""
        return float(sum(p for c, p in zip(self.classes, self.probabilities) if c in MALIGNANT))

    def top_k(self, k: int = 3) -> list:
        """The ``k`` most probable ``(class, probability)`` pairs, best first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[i], float(self.probabilities[i])) for i in order]

    def as_dict(self) -> dict:
        """``{class: probability}`` in model class order."""
        return {c: float(p) for c, p in zip(self.classes, self.probabilities)}


def calibrate(probs: np.ndarray, temperature) -> np.ndarray:
    """Temperature scaling ``softmax(log(p) / T)``; the probabilities unchanged when T is None."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature is None:
        return probs
    return apply_temperature(np.atleast_2d(probs), float(temperature)).reshape(probs.shape)


def tta_views(batch: np.ndarray) -> np.ndarray:
    """The 8 flips/90° rotations of each square image: ``(N, S, S, 3)`` -> ``(8N, S, S, 3)``.

    A non-square input keeps its frame: its 4 flips (the 180° turn among them),
    ``(N, H, W, 3)`` -> ``(4N, H, W, 3)``. Views are stacked view-major: rows
    ``v*N .. v*N+N-1`` hold view ``v``.
    """
    views = []
    turns = range(4) if batch.shape[1] == batch.shape[2] else range(0, 4, 2)
    for flipped in (batch, batch[:, :, ::-1]):
        for k in turns:
            views.append(np.rot90(flipped, k=k, axes=(1, 2)))
    return np.ascontiguousarray(np.concatenate(views, axis=0))


def fit_ood_threshold(val_probs: np.ndarray, percentile: float = OOD_PERCENTILE) -> dict:
    """The ``model.json["ood"]`` entry from uncalibrated validation probabilities.

    Args:
        val_probs: ``(N, C)`` softmax outputs on the validation images.
        percentile: share (in %) of validation images that would be flagged.

    Returns:
        ``{"method": "max_softmax", "threshold": t, "percentile": p, "fitted_on": "val", "n": N}``.
    """
    msp = np.max(np.asarray(val_probs, dtype=np.float64), axis=1)
    threshold = float(np.percentile(msp, percentile))
    return {"method": OOD_METHOD, "threshold": threshold, "percentile": percentile, "fitted_on": "val", "n": int(len(msp))}


def ood_threshold(model_dir: Path, meta: dict) -> tuple:
    """``(threshold, source)`` for a model folder, following the order in the module docstring."""
    entry = meta.get("ood") or {}
    if entry.get("method") == OOD_METHOD and entry.get("threshold") is not None:
        return float(entry["threshold"]), "metadata"
    val_file = Path(model_dir) / "predictions_val.csv"
    if val_file.is_file():
        try:
            frame = pd.read_csv(val_file)
            probs = frame[list(meta["classes"])].to_numpy(dtype=np.float64)
            if len(probs):
                return fit_ood_threshold(probs)["threshold"], "validation predictions"
        except (KeyError, ValueError, OSError):
            pass
    return DEFAULT_OOD_THRESHOLD, "default"


def available_models() -> list:
    """Model folders to offer: the default model first, then run folders with a model, newest first."""
    found = [default_model_dir()] if is_model_dir(default_model_dir()) else []
    root = runs_dir()
    if root.is_dir():
        runs = [p for p in root.iterdir() if p.is_dir() and is_model_dir(p)]
        found += sorted(runs, key=lambda p: (p / MODEL_FILE).stat().st_mtime, reverse=True)
    return found


class Predictor:
    """A model folder loaded for serving.

    Args:
        model_dir: a folder with ``model.keras`` and ``model.json``.
        model: an already loaded Keras model (skips loading; for tests and benches).
    """

    def __init__(self, model_dir: Path, model=None):
        self.model_dir = Path(model_dir)
        self.meta = read_metadata(self.model_dir)
        self.classes = tuple(self.meta["classes"])
        self.input_size = input_size(self.meta)
        self.temperature = self.meta.get("temperature")
        self.model = model if model is not None else load_model(self.model_dir)
        entry = self.meta.get("ood") or {}
        self.ood_stats = feature_ood.load(self.model_dir) if entry.get("method") == feature_ood.METHOD else None
        if self.ood_stats is not None:
            self.ood_method, self.ood_threshold, self.ood_source = feature_ood.METHOD, 1.0, "metadata"
            self.ood_thresholds = entry["thresholds"]
            self._forward = _compiled_forward(feature_ood.feature_model(self.model))
        else:
            self.ood_method = OOD_METHOD
            self.ood_threshold, self.ood_source = ood_threshold(self.model_dir, self.meta)
            self._forward = _compiled_forward(self.model)

    def warmup(self) -> None:
        """Run one prediction so the first user request does not pay for tracing."""
        self.raw_probabilities(np.zeros((1, *self.input_size, 3), np.float32))

    def raw_probabilities(self, batch: np.ndarray, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """The model's softmax for a ``(N, H, W, 3)`` float32 batch, averaged over TTA views."""
        return self._run(batch, tta, batch_size)[0]

    def _run(self, batch: np.ndarray, tta: bool = False, batch_size: int = 32) -> tuple:
        """``(probabilities, pooled features or None)``, both averaged over TTA views."""
        batch = np.asarray(batch, dtype=np.float32)
        n = len(batch)
        inputs = tta_views(batch) if tta else batch
        outputs = [self._forward(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        if self.ood_stats is None:
            outputs = [(o, None) for o in outputs]
        probs = np.concatenate([np.asarray(o[0], dtype=np.float64) for o in outputs], axis=0)
        feats = None if self.ood_stats is None else np.concatenate([np.asarray(o[1]) for o in outputs], axis=0)
        if tta:
            probs = probs.reshape(-1, n, probs.shape[-1]).mean(axis=0)
            feats = None if feats is None else feats.reshape(-1, n, feats.shape[-1]).mean(axis=0)
        return probs, feats

    def predict_batch(self, images, tta: bool = False) -> list:
        """Classify RGB uint8 images of any size; returns one :class:`Prediction` each."""
        batch = np.stack([to_model_input(rgb, self.input_size) for rgb in images])
        raw, feats = self._run(batch, tta=tta)
        probs = calibrate(raw, self.temperature)
        scores = np.max(raw, axis=1) if feats is None else feature_ood.score(feats, self.ood_stats, self.ood_thresholds)
        return [self._prediction(r, p, float(sc)) for r, p, sc in zip(raw, probs, scores)]

    def predict(self, rgb: np.ndarray, tta: bool = False) -> Prediction:
        """Classify one RGB uint8 image of any size."""
        return self.predict_batch([rgb], tta=tta)[0]

    def predict_fn(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of model-input batches (for saliency checks)."""
        return self.raw_probabilities(batch)

    def _prediction(self, raw: np.ndarray, probs: np.ndarray, score: float) -> Prediction:
        far = score > self.ood_threshold if self.ood_method == feature_ood.METHOD else score < self.ood_threshold
        ood = OodResult(score, self.ood_threshold, bool(far), self.ood_source, self.ood_method)
        return Prediction(self.classes, probs, raw, self.temperature is not None, ood)


def _compiled_forward(model):
    """A traced inference function: much faster per call than ``model.predict``."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    def run(x):
        out = forward(tf.convert_to_tensor(x, dtype=tf.float32))
        return tuple(o.numpy() for o in out) if isinstance(out, (list, tuple)) else out.numpy()

    return run


def predict_paths(predictor: Predictor, paths, tta: bool = False, batch_size: int = 16, on_skip=None):
    """Classify image files, folders and zips; see :func:`predict_sources` for the table."""
    return predict_sources(predictor, iter_sources(paths), tta=tta, batch_size=batch_size, on_skip=on_skip)


def predict_sources(predictor: Predictor, sources, tta: bool = False, batch_size: int = 16, on_skip=None,
                    decode=decode_image):
    """Classify ``(name, bytes)`` pairs (bytes may be an ImageError to report).

    Args:
        predictor: the loaded model.
        sources: iterable of ``(name, bytes | ImageError)``.
        tta: average over flips and 90° rotations.
        batch_size: images decoded and classified at a time.
        on_skip: called with ``(name, message)`` for each unreadable entry.
        decode: bytes -> RGB array; the app passes ``core.images.decode_upload`` (its pixel limits).

    Returns:
        A DataFrame ``image_id, dx (predicted), <one column per class>``; ``image_id`` is
        the file stem, made distinct by :func:`distinct_ids` when stems repeat.

    Sources are consumed one at a time and each image is reduced to the model's
    input size right after decoding, so memory stays bounded by one decoded image
    plus ``batch_size`` small inputs, whatever the number and size of the files.
    """
    rows, pending, names = [], [], []
    for name, data in sources:
        try:
            if isinstance(data, ImageError):
                raise data
            pending.append((name, model_pixels(decode(data), predictor.input_size)))
        except ImageError as err:
            if on_skip:
                on_skip(name, str(err))
        if len(pending) >= batch_size:
            rows += _rows(predictor, pending, tta)
            names += [n for n, _ in pending]
            pending = []
    rows += _rows(predictor, pending, tta) if pending else []
    names += [n for n, _ in pending]
    table = pd.DataFrame(rows, columns=["image_id", "dx", *predictor.classes])
    table["image_id"] = distinct_ids(names)
    return table


def distinct_ids(names) -> list:
    """Image ids from source names: the file stem, or, for stems that repeat, the
    path below the deepest folder the repeating names share (suffix dropped).

    ``["a/x.jpg", "b/x.jpg", "c/y.png"]`` gives ``["a/x", "b/x", "y"]``; names
    inside zips (``archive.zip!dir/x.jpg``) count ``!`` as a folder separator.
    """
    parts = [tuple(p for p in Path(str(n).replace("!", "/")).with_suffix("").parts if p.strip("/\\"))
             for n in names]
    stems = [p[-1] if p else "" for p in parts]
    counts = pd.Series(stems, dtype=object).value_counts()
    ids = []
    for stem, path in zip(stems, parts):
        if counts.get(stem, 0) < 2:
            ids.append(stem)
            continue
        group = [p for s, p in zip(stems, parts) if s == stem]
        shared = len(_common_prefix(group))
        ids.append("/".join(path[min(shared, len(path) - 1):]))
    seen: dict = {}
    for k, image_id in enumerate(ids):  # the same name given twice: number the repeats
        seen[image_id] = seen.get(image_id, 0) + 1
        ids[k] = image_id if seen[image_id] == 1 else f"{image_id}#{seen[image_id]}"
    return ids


def _common_prefix(paths: list) -> tuple:
    prefix = paths[0]
    for path in paths[1:]:
        k = 0
        while k < min(len(prefix), len(path)) and prefix[k] == path[k]:
            k += 1
        prefix = prefix[:k]
    return prefix


def _rows(predictor: Predictor, named_images: list, tta: bool) -> list:
    predictions = predictor.predict_batch([rgb for _, rgb in named_images], tta=tta)
    return [
        {"image_id": Path(name.split("!")[-1]).stem, "dx": p.predicted, **p.as_dict()}
        for (name, _), p in zip(named_images, predictions)
    ]


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input or when no image was readable)."""
    parser = argparse.ArgumentParser(prog="python -m core.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder (model.keras + model.json)")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    parser.add_argument("--tta", action="store_true", help="average over flips and 90° rotations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("paths", nargs="+", type=Path, help="image files, folders or zip files")
    args = parser.parse_args(argv)
    skipped = []

    def report(name, message):
        skipped.append(name)
        print(f"skipped {name}: {message}", file=sys.stderr)

    try:
        batch_size = positive_int(args.batch_size, "--batch-size")
        predictor = Predictor(args.model)
        table = predict_paths(predictor, args.paths, tta=args.tta, batch_size=batch_size, on_skip=report)
    except (ValueError, OSError) as err:  # ModelFolderError, InputError, ImageError are ValueErrors
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if table.empty:
        print(f"error: no readable image among the paths given (skipped {len(skipped)})", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    calibrated = "calibrated" if predictor.temperature is not None else "uncalibrated"
    print(f"wrote {len(table)} rows ({calibrated} probabilities) to {args.out}; skipped {len(skipped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
