"""Out-of-distribution score: how far an image lies from HAM10000 in the model's feature space.

The score is the Mahalanobis distance of an image's pooled features (the
``head_pool`` layer, the input of the classifier) to the training images, taken
in the top principal components of the training features. Images the model has
never seen anything like (a photo of a building, a screenshot, a blank frame)
land far from every dermoscopic image even when the classifier happens to be
confident, which the maximum softmax probability cannot tell.

The threshold is the 99th percentile of the score over the validation split:
by construction 1 % of in-distribution validation images are flagged, and the
model card reports how many out-of-distribution images are. The statistics are
saved beside the model as ``ood.npz``; ``model.json["ood"]`` records the method,
threshold, percentile and n.
"""

from pathlib import Path

import numpy as np

OOD_FILE = "ood.npz"
METHOD = "feature_mahalanobis"
FEATURE_LAYER = "head_pool"
COMPONENTS = 32
PERCENTILE = 99.0


def fit(train_features: np.ndarray, components: int = COMPONENTS) -> dict:
    """Mean, principal axes and per-axis variance of the training features."""
    x = np.asarray(train_features, dtype=np.float64)
    mean = x.mean(axis=0)
    _, singular, axes = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components, len(singular))
    variance = singular[:k] ** 2 / max(1, len(x) - 1)
    return {"mean": mean, "axes": axes[:k], "variance": np.maximum(variance, 1e-12)}


def distance(features: np.ndarray, stats: dict) -> np.ndarray:
    """Mahalanobis distance of each row of ``features`` in the principal subspace."""
    projected = (np.asarray(features, dtype=np.float64) - stats["mean"]) @ stats["axes"].T
    return np.sqrt(np.sum(projected**2 / stats["variance"], axis=1))


def threshold_entry(stats: dict, val_features: np.ndarray, percentile: float = PERCENTILE) -> dict:
    """The ``model.json["ood"]`` entry: the score that ``percentile`` % of validation images stay below."""
    scores = distance(val_features, stats)
    return {"method": METHOD, "layer": FEATURE_LAYER, "threshold": float(np.percentile(scores, percentile)),
            "percentile": percentile, "fitted_on": "val", "n": int(len(scores)), "components": int(len(stats["axes"]))}


def save(model_dir: Path, stats: dict) -> None:
    np.savez(Path(model_dir) / OOD_FILE, **{k: v.astype(np.float32) for k, v in stats.items()})


def load(model_dir: Path) -> dict | None:
    """The saved statistics of a model folder, or None when it has none."""
    path = Path(model_dir) / OOD_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k].astype(np.float64) for k in ("mean", "axes", "variance")}


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
