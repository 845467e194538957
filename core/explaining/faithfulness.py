"""How well does a saliency map explain the model, and does it look at the lesion?

Faithfulness (Petsiuk et al., RISE, 2018):

* **deletion** — replace the most salient pixels first by a baseline (a blurred
  copy of the image, or its mean colour) and follow the class probability; a
  faithful map makes it fall fast: *lower* AUC is better.
* **insertion** — start from the baseline and put the most salient pixels back
  first; the probability should rise fast: *higher* AUC is better.

All ``steps + 1`` images of a curve go to the model in one batched call. The
model is any ``predict_fn(batch) -> probabilities``: no TensorFlow here.

Localisation against a lesion mask: the *pointing game* (is the map's maximum
inside the lesion?) and the *energy share* (the map's mass inside the lesion).
:func:`gaussian_baseline` is the map that knows nothing but "lesions are
usually centred", the bar a saliency method has to clear.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from core.dataset.images import resize_mask


@dataclass(frozen=True)
class Curve:
    """A deletion or insertion curve: class probability against the share of pixels changed."""

    kind: str
    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve (trapezoidal rule, fractions in [0, 1])."""
        return area_under(self.fractions, self.scores)


def area_under(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Trapezoidal area under ``scores`` over ``fractions``."""
    f, s = np.asarray(fractions, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (s[1:] + s[:-1]) / 2.0))


def baseline_image(x: np.ndarray, kind: str = "blur") -> np.ndarray:
    """The "nothing here" image: a strong Gaussian blur of ``x`` or its mean colour.

    Args:
        x: ``(S, S, 3)`` float32 model input in 0..255.
        kind: ``"blur"`` (radius S/10) or ``"mean"``.
    """
    x = np.asarray(x, dtype=np.float32)
    if kind == "mean":
        return np.broadcast_to(x.mean(axis=(0, 1)), x.shape).astype(np.float32)
    if kind != "blur":
        raise ValueError(f"unknown baseline {kind!r}: use 'blur' or 'mean'")
    image = Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))
    radius = max(1.0, x.shape[0] / 10.0)
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius=radius)), dtype=np.float32)


def _order(saliency: np.ndarray) -> np.ndarray:
    """Pixel indices, most salient first (stable, so ties keep raster order)."""
    return np.argsort(-np.asarray(saliency, dtype=np.float64).ravel(), kind="stable")


def _curve_batch(start: np.ndarray, end: np.ndarray, order: np.ndarray, steps: int) -> tuple:
    """Images moving from ``start`` to ``end``, most salient pixels first."""
    n_pixels = order.size
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.rint(fractions * n_pixels).astype(int)
    flat_start = start.reshape(n_pixels, -1)
    flat_end = end.reshape(n_pixels, -1)
    batch = np.empty((steps + 1, *start.shape), dtype=np.float32)
    for i, count in enumerate(counts):
        image = flat_start.copy()
        image[order[:count]] = flat_end[order[:count]]
        batch[i] = image.reshape(start.shape)
    return fractions, batch


def deletion_curve(predict_fn, x, saliency, *, class_index: int, steps: int = 20, baseline: str = "blur") -> Curve:
    """Class probability as the most salient pixels are replaced by the baseline.

    Args:
        predict_fn: ``(N, S, S, 3) float32 -> (N, C)`` probabilities.
        x: the ``(S, S, 3)`` model input.
        saliency: an ``(S, S)`` map.
        class_index: the class whose probability is followed.
        steps: number of steps (``steps + 1`` images in one call).
        baseline: ``"blur"`` or ``"mean"``.
    """
    x = np.asarray(x, dtype=np.float32)
    fractions, batch = _curve_batch(x, baseline_image(x, baseline), _order(saliency), steps)
    scores = np.asarray(predict_fn(batch))[:, class_index]
    return Curve("deletion", fractions, scores.astype(np.float64))


def insertion_curve(predict_fn, x, saliency, *, class_index: int, steps: int = 20, baseline: str = "blur") -> Curve:
    """Class probability as the most salient pixels are restored on the baseline.

    Arguments as in :func:`deletion_curve`.
    """
    x = np.asarray(x, dtype=np.float32)
    fractions, batch = _curve_batch(baseline_image(x, baseline), x, _order(saliency), steps)
    scores = np.asarray(predict_fn(batch))[:, class_index]
    return Curve("insertion", fractions, scores.astype(np.float64))


def pointing_game(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """True when the map's maximum falls inside the lesion mask (resized to the map)."""
    saliency = np.asarray(saliency, dtype=np.float64)
    inside = resize_mask(mask, saliency.shape)
    return bool(inside.ravel()[int(np.argmax(saliency))])


def energy_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's total mass inside the lesion mask (0 for an all-zero map)."""
    saliency = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = saliency.sum()
    if total <= 0:
        return 0.0
    return float(saliency[resize_mask(mask, saliency.shape)].sum() / total)


def gaussian_baseline(shape: tuple, sigma: float = 0.25) -> np.ndarray:
    """A centred Gaussian map in [0, 1]; ``sigma`` is a fraction of each side."""
    h, w = shape
    ys = (np.arange(h) - (h - 1) / 2.0) / (sigma * h)
    xs = (np.arange(w) - (w - 1) / 2.0) / (sigma * w)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).astype(np.float32)
