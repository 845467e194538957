"""Segmentation metrics: Dice, Jaccard and the ISIC 2018 Task 1 thresholded Jaccard.

Scores are computed per image on binary masks at the image's own size, then
averaged over images (the ISIC 2018 Task 1 convention). The thresholded
Jaccard scores an image 0 when its Jaccard index is below 0.65, so a
segmentation that misses the lesion costs as much as no segmentation at all.
Needs numpy and pandas only: no TensorFlow.
"""

import numpy as np
import pandas as pd

ISIC_JACCARD_THRESHOLD = 0.65
SCORE_COLUMNS = ("dice", "jaccard", "thresholded_jaccard")


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean masks of one shape, or a ValueError saying why not."""
    y_true, y_pred = np.asarray(y_true) > 0, np.asarray(y_pred) > 0
    if y_true.shape != y_pred.shape:
        raise ValueError(f"mask shapes differ: true {y_true.shape} vs predicted {y_pred.shape}")
    if y_true.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {y_true.shape}")
    return y_true, y_pred


def dice(y_true, y_pred) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks; 1.0 when both are empty."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    total = int(y_true.sum()) + int(y_pred.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(y_true, y_pred).sum()) / total


def jaccard(y_true, y_pred) -> float:
    """Jaccard index |A∩B| / |A∪B| of two binary masks; 1.0 when both are empty."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    union = int(np.logical_or(y_true, y_pred).sum())
    return 1.0 if union == 0 else int(np.logical_and(y_true, y_pred).sum()) / union


def thresholded_jaccard(y_true, y_pred, *, threshold: float = ISIC_JACCARD_THRESHOLD) -> float:
    """The ISIC 2018 Task 1 score of one image: its Jaccard index, or 0 below ``threshold``."""
    value = jaccard(y_true, y_pred)
    return value if value >= threshold else 0.0


def image_scores(y_true, y_pred) -> dict:
    """Dice, Jaccard and thresholded Jaccard of one image, plus both mask areas in pixels."""
    y_true, y_pred = _check_pair(y_true, y_pred)
    value = jaccard(y_true, y_pred)
    return {"dice": dice(y_true, y_pred), "jaccard": value,
            "thresholded_jaccard": value if value >= ISIC_JACCARD_THRESHOLD else 0.0,
            "true_area": int(y_true.sum()), "pred_area": int(y_pred.sum())}


def bootstrap_mean(values, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """The mean of per-image scores with a percentile bootstrap interval (resampling images).

    Returns:
        ``(mean, low, high)``; the interval is NaN for fewer than two values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError("values must be 1-D (one score per image)")
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(values) < 2:
        return float(values.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(low), float(high)


def summary(scores: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean and 95 % bootstrap interval of every score column, with n.

    Args:
        scores: one row per image with the columns of ``SCORE_COLUMNS``.

    Returns:
        One row per metric: ``metric, mean, low, high, n``.
    """
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"score table lacks columns {missing}")
    rows = []
    for column in SCORE_COLUMNS:
        mean, low, high = bootstrap_mean(scores[column].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({"metric": column, "mean": mean, "low": low, "high": high, "n": len(scores)})
    return pd.DataFrame(rows)


def per_class(scores: pd.DataFrame, *, by: str = "dx", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean scores per group (diagnosis by default), with n and a bootstrap interval on Dice.

    Returns:
        One row per group, sorted by n descending: ``<by>, n, dice, dice_low, dice_high, jaccard,
        thresholded_jaccard``.
    """
    if by not in scores.columns:
        raise ValueError(f"score table lacks the column {by!r}")
    rows = []
    for group, part in scores.groupby(by, sort=False):
        mean, low, high = bootstrap_mean(part["dice"].to_numpy(), n_boot=n_boot, seed=seed)
        rows.append({by: group, "n": len(part), "dice": mean, "dice_low": low, "dice_high": high,
                     "jaccard": float(part["jaccard"].mean()),
                     "thresholded_jaccard": float(part["thresholded_jaccard"].mean())})
    return pd.DataFrame(rows).sort_values(["n", by], ascending=[False, True]).reset_index(drop=True)


def scores_path(model_dir, split: str):
    """Where a segmenter folder keeps its per-image scores of one split (``scores_<split>.csv``)."""
    from pathlib import Path

    from core.contracts.runfolder import scores_file

    return Path(model_dir) / scores_file(split)


def load_scores(model_dir, split: str) -> pd.DataFrame:
    """Read the per-image scores of one split, checked for the score columns.

    Raises:
        FileNotFoundError: the folder has no scores for this split.
        ValueError: the file lacks a score column.
    """
    table = pd.read_csv(scores_path(model_dir, split), dtype={"image_id": str, "lesion_id": str, "dx": str})
    missing = [c for c in ("image_id", *SCORE_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"{scores_path(model_dir, split)}: lacks columns {missing}")
    return table
