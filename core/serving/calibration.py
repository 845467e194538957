"""Calibration of predicted probabilities: reliability, ECE, Brier, temperature scaling.

Conventions:

* Reliability and ECE are *top-label*: each image contributes its highest
  probability (confidence) and whether the arg-max is right. Confidences are put
  into ``n_bins`` equal-width bins over [0, 1] (15 by default, as Guo et al. 2017),
  each bin closed on the right, ``(lo, hi]``, the first also containing 0.
  ECE = sum over bins of (bin count / n) * |accuracy - mean confidence|.
* Brier score is the multiclass original: mean over images of the squared distance
  between the probability vector and the one-hot truth (0 best, 2 worst).
* Temperature scaling works on saved probabilities, not logits: calibrated
  probabilities are ``softmax(log(p) / T)``, which equals ``softmax(logits / T)``
  because ``log(p)`` differs from the logits by a per-row constant. ``T`` is fitted
  on the validation split by minimising the negative log-likelihood with a bounded
  scalar optimiser, then stored as ``temperature`` in the model's ``model.json``.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from core.serving import modelio
N_BINS = 15
T_BOUNDS = (0.05, 20.0)
MIN_TEMPERATURE_N = 100  # fewer validation images than this and a fitted T is noise (T = 0.069 from 12 was seen)
_EPS = 1e-12


def format_temperature(temperature: float) -> str:
    """T as every page, card and command prints it: three decimals (``1.439``)."""
    return f"{float(temperature):.3f}"


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Return ``softmax(log(probs) / temperature)`` row by row."""
    if not temperature or temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def calibrate(probs: np.ndarray, temperature) -> np.ndarray:
    """Temperature scaling ``softmax(log(p) / T)``; the probabilities unchanged when T is None.

    The one place the served probabilities are made: Predict, batch, ``core.serving.predict`` and the
    images and downloads of Evaluate all call it with the model folder's applied temperature.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if temperature is None:
        return probs
    return apply_temperature(np.atleast_2d(probs), float(temperature)).reshape(probs.shape)


def calibrate_table(table: pd.DataFrame, classes, temperature) -> pd.DataFrame:
    """A predictions table with its class columns passed through :func:`calibrate` (a copy)."""
    out = table.copy()
    classes = list(classes)
    out[classes] = calibrate(out[classes].to_numpy(dtype=np.float64), temperature)
    return out


def nll(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(y_true)), np.asarray(y_true)]
    return float(-np.mean(np.log(np.clip(picked, _EPS, 1.0))))


def fit_temperature(probs: np.ndarray, y_true: np.ndarray, bounds=T_BOUNDS) -> float:
    """The temperature in ``bounds`` minimising the NLL of ``softmax(log(p) / T)``.

    Args:
        probs: uncalibrated probabilities of the validation split.
        y_true: true label indices of the same images.
        bounds: search interval for ``T``.

    Returns:
        The fitted temperature (> 1 softens over-confident models, < 1 sharpens).
    """
    if len(y_true) == 0:
        raise ValueError("cannot fit a temperature on zero images")
    # Searching log T keeps the optimiser's resolution even on both sides of T = 1.
    result = minimize_scalar(
        lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), y_true),
        bounds=(np.log(bounds[0]), np.log(bounds[1])),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Top-label reliability diagram data.

    Returns:
        One row per bin: ``bin_low, bin_high, confidence`` (mean top probability),
        ``accuracy`` (share of right arg-max answers), ``count``. Empty bins have
        NaN confidence and accuracy and count 0.
    """
    confidence, correct, index = _top_label_bins(probs, y_true, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return pd.DataFrame(
        {"bin_low": edges[:-1], "bin_high": edges[1:], "confidence": mean_conf, "accuracy": accuracy, "count": count}
    )


def _top_label_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int) -> tuple:
    """``(confidence, correct as 0/1, bin index)`` of each image, bins as in the module docstring."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    # (lo, hi] bins: ceil(c * n) - 1, with c = 0 going to the first bin.
    index = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    return confidence, correct, index


def weighted_ece(w: np.ndarray, y_true: np.ndarray, probs: np.ndarray, *, n_bins: int = N_BINS) -> np.ndarray:
    """Top-label ECE for each row of image weights ``w`` (B, n), e.g. bootstrap counts; one value per row."""
    confidence, correct, index = _top_label_bins(probs, y_true, n_bins)
    in_bin = np.eye(n_bins)[index]
    gaps = np.abs(w @ (in_bin * correct[:, None]) - w @ (in_bin * confidence[:, None]))
    return gaps.sum(axis=1) / w.sum(axis=1)


def weighted_nll(w: np.ndarray, y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood (log-loss) for each row of image weights ``w`` (B, n)."""
    picked = np.asarray(probs, dtype=np.float64)[np.arange(len(y_true)), np.asarray(y_true)]
    return (w @ -np.log(np.clip(picked, _EPS, 1.0))) / w.sum(axis=1)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (see the module docstring)."""
    table = reliability(probs, y_true, n_bins)
    used = table["count"] > 0
    gaps = (table.loc[used, "accuracy"] - table.loc[used, "confidence"]).abs()
    return float((gaps * table.loc[used, "count"]).sum() / table["count"].sum())


def brier_score(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum over classes of (p - onehot)^2."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y_true)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def calibration_summary(probs: np.ndarray, y_true: np.ndarray, temperature: float | None = None) -> pd.DataFrame:
    """ECE, Brier and NLL before and, when ``temperature`` is given, after scaling."""
    rows = [_summary_row("uncalibrated", probs, y_true)]
    if temperature:
        scaled = apply_temperature(probs, temperature)
        rows.append(_summary_row(f"T = {format_temperature(temperature)}", scaled, y_true))
    return pd.DataFrame(rows)


def _summary_row(name: str, probs: np.ndarray, y_true: np.ndarray) -> dict:
    return {
        "probabilities": name,
        "ece": expected_calibration_error(probs, y_true),
        "brier": brier_score(probs, y_true),
        "nll": nll(probs, y_true),
        "n": len(y_true),
    }


def save_temperature(model_dir: Path, temperature: float, n: int | None = None) -> dict:
    """Store ``temperature`` (and ``temperature_n``, the images it was fitted on) in ``model.json``."""
    if not temperature or temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    meta = modelio.read_metadata(model_dir)
    meta["temperature"] = float(temperature)
    meta["temperature_n"] = None if n is None else int(n)
    modelio.write_metadata(model_dir, meta)
    return meta


def _fitted_on(meta: dict, model_dir: Path) -> tuple:
    """``(n, where)``: the images the temperature was fitted on, from model.json or the val predictions."""
    if meta.get("temperature_n") is not None:
        return int(meta["temperature_n"]), modelio.METADATA_FILE
    from core.contracts import predictions
    val = Path(model_dir) / predictions.FILES["val"]
    if val.is_file():
        rows = sum(1 for line in val.open(encoding="utf-8") if line.strip() and not line.startswith("#")) - 1
        return max(rows, 0), f"the rows of {predictions.FILES['val']}"
    return None, "unknown"


def temperature_status(meta: dict, model_dir: Path, min_n: int = MIN_TEMPERATURE_N) -> dict:
    """Whether a stored temperature is applied: only when fitted on at least ``min_n`` images.

    Returns:
        ``{"stored": T or None, "applied": T or None, "n": images or None, "n_from": where n was read,
        "text": one sentence for a user}``.
    """
    stored = meta.get("temperature")
    t = format_temperature(stored) if stored else ""
    n, where = _fitted_on(meta, model_dir) if stored else (None, "unknown")
    # an unknown n (no temperature_n, no validation file) is said out loud rather than guessed small
    applied = stored if stored and (n is None or n >= min_n) else None
    if not stored:
        text = "Uncalibrated: the model's own softmax (model.json has no temperature)."
    elif applied and n is None:
        text = f"Calibrated with temperature scaling, T = {t}, fitted on an unknown number of images."
    elif applied:
        text = f"Calibrated with temperature scaling, T = {t}, fitted on n = {n:,} validation images."
    else:
        text = (f"Uncalibrated: the stored T = {t} was fitted on {n:,} images, fewer than the {min_n} "
                "needed to trust it, so it is not applied.")
    return {"stored": stored, "applied": applied, "n": n, "n_from": where, "text": text}
