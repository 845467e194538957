"""Fit the ``feature_statistics`` out-of-distribution scorer of a model (see ``core.serving.ood``).

The trainer calls :func:`fit_for_model` when a run ends; an existing model
folder is fitted with::

    lesionlab ood fit [--model DIR] [--data-dir DIR] [--splits CSV] [--max-train 3000] [--seed 0]

which reads the dataset and the folder's ``splits.csv`` (the split the model was
trained on; its SHA-256 must match ``model.json["split_sha256"]``), writes
``ood.npz`` and records the entry in ``model.json["ood"]``.

What is fitted, on what:

* positives: up to ``max_train`` training images (seeded sample; :data:`MAX_TRAIN` unless asked);
* negatives: :func:`core.serving.ood_negatives.negatives` (crops and variants of
  ``china.jpg`` and synthetic textures; never test images, never ``flower.jpg``);
* thresholds: the :data:`PERCENTILE` th percentile of each part over *all*
  validation images; the head's threshold is never below :data:`HEAD_FLOOR`
  (an image the head finds more likely not dermatoscopic is always flagged).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from core.contracts import cli_args
from core.contracts.validation import InputError, check_model_folder
from core.serving import ood
from core.dataset.images import read_model_pixels, to_model_input
from core.serving.modelio import input_size, load_model, read_metadata, write_metadata
from core.serving.ood_negatives import FIT_PHOTOS, negatives

PERCENTILE = 99.5
HEAD_FLOOR = 0.5
MAX_TRAIN = 3000  # training images sampled as positives, by the trainer and by `lesionlab ood fit` alike
N_NEGATIVES = 1600
COMPONENTS = 64
HEAD_C = 0.05  # L2 strength of the logistic head: strong, so it leans on broad differences


def statistic_layers(model) -> list:
    """The last layer at each spatial resolution of a flat model, input side first.

    Padding layers are skipped (their odd sizes are not a stage of the network).
    """
    last, order = {}, []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is None or len(shape) != 4 or type(layer).__name__ in ("InputLayer", "ZeroPadding2D"):
            continue
        key = (shape[1], shape[2])
        if key not in last:
            order.append(key)
        last[key] = layer.name
    return [last[key] for key in order]


def extract(model, layers, images, *, batch_size: int = 64) -> tuple:
    """``(raw probabilities, channel statistics)`` of uint8/float images already at the model's input size."""
    both = ood.feature_model(model, layers)
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        out = both.predict_on_batch(batch)
        probs.append(np.asarray(out[0]))
        feats.append(ood.channel_statistics(out[1:]))
    return np.concatenate(probs), np.concatenate(feats)


def fit_statistics(train: np.ndarray, negative: np.ndarray, seed: int = 0) -> ood.StatisticsModel:
    """The standardisation, the logistic head and the principal subspace of the training statistics."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    centre, std = train.mean(axis=0), train.std(axis=0)
    scale = np.maximum(std, 1e-2 * max(float(np.median(std)), 1e-12))
    z_train, z_neg = (train - centre) / scale, (negative - centre) / scale
    x = np.concatenate([z_train, z_neg])
    y = np.r_[np.zeros(len(z_train)), np.ones(len(z_neg))]
    head = LogisticRegression(C=HEAD_C, class_weight="balanced", max_iter=5000, random_state=seed).fit(x, y)
    k = int(min(COMPONENTS, len(z_train) - 1, z_train.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=seed).fit(z_train)
    total = float(np.sum(z_train.var(axis=0)))
    rest = max(z_train.shape[1] - k, 1)
    residual = max((total - float(pca.explained_variance_.sum())) / rest, 1e-6)
    return ood.StatisticsModel(centre=centre, scale=scale, coef=head.coef_[0], intercept=float(head.intercept_[0]),
                               components=pca.components_, variances=np.maximum(pca.explained_variance_, 1e-6),
                               residual_variance=residual)


def threshold_entry(fitted: ood.StatisticsModel, layers, val: np.ndarray, *, n_train: int, n_negative: int) -> dict:
    """The ``model.json["ood"]`` entry: thresholds from the validation statistics, and what was used."""
    head = max(float(np.percentile(fitted.head(val), PERCENTILE)), HEAD_FLOOR)
    distance = float(np.percentile(fitted.distance(val), PERCENTILE))
    entry = {"method": ood.STATISTICS, "layers": list(layers), "threshold": 1.0,
             "thresholds": {"head": head, "distance": distance}, "percentile": PERCENTILE, "head_floor": HEAD_FLOOR,
             "fitted_on": "val", "n": int(len(val)), "n_train": int(n_train), "n_negatives": int(n_negative),
             "negative_photos": list(FIT_PHOTOS)}
    scorer = ood.FeatureStatistics(fitted, entry)
    entry["val_flagged"] = float(np.mean(scorer.flagged(scorer.score(None, val))))
    return entry


def negative_inputs(size, n: int, seed: int) -> np.ndarray:
    """The generated negatives at the model's input size, decoded as uploads are."""
    return np.stack([to_model_input(rgb, size) for rgb in negatives(n, seed=seed)])


FIT_STEPS = 4  # the steps of fit_for_model that its progress callback counts


def fit_for_model(model_dir: Path, model, *, train_images, val_images, seed: int = 0,
                  n_negatives: int = N_NEGATIVES, progress=None) -> dict:
    """Fit, save ``ood.npz`` into ``model_dir`` and return the ``model.json["ood"]`` entry.

    Args:
        model_dir: where ``ood.npz`` goes.
        model: the Keras model (a flat functional graph).
        train_images, val_images: image batches at the model's input size (uint8 or float 0..255).
        seed: seeds the negatives, the head and the subspace.
        n_negatives: how many generated negatives to fit the head with.
        progress: called with the number of steps done (of :data:`FIT_STEPS`) after each.
    """
    report = progress or (lambda done: None)
    layers = statistic_layers(model)
    size = tuple(int(s) for s in model.inputs[0].shape[1:3])
    _, train = extract(model, layers, train_images)
    report(1)
    _, val = extract(model, layers, val_images)
    report(2)
    _, negative = extract(model, layers, negative_inputs(size, n_negatives, seed))
    report(3)
    fitted = fit_statistics(train, negative, seed)
    report(4)
    ood.save_statistics(model_dir, fitted)
    return threshold_entry(fitted, layers, val, n_train=len(train), n_negative=len(negative))


def split_images(model_dir: Path, *, data_dir: Path, splits_csv: Path | None, max_train: int, seed: int) -> tuple:
    """The folder's training sample and validation images at its input size."""
    from core.contracts import paths
    from core.dataset.data import load_dataset
    from core.dataset.leakage import model_split

    meta = read_metadata(model_dir)
    split = model_split(model_dir, meta, splits_csv)
    frame = load_dataset(data_dir or paths.dataset_dir()).merge(split[["image_id", "split"]], on="image_id")
    train = frame[frame["split"] == "train"]
    train = train.iloc[np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train])]
    val = frame[frame["split"] == "val"]
    size = input_size(meta)
    read = lambda table: np.stack([read_model_pixels(p, size) for p in table["path"]])  # noqa: E731
    return read(train), read(val)


def fit_folder(model_dir: Path, *, data_dir: Path | None = None, splits_csv: Path | None = None,
               max_train: int = MAX_TRAIN, seed: int = 0) -> dict:
    """Fit the scorer of an existing model folder and record it in its ``model.json``."""
    train, val = split_images(model_dir, data_dir=data_dir, splits_csv=splits_csv, max_train=max_train, seed=seed)
    entry = fit_for_model(model_dir, load_model(model_dir), train_images=train, val_images=val, seed=seed)
    meta = read_metadata(model_dir)
    meta["ood"] = entry
    write_metadata(model_dir, meta)
    return entry


def main(argv=None) -> int:
    """``lesionlab ood fit [--model DIR]``: fit and record the out-of-distribution scorer."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("ood"), description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit the scorer of a model folder")
    cli_args.add_model_argument(fit)
    fit.add_argument("--data-dir", type=Path, default=None, help="HAM10000 folder (default: HAM10000_DIR)")
    fit.add_argument("--splits", type=Path, default=None, help="split CSV (default: the folder's splits.csv)")
    fit.add_argument("--max-train", type=int, default=MAX_TRAIN, help="training images sampled as positives")
    fit.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from core.dataset.data import DatasetError
    from core.dataset.leakage import SplitMismatch
    from core.serving.modelio import ModelFolderError

    try:
        entry = fit_folder(check_model_folder(args.model), data_dir=args.data_dir, splits_csv=args.splits,
                           max_train=args.max_train, seed=args.seed)
    except (DatasetError, ModelFolderError, SplitMismatch, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"fitted {entry['method']} on {entry['n_train']} training images and {entry['n_negatives']} negatives; "
          f"thresholds {entry['thresholds']} at the {entry['percentile']}th percentile of val (n={entry['n']}); "
          f"val flagged {entry['val_flagged']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
