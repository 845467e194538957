"""Round a model's convolution kernels onto TFLite's int8 grid so that each layer keeps its float output.

TFLite's full-integer converter quantises each convolution kernel per output
channel, symmetrically: ``scale = max|w| / 127``, codes in -127..127, each weight
rounded to the nearest code. Nearest rounding is not the best choice for the
layer: what matters is the layer's output, and by the time a layer runs in the
int8 file its input already carries the error of every layer before it and of
the int8 activations.

For each ``Conv2D`` and ``DepthwiseConv2D`` in graph order, :func:`round_weights`
takes two inputs on a sample of images: ``X``, what the layer sees in the float
model, and ``X̃``, what it sees in the model as the int8 file runs it (kernels
before it already rounded, every convolution input fake-quantised to 8 bits with
the float model's ranges). It then

1. rounds the kernel onto the grid column by column, pushing each column's
   rounding error onto the columns not yet rounded along the inverse Hessian of
   ``X̃`` (GPTQ, Frantar et al. 2023); the largest weight of each output channel
   is pinned to ±127 codes so that the converter's ``max|w| / 127`` finds the
   same grid and keeps the codes as they are (BatchNorm folding scales a whole
   output channel, which leaves the codes unchanged);
2. moves the mean difference between the float output ``X Wᵀ`` and the rounded
   layer's ``X̃ Qᵀ`` into the BatchNorm (or the bias) after the layer, which the
   converter folds into the int32 bias (empirical bias correction).

On the shipped model's 1,432 validation images, int8 file against the Keras model
(mean KL divergence of the probabilities; top-1 agreement moves by ±0.5 % between
runs that differ by noise): nearest rounding 0.0299 (94.6 % agreement), this module
0.0150 (96.0 % and 96.9 % in two runs that sampled the mean inputs differently).
Also tried: GPTQ on the float inputs ``X``, 0.0158 with the bias correction and
0.0201 without; a least-squares kernel mapping ``X̃`` to ``X Wᵀ`` before rounding,
95.0 % agreement (its shrinkage adds up over 52 layers); equalising the channel
ranges of the expand and depthwise outputs first (cross-layer equalisation), 0.0140,
not worth the float change it makes (1 flip in 1,432); folding the input
normalisation into the first convolution, no gain.

The calibration images go through the graph once, operation by operation
(:func:`simulate`): each layer is rounded on the input it sees there and then runs
with its rounded kernel, so the cost is one forward pass plus the per-layer solves
(60–80 s and a 3 GB peak for the shipped model's 52 layers on 200 images, 2-core CPU).

The result is an ordinary float Keras model: the converter then quantises its
kernels without further loss. Only top-level layers of a functional model are
visited, and only :func:`roundable` ones; other kernels are left as they are (the
converter rounds them).
"""

from collections.abc import Callable

import numpy as np

KERNEL_LAYERS = ("Conv2D", "DepthwiseConv2D")
CODES = 127  # symmetric int8 weights: codes -127..127, TFLite's narrow range
DAMP = 0.01  # Hessian damping, as a share of its mean diagonal
ROWS_PER_BATCH = 4096  # sampled patch positions per batch of images, per layer
BATCH = 32


def round_weights(model, images: np.ndarray, *, damp: float = DAMP, rows_per_batch: int = ROWS_PER_BATCH,
                  seed: int = 0, progress: Callable[[int, int, str], None] | None = None):
    """A copy of ``model`` whose convolution kernels lie on TFLite's per-channel int8 grid.

    One pass through the graph, as :func:`simulate` runs it: each layer is rounded on the
    input it sees there, and then runs with its rounded kernel for the layers after it.

    Args:
        model: a functional Keras model taking float32 pixels, each layer called once.
        images: ``(n, H, W, 3)`` calibration images (the model's training split).
        damp: Hessian damping as a share of its mean diagonal.
        rows_per_batch: patch positions sampled per batch of images for each layer's statistics.
        seed: seeds the sampled positions.
        progress: called as ``progress(done, total, layer_name)`` after each layer.

    Returns:
        A new Keras model (the input model is not changed).
    """
    import keras

    rounded = keras.models.clone_model(model)
    rounded.set_weights(model.get_weights())
    images = np.asarray(images, np.float32)
    layers = [layer for layer in rounded.layers if roundable(layer)]
    ranges, float_means = float_inputs(model, layers, images)
    rng = np.random.default_rng(seed)
    position = {layer.name: done for done, layer in enumerate(layers, start=1)}

    def round_on(layer, quantised_input: np.ndarray) -> None:
        stats = _statistics(quantised_input, layer, rows_per_batch, rng)
        _round_layer(rounded, layer, {**stats, "mean_x": float_means[layer.name]}, damp)
        if progress is not None:
            progress(position[layer.name], len(layers), layer.name)

    simulate(rounded, images, ranges, before=round_on)
    return rounded


def simulate(model, images: np.ndarray, ranges: dict, *, before: Callable | None = None) -> np.ndarray:
    """``model``'s output on ``images`` with the input of each layer named in ``ranges`` fake-quantised
    to 8 bits on its ``(min, max)``: the convolution inputs as the int8 file sees them. A range of
    None leaves that input float.

    The graph runs operation by operation on all images, keeping only the tensors still to be
    read. ``before(layer, quantised_input)`` is called before each named layer runs, and may
    change its weights (and those of layers after it).
    """
    nodes, reads = _graph(model, ranges)
    live = {id(model.inputs[0]): np.asarray(images, np.float32)}
    for node in nodes:
        layer, sources = node.operation, [id(tensor) for tensor in node.input_tensors]
        values = {source: live[source] for source in sources}
        for source in sources:
            reads[source] -= 1
            if not reads[source]:
                del live[source]
        if layer.name in ranges:
            if ranges[layer.name] is not None:
                values[sources[0]] = _in_batches(lambda x, r=ranges[layer.name]: fake_quant(x, *r),
                                                 values[sources[0]])[0]
            if before is not None:
                before(layer, values[sources[0]])
        outputs = _run(node, values)
        live.update((id(tensor), value) for tensor, value in zip(node.outputs, outputs))
    return live[id(model.outputs[0])]


def _graph(model, ranges: dict) -> tuple:
    """The model's call nodes in the order Keras runs them, and how often each tensor is read (the
    model's output once more, so that it is kept). Keras's own node records (``_nodes_by_depth``,
    as ``Function._run_through_graph`` walks them) hold the call arguments; the pinned Keras
    version and a test over every architecture keep this honest."""
    from collections import Counter

    nodes, reads = [], Counter({id(model.outputs[0]): 1})
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            nodes.append(node)
            reads.update(id(tensor) for tensor in node.input_tensors)
    calls = Counter(node.operation.name for node in nodes)
    for name in ranges:
        if calls[name] != 1:
            raise ValueError(f"layer {name} is called {calls[name]} times; int8 rounding runs the graph "
                             "node by node and needs each rounded layer called once")
    return nodes, reads


def _run(node, values: dict) -> list:
    """A node's outputs on its input arrays (by tensor id), as arrays."""
    def call(*parts):
        args, kwargs = node.arguments.fill_in(dict(zip(values, parts)))
        return node.operation(*args, **kwargs)

    return _in_batches(call, *values.values())


def _in_batches(fn, *arrays) -> list:
    """``fn`` over the arrays' first axis, ``BATCH`` rows at a time; its output(s) as whole arrays."""
    n, outputs = len(arrays[0]), None
    for start in range(0, n, BATCH):
        result = fn(*(array[start:start + BATCH] for array in arrays))
        parts = [np.asarray(part) for part in (result if isinstance(result, (list, tuple)) else [result])]
        if outputs is None:
            outputs = [np.empty((n, *part.shape[1:]), part.dtype) for part in parts]
        for out, part in zip(outputs, parts):
            out[start:start + len(part)] = part
    return outputs


def roundable(layer) -> bool:
    """A plain ``Conv2D`` or ``DepthwiseConv2D`` (no groups, depth multiplier 1), which this module rounds."""
    kind = type(layer).__name__
    if kind == "Conv2D":
        return getattr(layer, "groups", 1) == 1
    return kind == "DepthwiseConv2D" and getattr(layer, "depth_multiplier", 1) == 1


def input_ranges(model, names: list, images: np.ndarray) -> dict:
    """``{layer name: (min, max)}`` of each named layer's input over ``images`` in ``model``."""
    return float_inputs(model, [model.get_layer(name) for name in names], images)[0]


def float_inputs(model, layers: list, images: np.ndarray) -> tuple:
    """One pass of ``images`` through the float ``model``: for each layer (by name), the range of its
    input (widened to hold 0, as the converter's) and the mean of its receptive fields (as
    :func:`patches` lays them out).

    Returns:
        ``({name: (min, max)}, {name: mean patch})``.
    """
    ranges, means = {}, {}

    def collect(layer, x: np.ndarray) -> None:
        ranges[layer.name] = (min(0.0, float(x.min())), max(0.0, float(x.max())))
        total, count = 0.0, 0
        for cols in _patch_batches(x, layer):
            total, count = total + cols.sum(0, dtype=np.float64), count + len(cols)
        means[layer.name] = total / count

    simulate(model, images, dict.fromkeys(layer.name for layer in layers), before=collect)
    return ranges, means


def fake_quant(x, low: float, high: float):
    """``x`` through 8-bit asymmetric quantisation on ``[low, high]`` (zero exactly representable)."""
    import tensorflow as tf

    return tf.quantization.fake_quant_with_min_max_args(x, min=low, max=high, num_bits=8)


def kernel_rows(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """A kernel as rows, one per output channel: ``(out, kh*kw*in)``, or ``(channels, kh*kw)`` for depthwise."""
    kh, kw, cin, last = kernel.shape
    if depthwise:
        return kernel.reshape(kh * kw, cin * last).T
    return kernel.reshape(kh * kw * cin, last).T


def rows_to_kernel(rows: np.ndarray, shape: tuple) -> np.ndarray:
    """The inverse of :func:`kernel_rows` (the same transpose for both kinds)."""
    return rows.T.reshape(shape)


def patches(x: np.ndarray, layer) -> np.ndarray:
    """The layer's receptive fields as rows: ``(positions, kh*kw*in)`` laid out as the kernel's rows.

    Depthwise layers give ``(positions, kh*kw, channels)``.
    """
    import tensorflow as tf

    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    channels = x.shape[-1]
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1):
        cols = x.reshape(-1, channels)
    else:
        cols = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
                                        padding=layer.padding.upper()).numpy().reshape(-1, kh * kw * channels)
    if type(layer).__name__ == "DepthwiseConv2D":
        return cols.reshape(-1, kh * kw, channels)
    return cols


def _patch_batches(x: np.ndarray, layer):
    """:func:`patches` of ``x``, ``BATCH`` images at a time."""
    for start in range(0, len(x), BATCH):
        yield patches(x[start:start + BATCH], layer)


def _statistics(quantised: np.ndarray, layer, rows_per_batch: int, rng) -> dict:
    """Of ``X̃``, the layer's receptive fields on its quantised input: ``X̃ᵀX̃ / n`` over sampled
    positions (per channel for depthwise layers) and the mean over all positions."""
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    hessian, total, count, sampled = 0.0, 0.0, 0, 0
    for xt in _patch_batches(quantised, layer):
        total, count = total + xt.sum(0, dtype=np.float64), count + len(xt)
        xt = xt[rng.choice(len(xt), size=min(rows_per_batch, len(xt)), replace=False)].astype(np.float64)
        hessian = hessian + (np.einsum("nkc,nlc->ckl", xt, xt) if depthwise else xt.T @ xt)
        sampled += len(xt)
    return {"H": hessian / sampled, "mean_xt": total / count}


def _round_layer(model, layer, stats: dict, damp: float) -> None:
    """Replace the layer's kernel by its rounded one and move the mean output shift into what follows."""
    weights = layer.get_weights()
    kernel = weights[0].astype(np.float64)
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    rows = kernel_rows(kernel, depthwise)
    if depthwise:  # one row per channel, each with its own (kh*kw) statistics
        quantised = np.stack([_round_rows(rows[c:c + 1], stats["H"][c], damp)[0] for c in range(len(rows))])
        shift = np.einsum("kc,ck->c", stats["mean_x"], rows) - np.einsum("kc,ck->c", stats["mean_xt"], quantised)
    else:
        quantised = _round_rows(rows, stats["H"], damp)
        shift = rows @ stats["mean_x"] - quantised @ stats["mean_xt"]
    weights[0] = rows_to_kernel(quantised, kernel.shape).astype(np.float32)
    layer.set_weights(weights)
    _absorb_shift(model, layer, shift)


def _round_rows(rows: np.ndarray, hessian: np.ndarray, damp: float) -> np.ndarray:
    """Rows ``W`` (out, d) rounded onto their per-row grid by GPTQ along ``hessian`` (``X̃ᵀX̃ / n``), damped."""
    hessian = np.array(hessian, dtype=np.float64)
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    return gptq(rows, hessian + damp * np.mean(np.diag(hessian)) * np.eye(len(hessian)))


def gptq(rows: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Round ``rows`` (out, d) onto the symmetric per-row int8 grid, compensating along ``hessian``'s inverse.

    Each row's scale is ``max|w| / 127`` of the row given; the largest weight of each row is
    pinned to ±127 codes, so the grid a converter derives from the result is the same.
    """
    work = np.array(rows, dtype=np.float64)
    scale = grid_scale(work)
    pinned = np.abs(work).argmax(1)
    pinned_sign = np.sign(work[np.arange(len(work)), pinned])
    inverse = np.linalg.cholesky(np.linalg.inv(hessian)).T  # upper Cholesky factor of H⁻¹
    out = np.zeros_like(work)
    for j in range(work.shape[1]):
        column = work[:, j]
        codes = np.clip(np.round(column / scale), -CODES, CODES)
        here = pinned == j
        codes[here] = pinned_sign[here] * CODES
        out[:, j] = codes * scale
        error = (column - out[:, j]) / inverse[j, j]
        work[:, j + 1:] -= np.outer(error, inverse[j, j + 1:])
    return out


def _absorb_shift(model, layer, shift: np.ndarray) -> None:
    """Add ``shift`` to the layer's output: into the BatchNorm that follows it, else into its bias."""
    following = [other for other in model.layers if other is not layer and _input_of(other) is layer.output]
    batchnorm = next((o for o in following if type(o).__name__ == "BatchNormalization"), None)
    if batchnorm is not None and len(following) == 1:
        names = [v.path.split("/")[-1] for v in batchnorm.weights]
        values = batchnorm.get_weights()
        values[names.index("moving_mean")] = (values[names.index("moving_mean")] - shift).astype(np.float32)
        batchnorm.set_weights(values)
    elif getattr(layer, "use_bias", False):
        values = layer.get_weights()
        values[1] = (values[1] + shift).astype(np.float32)
        layer.set_weights(values)


def _input_of(layer):
    try:
        return layer.input
    except (AttributeError, ValueError):
        return None


def grid_codes(kernel: np.ndarray, depthwise: bool) -> np.ndarray:
    """``(codes, scales)`` of a kernel on its per-channel int8 grid (codes as floats, exact when on the grid)."""
    rows = kernel_rows(np.asarray(kernel, np.float64), depthwise)
    scale = grid_scale(rows)
    return rows / scale[:, None], scale


def grid_scale(rows: np.ndarray) -> np.ndarray:
    """Each row's int8 step as TFLite derives it, ``max|w| / 127`` (1 for an all-zero row)."""
    scale = np.abs(rows).max(1) / CODES
    scale[scale == 0] = 1.0
    return scale

