"""Saliency maps for flat functional classifiers: which pixels raised the class's score?

One family per module:

* :mod:`core.explaining.saliency.cam` — class activation maps: Grad-CAM and LayerCAM at any
  stage of the backbone (fast, hand-written), LayerCAM's multi-stage fusion, and
  the tf-keras-vis back-end (Grad-CAM++ and Score-CAM, plus the Grad-CAM and
  LayerCAM the fast path is tested against);
* :mod:`core.explaining.saliency.gradients` — integrated gradients (fast) and SmoothGrad (tf-keras-vis);
* :mod:`core.explaining.saliency.draw` — colour maps, overlays, iso-contours, lesion outlines, legends
  (numpy and scipy only: no TensorFlow).

The contract of every method in :data:`METHODS`: ``fn(explainer, x, class_index)``
takes one ``(H, W, 3)`` float32 model input and returns a float32 ``(H, W)``
map at the model input's own size, non-negative, scaled so that its maximum is
1 (all zeros when nothing raises the class's score). :func:`explain_image`
returns it at an image's own size, as the Predict page and ``python -m
core.explaining.explain`` show and save it.

Localisation against a lesion mask (for any map and any mask size):
:func:`energy_inside` (share of the map's mass inside the lesion) and
:func:`pointing_game` (is the map's peak inside the lesion?).
"""

from dataclasses import dataclass

import numpy as np

from core.explaining.faithfulness import energy_in_mask as energy_inside
from core.explaining.faithfulness import pointing_game
from core.explaining.saliency import cam, gradients
from core.explaining.saliency.draw import colorize, draw_outline, overlay, resize_map
from core.explaining.saliency.explainer import Explainer, normalize_map

gradcam_fast = cam.gradcam_fast
gradcam = cam.gradcam


@dataclass(frozen=True)
class Method:
    """A saliency method as the page, the CLI and the benchmark list it."""

    name: str
    fn: object  # (explainer, x, class_index) -> (H, W) float32 map
    family: str  # "CAM" or "gradient"
    backend: str  # "fast" (hand-written, traced) or "tf-keras-vis"
    about: str
    native: object = None  # explainer -> (h, w) the map is computed at; None: the model input's size

    def native_size(self, explainer: Explainer) -> tuple:
        """The resolution the map is computed at, before upsampling to the input."""
        return tuple(self.native(explainer)) if self.native else tuple(explainer.input_size)


def _stage_cam(stride: int, weighting: str):
    def fn(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
        layer = explainer.stage_layer(stride)
        return cam.cam_batch(explainer, x[None], [class_index], layer=layer, weighting=weighting)[0][0]

    return fn


def _stage_shape(stride: int):
    return lambda explainer: explainer.layer_shape(explainer.stage_layer(stride))


def _last_shape(explainer: Explainer) -> tuple:
    return explainer.layer_shape(explainer.last_conv_layer)


def _finest_shape(explainer: Explainer) -> tuple:
    return explainer.layer_shape(explainer.stage_layers()[min(explainer.stage_layers())])


_STAGE_ABOUT = {
    "layercam": "Each activation of the stride-{s} stage weighted by its own positive gradient (LayerCAM).",
    "gradcam": "The stride-{s} stage's channels weighted by their mean gradient (Grad-CAM).",
}


def _stage_method(title: str, weighting: str, stride: int) -> Method:
    about = _STAGE_ABOUT[weighting].format(s=stride) + (" The classic, coarse map." if stride == 32 else "")
    return Method(f"{title}, stride {stride}", _stage_cam(stride, weighting), "CAM", "fast", about,
                  _stage_shape(stride))


def _fused(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    return cam.fused_batch(explainer, x[None], [class_index])[0][0]


def _stitched(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    return cam.stitched_batch(explainer, x[None], [class_index])[0]


def _stitched_shape(explainer: Explainer) -> tuple:
    height, width = _stage_shape(cam.STITCH_STRIDE)(explainer)
    return 2 * height, 2 * width


def _agreement(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    return cam.agreement_batch(explainer, x[None], [class_index])[0][0]


_FUSED = "LayerCAM, fused strides 8+16+32"
AGREEMENT = "LayerCAM, strides 8 × 16 (geometric mean)"
STITCHED = "LayerCAM, stride 16 sampled at 8 (4 shifts)"
_METHODS = [
    *(_stage_method("LayerCAM", "layercam", stride) for stride in (8, 16, 32)),
    Method(_FUSED, _fused, "CAM", "fast",
           "LayerCAM at the end of the stride-8, -16 and -32 stages, fused by maximum (LayerCAM's own recipe).",
           _finest_shape),
    Method(AGREEMENT, _agreement, "CAM", "fast",
           "LayerCAM at the end of the stride-8 and stride-16 stages, each divided by its maximum, fused by their "
           "geometric mean: salient only where both stages agree, drawn at the stride-8 resolution.",
           _stage_shape(8)),
    Method(STITCHED, _stitched, "CAM", "fast",
           "LayerCAM at the stride-16 stage on four copies of the image moved by a quarter of a cell, "
           "interleaved (shift-and-stitch): the stride-16 stage's own map, sampled every 8 pixels.",
           _stitched_shape),
    *(_stage_method("Grad-CAM", "gradcam", stride) for stride in (8, 16, 32)),
    Method("Integrated gradients", gradients.integrated_gradients, "gradient", "fast",
           f"Gradients along {gradients.IG_STEPS} steps from a blurred copy to the image; positive evidence, "
           "smoothed."),
    Method("Grad-CAM++ (tf-keras-vis)", cam.gradcam_plus_plus, "CAM", "tf-keras-vis",
           "Channel weights from positive second-order gradient terms, last conv layer.", _last_shape),
    Method(f"Score-CAM (tf-keras-vis, N={cam.SCORECAM_MAX_N})", cam.scorecam, "CAM", "tf-keras-vis",
           "Gradient-free: activation maps mask the input and are weighted by the class's probability.", _last_shape),
    Method("SmoothGrad (tf-keras-vis)", gradients.smoothgrad, "gradient", "tf-keras-vis",
           f"|gradient| averaged over {gradients.SMOOTHGRAD_SAMPLES} noisy copies of the image."),
]
METHODS = {m.name: m for m in _METHODS}
# The winner of bench/bench_saliency.py on the shipped model: the most energy inside the lesion among
# the methods that beat a centred Gaussian, whose maps decorrelate when the last stage is randomised, that
# take at most 100 ms and that are computed on at least 14 × 14 cells. Chosen on validation images; the
# README gives its test figures (200 images with masks).
DEFAULT_METHOD = STITCHED


def explain(explainer: Explainer, x: np.ndarray, method: str, *, class_index: int) -> np.ndarray:
    """The map of the method named ``method`` (a key of :data:`METHODS`) on one model input."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; choose from {list(METHODS)}")
    saliency = METHODS[method].fn(explainer, np.asarray(x, dtype=np.float32), int(class_index))
    return np.clip(np.asarray(saliency, dtype=np.float32), 0.0, None)


def explain_image(explainer: Explainer, rgb: np.ndarray, method: str, *, class_index: int) -> np.ndarray:
    """The map of ``method`` for an RGB image of any size, returned at that image's own ``(H, W)``.

    The image is stretched to the model input exactly as for prediction; the
    map is stretched back (bilinear), so it lies over the image the user sees.
    """
    from core.dataset.images import to_model_input

    saliency = explain(explainer, to_model_input(rgb, explainer.input_size), method, class_index=class_index)
    return resize_map(saliency, np.shape(rgb)[:2])


__all__ = [
    "DEFAULT_METHOD", "METHODS", "Explainer", "Method", "colorize", "draw_outline", "energy_inside", "explain",
    "explain_image", "gradcam", "gradcam_fast", "normalize_map", "overlay", "pointing_game", "resize_map",
]
