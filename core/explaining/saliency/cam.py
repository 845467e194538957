"""Class activation maps: activations of a conv layer weighted by the class's gradient.

* The **fast path** (:func:`cam_batch`) is hand-written: the model is split
  once into a gradient model returning the chosen layers' activations, traced
  in a ``tf.function``; one forward and one backward pass serve every layer.
  Grad-CAM weights a layer's channels by their mean gradient; LayerCAM weights
  each activation by its own positive gradient. :func:`fused_layercam` is
  LayerCAM's multi-layer recipe.
* :func:`gradcam`, :func:`gradcam_plus_plus`, :func:`scorecam`,
  :func:`layercam` go through tf-keras-vis 0.8.7: the reference back-end the
  fast path is tested against.

Every map is float32 ``(H, W)`` at the model input's size, in [0, 1].
"""

import numpy as np

from core.explaining.saliency.explainer import Explainer, as_map, class_score, normalize_map, output_logits, quiet

SCORECAM_MAX_N = 10
LAYERCAM_GAMMA = 2.0
WEIGHTINGS = ("gradcam", "layercam")
STITCH_STRIDE = 16  # the stage that shift-and-stitch samples at half its stride


def _build(explainer: Explainer, layers: tuple, weighting: str):
    """The traced ``(x, class_index) -> ([raw cam per layer], probabilities)``."""
    import keras
    import tensorflow as tf

    model = explainer.model
    head_input, head = output_logits(model)
    features = [model.get_layer(name=name).output for name in layers]
    grad_model = keras.Model(inputs=model.inputs, outputs=[*features, head_input, model.outputs[0]])

    @tf.function(reduce_retracing=True)
    def cams(x, class_index):
        with tf.GradientTape() as tape:
            *acts, head_in, probs = grad_model(x, training=False)
            score = tf.gather(head(head_in), class_index, axis=1, batch_dims=1)
        grads = tape.gradient(score, acts)
        maps = []
        for a, g in zip(acts, grads):
            weights = tf.reduce_mean(g, axis=(1, 2), keepdims=True) if weighting == "gradcam" else tf.nn.relu(g)
            maps.append(tf.nn.relu(tf.reduce_sum(a * weights, axis=-1)))
        return maps, probs

    return cams


def raw_cams(explainer: Explainer, batch: np.ndarray, class_indices, *, layers, weighting: str = "gradcam") -> tuple:
    """``([(N, h, w) map per layer at its native size], probabilities (N, C))``, not normalised."""
    import tensorflow as tf

    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown CAM weighting {weighting!r}: use one of {WEIGHTINGS}")
    layers = tuple(layers)
    fn = explainer.traced(("cam", layers, weighting), lambda e: _build(e, layers, weighting))
    x = tf.convert_to_tensor(np.asarray(batch, dtype=np.float32))
    idx = tf.convert_to_tensor(np.asarray(class_indices, dtype=np.int32).reshape(-1))
    maps, probs = fn(x, idx)
    return [m.numpy() for m in maps], probs.numpy()


def upsample(maps: np.ndarray, size: tuple) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)``, cell centres aligned (``tf.image.resize``)."""
    import tensorflow as tf

    if tuple(maps.shape[1:3]) == tuple(size):
        return np.asarray(maps, dtype=np.float32)
    return tf.image.resize(np.asarray(maps, np.float32)[..., None], size, method="bilinear")[..., 0].numpy()


def _per_image(fn, maps: np.ndarray) -> np.ndarray:
    return np.stack([fn(m) for m in maps]).astype(np.float32)


def cam_batch(explainer: Explainer, batch: np.ndarray, class_indices, *, layer: str | None = None,
              weighting: str = "gradcam") -> tuple:
    """Fast Grad-CAM or LayerCAM at one layer: ``(maps (N, H, W) in [0, 1], probabilities (N, C))``.

    Args:
        explainer: the model's explainer.
        batch: ``(N, H, W, 3)`` float32 model inputs.
        class_indices: one class per image.
        layer: the layer to explain at (default: the explainer's ``last_conv_layer``).
        weighting: ``"gradcam"`` (channel-mean gradient) or ``"layercam"`` (element-wise positive gradient).
    """
    (maps,), probs = raw_cams(explainer, batch, class_indices, layers=[layer or explainer.last_conv_layer],
                              weighting=weighting)
    return _per_image(normalize_map, upsample(maps, explainer.input_size)), probs


def fused_batch(explainer: Explainer, batch: np.ndarray, class_indices, *, strides=None,
                gamma: float = LAYERCAM_GAMMA) -> tuple:
    """LayerCAM's multi-layer fusion (Jiang et al., 2021, sec. III-C): ``(maps, probabilities)``.

    Each stage's LayerCAM is divided by its maximum; the shallower ones are
    then scaled by ``tanh(gamma * M)`` (their values are small and spread out),
    all are upsampled to the input size and fused by the element-wise maximum.
    """
    stages = explainer.stage_layers()
    strides = sorted(strides or stages)
    maps, probs = raw_cams(explainer, batch, class_indices, layers=[stages[s] for s in strides], weighting="layercam")
    deepest = len(strides) - 1
    fused = None
    for depth, stage in enumerate(maps):
        peak = stage.max(axis=(1, 2), keepdims=True)
        scaled = np.where(peak > 1e-12, stage / np.maximum(peak, 1e-12), 0.0)
        if depth != deepest:
            scaled = np.tanh(gamma * scaled)
        scaled = upsample(scaled, explainer.input_size)
        fused = scaled if fused is None else np.maximum(fused, scaled)
    return _per_image(normalize_map, fused), probs


def agreement_batch(explainer: Explainer, batch: np.ndarray, class_indices, *, strides=(8, 16)) -> tuple:
    """LayerCAM at two stages fused by their geometric mean: ``(maps, probabilities)``.

    Each stage's LayerCAM is divided by its maximum and upsampled to the input
    size; the fused map is the square root of their product. A pixel is salient
    only where both agree: the coarser stage says which region drives the class,
    the finer one draws it at its own resolution. Where the maximum fusion of
    :func:`fused_batch` keeps every stage's stray peaks, the product drops them.
    """
    layers = [explainer.stage_layer(s) for s in strides]  # a model without these stages uses its last conv
    maps, probs = raw_cams(explainer, batch, class_indices, layers=layers, weighting="layercam")
    product = None
    for stage in maps:
        peak = stage.max(axis=(1, 2), keepdims=True)
        scaled = upsample(np.where(peak > 1e-12, stage / np.maximum(peak, 1e-12), 0.0), explainer.input_size)
        product = scaled if product is None else product * np.clip(scaled, 0.0, None)
    return _per_image(normalize_map, np.sqrt(np.clip(product, 0.0, None))), probs


def shifted_copies(x: np.ndarray, shift: int) -> tuple:
    """``(copies (4, H, W, 3), offsets)``: ``x`` moved by ``±shift`` pixels on each axis, edges mirrored.

    Copy ``(dy, dx)`` holds ``x[i + dy, j + dx]`` at ``(i, j)``: its content moves up-left for positive
    offsets. Offsets run ``(-s, -s), (-s, +s), (+s, -s), (+s, +s)``.
    """
    height, width = x.shape[:2]
    padded = np.pad(x, ((shift, shift), (shift, shift), (0, 0)), mode="reflect")
    offsets = [(dy, dx) for dy in (-shift, shift) for dx in (-shift, shift)]
    copies = [padded[shift + dy: shift + dy + height, shift + dx: shift + dx + width] for dy, dx in offsets]
    return np.stack(copies).astype(np.float32), offsets


def interleave(maps: np.ndarray) -> np.ndarray:
    """Four ``(h, w)`` maps of :func:`shifted_copies`, in its order, woven into one ``(2h, 2w)`` map.

    The copy shifted by ``-s`` on an axis sees each cell's content ``s`` pixels earlier, so its cells
    take the even rows (columns) of the finer grid, the ``+s`` copy's the odd ones.
    """
    maps = np.asarray(maps)
    _, height, width = maps.shape
    woven = np.empty((2 * height, 2 * width), dtype=maps.dtype)
    for k, (row, col) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        woven[row::2, col::2] = maps[k]
    return woven


def stitched_batch(explainer: Explainer, batch: np.ndarray, class_indices, *,
                   stride: int = STITCH_STRIDE) -> np.ndarray:
    """LayerCAM at the stride-``stride`` stage sampled every ``stride / 2`` pixels: maps ``(N, H, W)`` in [0, 1].

    Shift-and-stitch (Sermanet et al., OverFeat, 2014; Long et al., FCN, 2015): the stage's cells lie
    ``stride`` pixels apart, so the image is explained four times, moved by a quarter of a cell up or
    down and left or right (edges mirrored), and the four maps are interleaved. Every value of the
    finer grid is the stage's own LayerCAM at that place: nothing is averaged. The four copies run as
    one batch; unlike the other ``*_batch`` functions no probabilities are returned, as none of the
    unshifted image is computed.
    """
    layer = explainer.stage_layer(stride)
    shift = max(1, stride // 4)
    copies = np.concatenate([shifted_copies(x, shift)[0] for x in np.asarray(batch, dtype=np.float32)])
    classes = np.repeat(np.asarray(class_indices, dtype=np.int32).reshape(-1), 4)
    (raw,), _ = raw_cams(explainer, copies, classes, layers=[layer], weighting="layercam")
    woven = np.stack([interleave(raw[i: i + 4]) for i in range(0, len(raw), 4)])
    return _per_image(normalize_map, upsample(woven, explainer.input_size))


def gradcam_fast(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) at the last conv layer, fast path.

    Same algorithm as :func:`gradcam`; the maps differ slightly (correlation ≈ 0.95)
    because the upsampling here aligns cell centres where tf-keras-vis stretches
    the grid corner to corner (``scipy.ndimage.zoom``).
    """
    return cam_batch(explainer, x[None], [class_index])[0][0]


def _tfkv_layer_args(explainer: Explainer) -> dict:
    """Use the named layer itself: tf-keras-vis would otherwise step back from a
    non-conv layer (MobileNetV2's ``out_relu``) to the conv before it."""
    return {"penultimate_layer": explainer.last_conv_layer, "seek_penultimate_conv_layer": False}


def tfkv_cam(explainer: Explainer, x: np.ndarray, class_index: int, *, name: str, **options) -> np.ndarray:
    """One tf-keras-vis CAM (``gradcam``, ``gradcam++``, ``layercam``, ``scorecam``) at the last conv layer."""
    with quiet():
        cam = explainer.tfkv(name)(class_score(class_index), x[None], **_tfkv_layer_args(explainer), **options)
    return as_map(cam)


def gradcam(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM via tf-keras-vis ``Gradcam`` on the linear-output clone (reference for the fast one)."""
    return tfkv_cam(explainer, x, class_index, name="gradcam")


def gradcam_plus_plus(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al., 2018): channel weights from positive
    second-order gradient terms, which localises several instances of a class better."""
    return tfkv_cam(explainer, x, class_index, name="gradcam++")


def layercam(explainer: Explainer, x: np.ndarray, class_index: int) -> np.ndarray:
    """LayerCAM (Jiang et al., 2021) at the last conv layer via tf-keras-vis (reference for the fast one)."""
    return tfkv_cam(explainer, x, class_index, name="layercam")


def scorecam(explainer: Explainer, x: np.ndarray, class_index: int, *, max_n: int = SCORECAM_MAX_N) -> np.ndarray:
    """Faster Score-CAM (Wang et al., 2020): gradient-free. The ``max_n`` activation
    maps with the largest spatial variance mask the input; each is weighted by the
    softmax score of the class on its masked input."""
    import keras

    channels = int(explainer.model.get_layer(name=explainer.last_conv_layer).output.shape[-1])
    n = min(max_n, channels)
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # Score-CAM calls predict(): no progress bars
    try:
        return tfkv_cam(explainer, x, class_index, name="scorecam", max_N=n, batch_size=n)
    finally:
        if interactive:
            keras.config.enable_interactive_logging()
