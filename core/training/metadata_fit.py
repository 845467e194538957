"""Fit a model folder's metadata branch (age, sex, body site) on its training split.

``lesionlab metadata-branch --model DIR`` predicts the model on every image of
the split it trained on (its 4 frame-keeping flips; cached under the image cache
folder, keyed by the model file's SHA-256), then fits the branch of
:mod:`core.serving.metadata_branch` on the training images only: the image
model frozen, one weight per (metadata feature, class), L2-penalised
cross-entropy on ``log(p_image) + encoding @ weights``. Each (image, flip) row
loses each field independently with probability ``--drop`` (0.3), so the branch
learns what one field says when the others are missing. The L2 strength is chosen
by 5-fold cross-validation on the training images, grouped by ``lesion_id``.

Validation is scored with and without metadata, and with each field alone,
single view (what Predict shows by default); the figures go into the branch file's
``meta`` and are printed. The branch is written into the model folder only with
``--write``: whether it ships is decided on those validation figures. The test
split is not scored here.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core.contracts import cli_args, paths, validation
from core.contracts import runfolder as rf
from core.contracts.labels import CLASSES, encode_labels
from core.evaluation import metrics
from core.serving import calibration, metadata_branch as mb

DROP = 0.3
L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2)
FOLDS = 5


def drop_fields(encoded: np.ndarray, *, p: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``encoded`` (N, D) with each field of each row zeroed with probability ``p``."""
    out = encoded.copy()
    for columns in mb.FIELD_COLUMNS.values():
        out[rng.random(len(out)) < p, columns] = 0
    return out


def _loss_and_grad(flat: np.ndarray, logits: np.ndarray, encoded: np.ndarray, onehot: np.ndarray, l2: float):
    n_features, n_classes = encoded.shape[1], onehot.shape[1]
    weights, bias = flat[:-n_classes].reshape(n_features, n_classes), flat[-n_classes:]
    z = logits + bias + encoded @ weights
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(z)
    loss = -(onehot * log_p).sum() / n + l2 * (weights ** 2).sum()
    residual = (np.exp(log_p) - onehot) / n
    return loss, np.concatenate([(encoded.T @ residual + 2 * l2 * weights).ravel(), residual.sum(axis=0)])


def fit_weights(logits: np.ndarray, encoded: np.ndarray, y: np.ndarray, *, l2: float) -> np.ndarray:
    """The (D, K) weights minimising mean cross-entropy of ``logits + b + encoded @ W`` plus ``l2 * |W|²``.

    The bias ``b`` is fitted alongside and then dropped. It takes up what moves every
    row alike, such as a gap between the image model's probabilities and the training
    split's class frequencies, so ``W`` keeps only what each field says beyond the image.
    Without it, any field present would also carry that shift.
    """
    from scipy.optimize import minimize

    n_features, n_classes = encoded.shape[1], logits.shape[1]
    onehot = np.eye(n_classes)[y]
    start = np.zeros(n_features * n_classes + n_classes)
    found = minimize(_loss_and_grad, start, args=(logits, encoded, onehot, l2), jac=True, method="L-BFGS-B",
                     options={"maxiter": 1000})
    return found.x[:-n_classes].reshape(n_features, n_classes)


def _rows(probs: np.ndarray, encoded: np.ndarray, y: np.ndarray, *, drop: float, seed: int) -> tuple:
    """One training row per (image, flip): image log-probabilities, dropped encoding, label."""
    n, flips, _ = probs.shape
    logits = np.log(np.clip(probs, 1e-12, None)).reshape(n * flips, -1)
    rng = np.random.default_rng(seed)
    repeated = np.repeat(encoded, flips, axis=0)
    return logits, drop_fields(repeated, p=drop, rng=rng), np.repeat(y, flips)


def choose_l2(probs, encoded, y, *, groups, drop: float = DROP, seed: int = 0) -> tuple:
    """``(best l2, {l2: cross-validated log-loss})``: 5 folds grouped by lesion, full metadata held out."""
    from sklearn.model_selection import GroupKFold

    scores = {}
    for l2 in L2_GRID:
        losses = []
        for train, held in GroupKFold(n_splits=FOLDS).split(encoded, y, groups):
            weights = fit_weights(*_rows(probs[train], encoded[train], y[train], drop=drop, seed=seed), l2=l2)
            held_probs = mb.combine(probs[held, 0], encoded[held], weights)
            losses.append(calibration.nll(held_probs, y[held]) * len(held))
        scores[l2] = float(np.sum(losses) / len(y))
    return min(scores, key=scores.get), scores


def fit(probs, encoded, y, *, groups, drop: float = DROP, seed: int = 0) -> tuple:
    """Fit the branch on training images: ``(weights (D, K), facts for the file's meta)``.

    Args:
        probs: (N, F, K) the image model's calibrated probabilities on each flip of each training image.
        encoded: (N, D) the images' metadata (:func:`core.serving.metadata_branch.encode_table`).
        y: (N,) class indices.
        groups: (N,) lesion ids, so cross-validation keeps a lesion's images together.
    """
    l2, cv = choose_l2(probs, encoded, y, groups=groups, drop=drop, seed=seed)
    weights = fit_weights(*_rows(probs, encoded, y, drop=drop, seed=seed), l2=l2)
    facts = {"fitted_on": {"split": "train", "n_images": int(len(y)), "flips": int(probs.shape[1])},
             "drop": drop, "l2": l2, "l2_cv_log_loss": {f"{k:g}": round(v, 5) for k, v in cv.items()},
             "seed": seed}
    return weights, facts


def scores(y_true: np.ndarray, probs: np.ndarray, classes) -> dict:
    """Balanced accuracy, macro AUC, log-loss and ECE of one set of probabilities."""
    return {"balanced_accuracy": metrics.balanced_accuracy(y_true, metrics.predicted_labels(probs), len(classes)),
            "macro_auc": float(np.nanmean(metrics.class_table(y_true, probs, classes)["auc"])),
            "log_loss": calibration.nll(probs, y_true), "ece": calibration.expected_calibration_error(probs, y_true)}


def ablation(y_true, probs, table: pd.DataFrame, *, weights, classes) -> pd.DataFrame:
    """Validation scores without metadata, with each field alone, and with all three (one row each)."""
    variants = {"image only": (), **{f"image + {f}": (f,) for f in mb.FIELDS}, "image + age, sex, site": mb.FIELDS}
    rows = []
    for name, keep in variants.items():
        moved = mb.combine(probs, mb.encode_table(table, keep=keep), weights) if keep else probs
        rows.append({"variant": name, "n": len(y_true), **scores(y_true, moved, classes)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- command line


def main(argv=None) -> int:
    """Run ``lesionlab metadata-branch``; returns the exit code."""
    from core.training import soft_targets

    parser = argparse.ArgumentParser(prog=cli_args.prog("metadata-branch"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli_args.add_model_argument(parser)
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $HAM10000_DIR)")
    parser.add_argument("--drop", type=float, default=DROP, help="probability of dropping each field of each row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write metadata_branch.npz into the model folder")
    args = parser.parse_args(argv)
    try:
        model_dir = validation.check_model_folder(args.model)
        split_file = Path(model_dir) / rf.SPLITS_FILE
        if not split_file.is_file():
            raise validation.InputError(f"{model_dir}: no {rf.SPLITS_FILE}, the split the model trained on")
        frame = soft_targets.split_frame(split_file, args.data_dir or paths.dataset_dir())
        info = soft_targets.teacher_info(model_dir, soft_targets.split_hash(split_file))
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {validation.one_line(err)}", file=sys.stderr)
        return validation.EXIT_BAD_INPUT
    probs = soft_targets.cached_teacher(paths.cache_dir() / "metadata_branch", model_dir, frame, info=info,
                                        progress=lambda name, done, total: None)
    y = encode_labels(frame["dx"], CLASSES)
    encoded = mb.encode_table(frame)
    train = (frame["split"] == "train").to_numpy()
    weights, facts = fit(probs[train], encoded[train], y[train], groups=frame.loc[train, "lesion_id"].to_numpy(),
                         drop=args.drop, seed=args.seed)
    val = (frame["split"] == "val").to_numpy()
    table = ablation(y[val], probs[val, 0], frame[val], weights=weights, classes=CLASSES)
    print(f"{model_dir}: L2 {facts['l2']:g} (cross-validated log-loss {facts['l2_cv_log_loss']})")
    print(f"validation, single view, n={int(val.sum())}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.write:
        facts["validation"] = table.round(5).to_dict(orient="records")
        print(f"wrote {mb.write(model_dir, mb.MetadataBranch(weights, tuple(CLASSES), facts))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
