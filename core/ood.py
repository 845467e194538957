"""Out-of-distribution score: how far an image lies from HAM10000 in the model's feature space.

Two distances on the pooled features (``head_pool``, the classifier's input),
each compared with its own threshold:

* **Mahalanobis distance** to the training images, with the Ledoit-Wolf
  shrunk covariance of their features: catches images whose features are
  unusual as a whole (photographs, noise).
* **Cosine distance to the 10th nearest training image** (a bank of up to
  3,000 training features): catches images unlike any single training image,
  even near the mean (flat colours, patterns).

Each threshold is the 99th percentile of that distance over the validation
split, so 1-2 % of in-distribution validation images are flagged in all
(``model.json["ood"]["val_flagged"]`` says how many).
The reported score is the larger of the two distance/threshold ratios: above 1
means out of distribution. Statistics are saved beside the model as
``ood.npz``; ``model.json["ood"]`` records the method, thresholds, percentile
and n. ``bench/bench_ood.py`` measures the flag rates by kind of image.
"""

from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
METHOD = "feature_distance"
FEATURE_LAYER = "head_pool"
PERCENTILE = 99.0
NEIGHBOUR = 10
BANK_SIZE = 3000


def fit(train_features: np.ndarray, bank_size: int = BANK_SIZE, seed: int = 0) -> dict:
    """Shrunk-covariance statistics and a neighbour bank of the training features."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, dtype=np.float64)
    shrunk = LedoitWolf().fit(x)
    pick = np.random.default_rng(seed).permutation(len(x))[:bank_size]
    bank = x[pick] / np.linalg.norm(x[pick], axis=1, keepdims=True).clip(1e-12)
    return {"mean": shrunk.location_, "precision": shrunk.precision_, "bank": bank}


def distances(features: np.ndarray, stats: dict) -> dict:
    """Both distances of each row of ``features``: ``{"mahalanobis": ..., "knn": ...}``."""
    f = np.asarray(features, dtype=np.float64)
    centred = f - stats["mean"]
    mahalanobis = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, stats["precision"], centred), 0))
    unit = f / np.linalg.norm(f, axis=1, keepdims=True).clip(1e-12)
    k = min(NEIGHBOUR, len(stats["bank"]))
    knn = 1.0 - np.sort(unit @ stats["bank"].T, axis=1)[:, -k]
    return {"mahalanobis": mahalanobis, "knn": knn}


def score(features: np.ndarray, stats: dict, thresholds: dict) -> np.ndarray:
    """The larger distance/threshold ratio of each row: above 1 is out of distribution."""
    d = distances(features, stats)
    return np.maximum(d["mahalanobis"] / thresholds["mahalanobis"], d["knn"] / thresholds["knn"])


def threshold_entry(stats: dict, val_features: np.ndarray, percentile: float = PERCENTILE) -> dict:
    """The ``model.json["ood"]`` entry: each distance's ``percentile`` over validation images."""
    d = distances(val_features, stats)
    thresholds = {k: float(np.percentile(v, percentile)) for k, v in d.items()}
    flagged = float(np.mean(score(val_features, stats, thresholds) > 1))
    return {"method": METHOD, "layer": FEATURE_LAYER, "thresholds": thresholds, "threshold": 1.0,
            "percentile": percentile, "fitted_on": "val", "n": int(len(val_features)),
            "val_flagged": flagged, "neighbour": NEIGHBOUR, "bank": int(len(stats["bank"]))}


def save(model_dir: Path, stats: dict) -> None:
    """Write ``ood.npz``: the symmetric precision matrix as its upper triangle, the bank in float16."""
    upper = stats["precision"][np.triu_indices(len(stats["mean"]))]
    np.savez(Path(model_dir) / OOD_FILE, mean=stats["mean"].astype(np.float32),
             precision_upper=upper.astype(np.float32), bank=stats["bank"].astype(np.float16))


def load(model_dir: Path) -> dict | None:
    """The saved statistics of a model folder, or None when it has none."""
    path = Path(model_dir) / OOD_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        mean, upper, bank = (data[k].astype(np.float64) for k in ("mean", "precision_upper", "bank"))
    precision = np.zeros((len(mean), len(mean)))
    precision[np.triu_indices(len(mean))] = upper
    precision = precision + np.triu(precision, 1).T
    return {"mean": mean, "precision": precision, "bank": bank}


def feature_model(model):
    """A model returning (probabilities, pooled features) in one pass."""
    import keras

    return keras.Model(inputs=model.inputs, outputs=[model.outputs[0], model.get_layer(FEATURE_LAYER).output])


def fit_for_model(model_dir: Path, model, train_images, val_images, batch_size: int = 128) -> dict:
    """Fit and save the feature statistics of a model; returns the ``model.json["ood"]`` entry.

    Args:
        model_dir: where ``ood.npz`` goes.
        model: the model (needs a ``head_pool`` layer).
        train_images, val_images: float32-convertible image batches at the model's input size.
    """
    both = feature_model(model)

    def features(images):
        out = [both.predict_on_batch(np.asarray(images[i : i + batch_size], dtype=np.float32))[1]
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    stats = fit(features(train_images))
    save(model_dir, stats)
    return threshold_entry(stats, features(val_images))
