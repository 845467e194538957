"""Pixel-level maps from gradients of the class logit with respect to the input.

* :func:`integrated_gradients` (Sundararajan et al., 2017), hand-written: the
  gradient averaged along the straight path from a blurred copy of the image
  (the "nothing here" baseline of :mod:`core.explaining.faithfulness`) to the image, times
  the difference. All path points go through the model in one batch.
* :func:`smoothgrad` (Smilkov et al., 2017) through tf-keras-vis.

Every map is float32 ``(H, W)`` at the model input's size, in [0, 1].
"""

import numpy as np
from scipy import ndimage

from core.explaining.saliency.explainer import Explainer, as_map, class_score, normalize_map, output_logits, quiet

IG_STEPS = 16
SMOOTHGRAD_SAMPLES = 10
SMOOTHGRAD_NOISE = 0.2


def _build_input_gradients(explainer: Explainer):
    """The traced ``(x, class_index) -> d(logit)/d(x)`` for a batch."""
    import keras
    import tensorflow as tf

    model = explainer.model
    head_input, head = output_logits(model)
    logit_model = keras.Model(inputs=model.inputs, outputs=head_input)

    @tf.function(reduce_retracing=True)
    def gradients(x, class_index):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.gather(head(logit_model(x, training=False)), class_index, axis=1, batch_dims=1)
        return tape.gradient(score, x)

    return gradients


def input_gradients(explainer: Explainer, batch: np.ndarray, class_indices) -> np.ndarray:
    """``d(logit_c)/d(x)`` for a ``(N, H, W, 3)`` batch, one class per image."""
    import tensorflow as tf

    fn = explainer.traced("input_gradients", _build_input_gradients)
    x = tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))
    idx = tf.convert_to_tensor(np.asarray(class_indices, dtype=np.int32).reshape(-1))
    return fn(x, idx).numpy()


def integrated_gradients(explainer: Explainer, x: np.ndarray, class_index: int, *, steps: int = IG_STEPS,
                         sigma: float = 2.0) -> np.ndarray:
    """Integrated gradients from a blurred baseline; the positive evidence, smoothed.

    The per-pixel attribution (summed over colour channels) keeps its positive
    part, the pixels that raise the class's logit, and is smoothed by a Gaussian
    of ``sigma`` pixels so that the map reads as regions rather than speckle.
    """
    from core.explaining.faithfulness import baseline_image

    x = np.asarray(x, dtype=np.float32)
    start = baseline_image(x, "blur")
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # midpoint rule
    path = start[None] + alphas[:, None, None, None] * (x - start)[None]
    grads = input_gradients(explainer, path, [class_index] * steps).mean(axis=0)
    attribution = np.maximum(((x - start) * grads).sum(axis=-1), 0.0)
    if sigma > 0:
        attribution = ndimage.gaussian_filter(attribution, sigma=sigma)
    return normalize_map(attribution)


def smoothgrad(explainer: Explainer, x: np.ndarray, class_index: int, *,
               samples: int = SMOOTHGRAD_SAMPLES) -> np.ndarray:
    """SmoothGrad via tf-keras-vis: |d(logit_c)/d(pixel)| averaged over copies of the
    image with Gaussian noise (20 % of the value range), max over channels."""
    with quiet():
        grads = explainer.tfkv("saliency")(class_score(class_index), x[None], smooth_samples=samples,
                                           smooth_noise=SMOOTHGRAD_NOISE)
    return as_map(grads)
