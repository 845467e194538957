"""Out-of-distribution scorers: does an image look like the dermatoscopic images a model learnt from?

Every scorer has one interface (:class:`OodScorer`):

* ``layers``: the model layers whose outputs it reads (none for max-softmax);
* ``features(outputs)``: one feature row per image from those outputs;
* ``score(raw_probs, features)``: one number per image, larger = farther from HAM10000;
* ``flagged(scores)``: ``score > threshold``, the threshold read from ``model.json["ood"]``;
* ``describe(score)``: one plain sentence saying what the score measures and where it stands.

:func:`load_scorer` picks the scorer a model folder was fitted with
(``model.json["ood"]["method"]``):

``feature_statistics`` (:class:`FeatureStatistics`, fitted by ``lesionlab ood fit``)
    The mean and standard deviation of every channel of the last layer at each
    resolution of the network (the normalised pixels, then each stage up to the
    last convolution), scored two ways: a logistic "dermatoscopic or not" head
    trained on HAM10000 training images against generated negatives
    (``core.serving.ood_negatives``), and a Mahalanobis distance in the principal
    subspace of the training images' statistics plus the residual off it.
    Each part is divided by its threshold; the score is the larger ratio.
``feature_distance`` (:class:`FeatureDistance`)
    The first score: Mahalanobis and 10th-nearest-neighbour cosine distance of
    the pooled features (``head_pool``). Kept so folders fitted with it still load.
``max_softmax`` (:class:`MaxSoftmax`)
    For folders without feature statistics: low confidence is the flag (the
    score is ``1 - max softmax``, so larger is farther here too).

The fit itself lives in ``core.serving.ood_fit``; ``bench/bench_ood.py`` measures flag rates.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.contracts.runfolder import OOD_FILE, write_npz_atomic
STATISTICS = "feature_statistics"
DISTANCE = "feature_distance"
MAX_SOFTMAX = "max_softmax"
METHOD = DISTANCE  # the method of folders fitted before feature statistics existed
FEATURE_LAYER = "head_pool"
NEIGHBOUR = 10
MSP_PERCENTILE = 5.0
DEFAULT_MSP_THRESHOLD = 0.5  # a guess, reported as such, for folders with nothing fitted


class OodScorer:
    """The interface every out-of-distribution scorer implements (see the module docstring)."""

    method = "none"
    layers: tuple = ()
    threshold = 1.0
    source = "metadata"

    def features(self, outputs: list) -> np.ndarray:
        """One feature row per image from the outputs of ``layers``."""
        return np.zeros((len(outputs[0]) if outputs else 0, 0), np.float32)

    def score(self, raw_probs: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Per-image score, larger = farther from the training images."""
        raise NotImplementedError

    def flagged(self, scores) -> np.ndarray:
        """True where a score is beyond the threshold of ``model.json``."""
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def describe(self, score: float) -> str:
        """A sentence for a user: what the score measures and how far this one is."""
        raise NotImplementedError


class MaxSoftmax(OodScorer):
    """Confidence as the flag: the score is ``1 - max softmax`` of the uncalibrated model."""

    method = MAX_SOFTMAX

    def __init__(self, msp_threshold: float, source: str):
        self.msp_threshold, self.source = float(msp_threshold), source
        self.threshold = 1.0 - self.msp_threshold

    def score(self, raw_probs, features=None) -> np.ndarray:
        return 1.0 - np.max(np.asarray(raw_probs, dtype=np.float64), axis=1)

    def describe(self, score: float) -> str:
        where = {"metadata": "fitted on HAM10000 validation images (model.json)",
                 "validation predictions": "5th percentile of the validation images (predictions_val.csv)",
                 "default": "a default guess: this model has no fitted out-of-distribution check"}[self.source]
        return (f"Confidence check only: the model's top probability is {1 - score:.2f}, "
                f"the threshold {self.msp_threshold:.2f} ({where}).")


class FeatureDistance(OodScorer):
    """Mahalanobis and nearest-neighbour distances of the pooled features (the first fitted score)."""

    method = DISTANCE
    layers = (FEATURE_LAYER,)

    def __init__(self, stats: dict, entry: dict):
        self.stats, self.thresholds = stats, entry["thresholds"]
        self.threshold = float(entry.get("threshold", 1.0))

    def features(self, outputs: list) -> np.ndarray:
        return np.asarray(outputs[0], dtype=np.float64)

    def score(self, raw_probs, features) -> np.ndarray:
        d = distances(features, self.stats)
        return np.maximum(d["mahalanobis"] / self.thresholds["mahalanobis"], d["knn"] / self.thresholds["knn"])

    def describe(self, score: float) -> str:
        return (f"Distance to the training images in the model's feature space: {score:.2f} × the threshold "
                "(about 99 % of HAM10000 validation images stay below 1).")


def distances(features: np.ndarray, stats: dict) -> dict:
    """Mahalanobis and k-NN cosine distances of each row: ``{"mahalanobis": ..., "knn": ...}``."""
    f = np.asarray(features, dtype=np.float64)
    centred = f - stats["mean"]
    mahalanobis = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, stats["precision"], centred), 0))
    unit = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    k = min(NEIGHBOUR, len(stats["bank"]))
    knn = 1.0 - np.sort(unit @ stats["bank"].T, axis=1)[:, -k]
    return {"mahalanobis": mahalanobis, "knn": knn}


def channel_statistics(outputs: list) -> np.ndarray:
    """Mean and standard deviation of every channel of each ``(N, H, W, C)`` output, side by side."""
    parts = []
    for out in outputs:
        x = np.asarray(out, dtype=np.float64)
        x = x.reshape(len(x), -1, x.shape[-1])
        parts += [x.mean(axis=1), x.std(axis=1)]
    return np.concatenate(parts, axis=1)


@dataclass
class StatisticsModel:
    """The fitted parts of :class:`FeatureStatistics` (saved as ``ood.npz``)."""

    centre: np.ndarray  # per-feature mean of the training statistics
    scale: np.ndarray  # per-feature standard deviation
    coef: np.ndarray  # logistic head on standardised features: P(not dermatoscopic)
    intercept: float
    components: np.ndarray  # (K, D) principal axes of the standardised training statistics
    variances: np.ndarray  # (K,) variance along each axis
    residual_variance: float  # mean variance per dimension off the principal subspace

    def standardise(self, features) -> np.ndarray:
        """Features centred and scaled as in training."""
        return (np.asarray(features, dtype=np.float64) - self.centre) / self.scale

    def head(self, features) -> np.ndarray:
        """P(not dermatoscopic) from the logistic head."""
        z = self.standardise(features) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def distance(self, features) -> np.ndarray:
        """Probabilistic-PCA Mahalanobis distance, per dimension, to the training statistics."""
        x = self.standardise(features)
        inside = x @ self.components.T
        residual = np.sum((x - inside @ self.components) ** 2, axis=1)
        squared = np.sum(inside**2 / self.variances, axis=1) + residual / self.residual_variance
        return np.sqrt(squared / x.shape[1])


class FeatureStatistics(OodScorer):
    """Channel statistics of several layers, scored by a "dermatoscopic or not" head and a distance."""

    method = STATISTICS

    def __init__(self, fitted: StatisticsModel, entry: dict):
        self.fitted, self.layers = fitted, tuple(entry["layers"])
        self.thresholds = entry["thresholds"]
        self.threshold = float(entry["threshold"])

    def features(self, outputs: list) -> np.ndarray:
        return channel_statistics(outputs)

    def parts(self, features) -> dict:
        """Each part divided by its threshold: ``{"head": ..., "distance": ...}``."""
        return {"head": self.fitted.head(features) / self.thresholds["head"],
                "distance": self.fitted.distance(features) / self.thresholds["distance"]}

    def score(self, raw_probs, features) -> np.ndarray:
        parts = self.parts(features)
        return np.maximum(parts["head"], parts["distance"])

    def describe(self, score: float) -> str:
        return (f"Dermatoscopy check: {score:.2f} × the threshold, from the colour and texture statistics the "
                "network sees at every scale; 1 or more means unlike the HAM10000 images it learnt from.")


def save_statistics(model_dir: Path, fitted: StatisticsModel) -> None:
    """Write ``ood.npz`` (float32), atomically."""
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in vars(fitted).items()}
    write_npz_atomic(Path(model_dir) / OOD_FILE, arrays, compressed=False)


def _saved_arrays(model_dir: Path) -> dict | None:
    """Every array of a folder's ``ood.npz`` as float64, or None when it has none."""
    path = Path(model_dir) / OOD_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k].astype(np.float64) for k in data.files}


def load_statistics(model_dir: Path) -> StatisticsModel | None:
    """The saved :class:`StatisticsModel` of a folder, or None when it has none."""
    values = _saved_arrays(model_dir)
    if values is None:
        return None
    values["intercept"] = float(values["intercept"])
    values["residual_variance"] = float(values["residual_variance"])
    return StatisticsModel(**values)


def load(model_dir: Path) -> dict | None:
    """The saved statistics of a ``feature_distance`` folder, or None when it has none."""
    values = _saved_arrays(model_dir)
    if values is None or "precision_upper" not in values:
        return None
    mean, upper, bank = (values[k] for k in ("mean", "precision_upper", "bank"))
    precision = np.zeros((len(mean), len(mean)))
    precision[np.triu_indices(len(mean))] = upper
    precision = precision + np.triu(precision, 1).T
    return {"mean": mean, "precision": precision, "bank": bank}


def fit_msp_threshold(val_probs: np.ndarray, percentile: float = MSP_PERCENTILE) -> dict:
    """The ``model.json["ood"]`` entry of :class:`MaxSoftmax` from uncalibrated validation probabilities."""
    msp = np.max(np.asarray(val_probs, dtype=np.float64), axis=1)
    threshold = float(np.percentile(msp, percentile))
    return {"method": MAX_SOFTMAX, "threshold": threshold, "percentile": percentile, "fitted_on": "val",
            "n": int(len(msp))}


def _msp_from_validation(model_dir: Path, classes) -> float | None:
    """The 5th-percentile max softmax of a folder's validation predictions, or None."""
    from core.contracts import predictions
    path = Path(model_dir) / predictions.FILES["val"]
    if not path.is_file():
        return None
    try:
        probs = predictions.read(path, classes, truth=False)[list(classes)].to_numpy(dtype=np.float64)
    except (ValueError, OSError):
        return None
    return fit_msp_threshold(probs)["threshold"] if len(probs) else None


def load_scorer(model_dir: Path, meta: dict) -> OodScorer:
    """The scorer a model folder was fitted with, else max-softmax with the best threshold available."""
    entry = meta.get("ood") or {}
    if entry.get("method") == STATISTICS:
        fitted = load_statistics(model_dir)
        if fitted is not None:
            return FeatureStatistics(fitted, entry)
    if entry.get("method") == DISTANCE:
        stats = load(model_dir)
        if stats is not None:
            return FeatureDistance(stats, entry)
    if entry.get("method") == MAX_SOFTMAX and entry.get("threshold") is not None:
        return MaxSoftmax(entry["threshold"], "metadata")
    from_val = _msp_from_validation(model_dir, meta["classes"])
    if from_val is not None:
        return MaxSoftmax(from_val, "validation predictions")
    return MaxSoftmax(DEFAULT_MSP_THRESHOLD, "default")


def feature_model(model, layers=(FEATURE_LAYER,)):
    """A model returning ``[probabilities, *layer outputs]`` in one pass."""
    import keras

    outputs = [model.outputs[0], *(model.get_layer(name).output for name in layers)]
    return keras.Model(inputs=model.inputs, outputs=outputs)
