"""Classify images with a model folder: probabilities, top-k, malignancy, OOD flag.

Probabilities are reported in the class order of the model's ``model.json``.
When the metadata has a ``temperature`` T fitted on enough validation images
(``core.serving.calibration.temperature_status``), probabilities are calibrated as
``softmax(log(p) / T)`` (the model folder contract); otherwise they are the
model's own softmax.

The out-of-distribution check is the scorer the model folder was fitted with
(``core.serving.ood.load_scorer``: channel statistics with a "dermatoscopic or not"
head, else pooled-feature distances, else max softmax); its threshold comes
from ``model.json["ood"]``. The flag is a hint, not a guarantee.

Command line::

    lesionlab predict [--model DIR] --out FILE.csv [--tta] PATH...

PATHs are image files, folders (searched recursively) or zip files. One row per
image in the predictions-file format of ``core.contracts.predictions``: ``image_id`` (the
file stem; the path from the first folder that differs when two files share a
stem), ``dx_pred`` (the predicted class), ``ood_flag``, ``ood_score``, then one
calibrated probability per class code, then ``calibration``, ``temperature`` and
``temperature_n`` saying so. Unreadable files are reported on stderr and skipped.
``--out`` may replace only a predictions file written by this command and never a file
inside a model folder, unless ``--force`` is given (``core.contracts.validation.check_output_file``).
"""

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from core.serving import metadata_branch
from core.serving import ood as ood_scorers
from core.contracts import predictions as contract
from core.serving.calibration import calibrate
from core.dataset.images import (
    decode_image, decode_sources, distinct_ids, iter_sources, model_pixels, require_rows, run_image_command,
    to_model_input,
)
from core.contracts.labels import MALIGNANT
from core.serving.folder import ModelFolder
from core.serving.modelio import MODEL_FILE, compiled_forward, is_model_dir
from core.contracts.paths import default_model_dir, runs_dir
from core.contracts import cli_args
from core.contracts.validation import InputError, check_model_folder, check_output_file, positive_int


@dataclass(frozen=True)
class OodResult:
    """The out-of-distribution verdict for one image."""

    score: float  # larger = farther from the training images
    threshold: float
    flagged: bool
    source: str  # "metadata", "validation predictions" or "default"
    method: str  # "feature_statistics", "feature_distance" or "max_softmax"
    text: str = ""  # the scorer's plain-language description of this score


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image."""

    classes: tuple
    probabilities: np.ndarray  # calibrated when the model has a temperature
    raw: np.ndarray  # the model's own softmax (averaged over TTA views)
    calibrated: bool
    ood: OodResult
    # The age, sex and site the probabilities used (only the fields given), and the image-only
    # probabilities they moved; both empty when no metadata was applied.
    metadata: dict = field(default_factory=dict)
    image_only: np.ndarray | None = None

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


def tta_views(batch: np.ndarray) -> np.ndarray:
    """The 8 flips/90° rotations of each square image: ``(N, S, S, 3)`` -> ``(8N, S, S, 3)``.

    A non-square input keeps its frame: its 4 flips (the 180° turn among them),
    ``(N, H, W, 3)`` -> ``(4N, H, W, 3)``. Views are stacked view-major: rows
    ``v*N .. v*N+N-1`` hold view ``v``.
    """
    views = []
    turns = range(4) if tta_count(batch.shape[1:3]) == 8 else range(0, 4, 2)  # a 4:3 frame: no 90° turns
    for flipped in (batch, batch[:, :, ::-1]):
        for k in turns:
            views.append(np.rot90(flipped, k=k, axes=(1, 2)))
    return np.ascontiguousarray(np.concatenate(views, axis=0))


def tta_count(input_size: tuple) -> int:
    """How many views :func:`tta_views` makes of an ``(H, W)`` input: 8 if square, else 4."""
    height, width = input_size
    return 8 if height == width else 4


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
        model_dir: a folder with ``model.keras`` and ``model.json``, or that folder
            already opened (``core.serving.folder.ModelFolder``, shared with evaluation and saliency).
        model: an already loaded Keras model (skips loading; for tests and benches).
    """

    def __init__(self, model_dir, model=None):
        self.folder = ModelFolder.open(model_dir)
        self.model_dir = self.folder.path
        self.meta = self.folder.meta
        self.classes = self.folder.classes
        self.input_size = self.folder.input_size
        self.calibration = self.folder.calibration
        self.temperature = self.calibration["applied"]
        self.model = model if model is not None else self.folder.model
        self.ood = self.folder.ood
        layers = self.ood.layers
        self._forward = compiled_forward(ood_scorers.feature_model(self.model, layers) if layers else self.model)

    def warmup(self) -> None:
        """Trace the model so the first user request does not pay for it.

        Two batch sizes: after a second shape ``tf.function(reduce_retracing=True)``
        traces a graph for any batch size, so TTA views and faithfulness curves do
        not trace again.
        """
        for n in (1, 2):
            self.raw_probabilities(np.zeros((n, *self.input_size, 3), np.float32))

    def raw_probabilities(self, batch: np.ndarray, tta: bool = False, batch_size: int = 32) -> np.ndarray:
        """The model's softmax for a ``(N, H, W, 3)`` float32 batch, averaged over TTA views."""
        return self._run(batch, tta, batch_size)[0]

    def _run(self, batch: np.ndarray, tta: bool = False, batch_size: int = 32) -> tuple:
        """``(probabilities, OOD features)``, both averaged over TTA views."""
        batch = np.asarray(batch, dtype=np.float32)
        n = len(batch)
        inputs = tta_views(batch) if tta else batch
        probs, feats = [], []
        for i in range(0, len(inputs), batch_size):
            out = self._forward(inputs[i : i + batch_size])
            out = out if isinstance(out, tuple) else (out,)
            probs.append(np.asarray(out[0], dtype=np.float64))
            feats.append(self.ood.features(list(out[1:])) if self.ood.layers else np.zeros((len(out[0]), 0)))
        probs, feats = np.concatenate(probs, axis=0), np.concatenate(feats, axis=0)
        if tta:
            probs = probs.reshape(-1, n, probs.shape[-1]).mean(axis=0)
            feats = feats.reshape(len(feats) // n, n, feats.shape[-1]).mean(axis=0)
        return probs, feats

    def predict_batch(self, images, tta: bool = False) -> list:
        """Classify RGB uint8 images of any size; returns one :class:`Prediction` each."""
        batch = np.stack([to_model_input(rgb, self.input_size) for rgb in images])
        raw, feats = self._run(batch, tta=tta)
        probs = calibrate(raw, self.temperature)
        scores = self.ood.score(raw, feats)
        flags = self.ood.flagged(scores)
        return [self._prediction(r, p, float(sc), bool(f)) for r, p, sc, f in zip(raw, probs, scores, flags)]

    def predict(self, rgb: np.ndarray, tta: bool = False, *, metadata: dict | None = None) -> Prediction:
        """Classify one RGB uint8 image of any size.

        ``metadata`` (``age``, ``sex``, ``site``; any may be missing or None) moves the calibrated
        probabilities through the folder's metadata branch. Without a branch, or with no field
        given, the prediction is the image-only one.

        Raises:
            core.serving.metadata_branch.MetadataBranchError: a field value the branch does not know.
        """
        prediction = self.predict_batch([rgb], tta=tta)[0]
        return self.with_metadata(prediction, metadata or {})

    @property
    def metadata_branch(self):
        """The model folder's age/sex/site branch, or None."""
        return self.folder.metadata_branch

    def with_metadata(self, prediction: Prediction, metadata: dict) -> Prediction:
        """``prediction`` moved by ``metadata`` through the branch (itself when there is nothing to apply)."""
        given = {k: v for k, v in metadata.items() if k in metadata_branch.FIELDS and not metadata_branch.absent(v)}
        if not given:
            return prediction  # the branch file is not even read
        branch = self.metadata_branch
        if branch is None:
            return prediction
        return replace(prediction, probabilities=branch.apply(prediction.probabilities, **given), metadata=given,
                       image_only=prediction.probabilities)

    def predict_fn(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated probabilities of model-input batches (for saliency checks)."""
        return self.raw_probabilities(batch)

    @property
    def probabilities_kind(self) -> str:
        """``"calibrated"`` when the model has a temperature, else ``"raw"`` (the file's ``calibration`` column)."""
        return contract.kind(self.temperature)

    def _prediction(self, raw: np.ndarray, probs: np.ndarray, score: float, flagged: bool) -> Prediction:
        ood = OodResult(score, self.ood.threshold, flagged, self.ood.source, self.ood.method, self.ood.describe(score))
        return Prediction(self.classes, probs, raw, self.temperature is not None, ood)


def predict_paths(predictor: Predictor, paths, *, tta: bool = False, batch_size: int = 16, on_skip=None):
    """Classify image files, folders and zips; see :func:`predict_sources` for the table."""
    return predict_sources(predictor, iter_sources(paths), tta=tta, batch_size=batch_size, on_skip=on_skip)


def predict_sources(predictor: Predictor, sources, *, tta: bool = False, batch_size: int = 16, on_skip=None,
                    decode=decode_image):
    """Classify ``(name, bytes)`` pairs (bytes may be an ImageError to report).

    Args:
        predictor: the loaded model.
        sources: iterable of ``(name, bytes | ImageError)``.
        tta: average over flips and 90° rotations.
        batch_size: images decoded and classified at a time.
        on_skip: called with ``(name, message)`` for each unreadable entry.
        decode: bytes -> RGB array; the app passes ``core.dataset.images.decode_upload`` (its pixel limits).

    Returns:
        A predictions table (``core.contracts.predictions``): ``image_id`` (the file stem, made
        distinct by ``core.dataset.images.distinct_ids`` when stems repeat), ``dx_pred``, ``ood_flag``,
        ``ood_score``, then the (calibrated) probability of each class.

    Sources are consumed one at a time and each image is reduced to the model's
    input size right after decoding, so memory stays bounded by one decoded image
    plus ``batch_size`` small inputs, whatever the number and size of the files.
    """
    def reduced(data):
        return model_pixels(decode(data), predictor.input_size)

    names, found = [], []
    for batch in _batches(decode_sources(sources, on_skip, decode=reduced), batch_size):
        found += predictor.predict_batch([rgb for _, rgb in batch], tta=tta)
        names += [name for name, _ in batch]
    return prediction_table(names, found, predictor.classes)


def _batches(items, size: int):
    """Lists of up to ``size`` consecutive items."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prediction_table(names, found: list, classes) -> pd.DataFrame:
    """The predictions table of named :class:`Prediction` objects (``image_id`` = file stem)."""
    probs = np.array([p.probabilities for p in found]).reshape(-1, len(classes))
    return contract.make_table(distinct_ids(names), probs, classes,
                               ood_scores=[p.ood.score for p in found], ood_flags=[p.ood.flagged for p in found])


def _is_predictions_file(path: Path) -> bool:
    """True when ``path`` is a predictions file (it says how its probabilities were made): a file this command or a trainer wrote."""
    return contract.read_info(path)["probabilities"] != "unknown"


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input or when no image was readable)."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("predict"), description=__doc__.split("\n")[0])
    cli_args.add_model_argument(parser)
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")
    parser.add_argument("--tta", action="store_true", help="average over flips and 90° rotations")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--force", action="store_true", help="write --out even over a file this did not write "
                        "or inside a model folder")
    parser.add_argument("paths", nargs="+", type=Path, help="image files, folders or zip files")
    args = parser.parse_args(argv)

    def work(skipped) -> tuple:
        check_output_file(args.out, force=args.force, owned=_is_predictions_file)
        batch_size = positive_int(args.batch_size, "--batch-size")
        predictor = Predictor(check_model_folder(args.model))
        table = predict_paths(predictor, args.paths, tta=args.tta, batch_size=batch_size, on_skip=skipped)
        require_rows(table, skipped)
        _write_predictions(args.out, table, predictor)
        return table, predictor

    def summary(result, skipped: int) -> str:
        table, predictor = result
        return (f"wrote {len(table)} rows to {args.out}; {int(table[contract.OOD_FLAG].sum())} flagged as unlike "
                f"dermatoscopic images; skipped {skipped}. {predictor.calibration['text']}")

    return run_image_command(work, summary)


def _write_predictions(out: Path, table: pd.DataFrame, predictor: Predictor) -> None:
    """Write the command line's predictions file; a file that cannot be written is bad input, said in one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        contract.write(out, table, predictor.probabilities_kind, temperature=predictor.temperature,
                       n=predictor.calibration["n"])
    except OSError as err:
        raise InputError(f"{out.name} cannot be written ({err.strerror or err})") from err


if __name__ == "__main__":
    sys.exit(main())
