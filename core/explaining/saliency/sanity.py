"""Sanity checks for saliency maps (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018).

Cascading randomisation: the model's weights are re-drawn block by block from
the top (the classifier head first, then the last stage, and so on down). A
method that explains *the model* gives maps that change as the weights go; a
method whose maps stay rank-correlated with the trained model's maps is
explaining the image (its edges, its contrast), not what the model learnt.

Re-drawn weights: every kernel and bias is replaced by Gaussian noise with
the original tensor's standard deviation (mean 0), so activations keep their
scale; batch-normalisation statistics are kept (they only rescale channels).
"""

import math

import numpy as np
from scipy import stats

_KERNELS = ("kernel", "bias", "depthwise_kernel", "pointwise_kernel")


def weight_groups(model) -> list:
    """``[(name, stride, [layers])]``: the model's weighted layers in blocks, from the top.

    Layers ``block_N_*`` (MobileNetV2, EfficientNet) form one block each;
    other layers go alone (a batch norm joins the conv it follows, ``X_bn`` with
    ``X``). ``stride`` is the block's output stride (0 for a layer without a
    spatial output: the classifier head).
    """
    height = int(model.inputs[0].shape[1])
    groups = {}
    for layer in model.layers:
        if layer.weights:
            parts = layer.name.split("_")
            key = "_".join(parts[:2]) if parts[0] == "block" and len(parts) > 2 else layer.name.removesuffix("_bn")
            groups.setdefault(key, []).append(layer)
    return [(key, _output_stride(layers, height), layers) for key, layers in reversed(groups.items())]


def _output_stride(layers, height: int) -> int:
    shape = getattr(layers[-1].output, "shape", ())
    return 2 ** round(math.log2(height / int(shape[1]))) if len(shape) == 4 else 0


def depths(groups: list) -> list:
    """Checkpoints of the cascade: ``[(label, number of groups randomised from the top)]``.

    One checkpoint after the head, then one after each stride's blocks are all
    randomised (``"… to stride 32"`` = head and the whole last stage), then all.
    """
    marks, seen = [], None
    for i, (_, stride, _) in enumerate(groups):
        if seen is not None and stride != seen:
            marks.append((_label(seen), i))
        seen = stride
    marks.append(("all weights", len(groups)))
    return marks


def _label(stride: int) -> str:
    return "head" if stride == 0 else f"down to stride {stride}"


def randomise(layers, rng: np.random.Generator) -> None:
    """Replace the kernels and biases of ``layers`` in place by Gaussian noise of the same spread."""
    for layer in layers:
        for weight in layer.weights:
            if weight.name.split("/")[-1].split(":")[0] not in _KERNELS:
                continue
            values = np.asarray(weight.numpy())
            spread = float(values.std()) or 0.0
            weight.assign(rng.normal(0.0, spread, values.shape).astype(values.dtype))


def copy_model(model):
    """A fresh copy of a functional model with the same weights (to randomise without touching the original)."""
    import keras

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps over their pixels; 0 when either map is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)
