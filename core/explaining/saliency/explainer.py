"""The :class:`Explainer`: one model prepared for explanation, its traced functions built once.

Maps are computed at the model input's own ``(H, W)``; nothing here assumes a
square input. TensorFlow is imported inside functions.
"""

import contextlib
import math
import warnings

import numpy as np

# Strides whose last layer is a natural place for a class activation map: the
# end of each stage of a MobileNet/EfficientNet-like backbone.
STAGE_STRIDES = (8, 16, 32)


class Explainer:
    """Everything needed to explain one model, built lazily and kept for reuse.

    Args:
        model: a flat functional Keras model with a softmax output.
        last_conv_layer: name of the layer Grad-CAM weights (the last stage's output).
    """

    def __init__(self, model, last_conv_layer: str):
        self.model = model
        self.last_conv_layer = last_conv_layer
        self.input_size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        self._traced = {}
        self._linear_model = None
        self._tfkv = {}
        self._stages = None

    @classmethod
    def of(cls, folder, model=None) -> "Explainer":
        """The explainer of a model folder: a path or a ``core.serving.folder.ModelFolder`` (opened once, shared).

        ``model`` replaces the folder's own Keras model (an already loaded one).
        """
        from core.serving.folder import ModelFolder

        folder = ModelFolder.open(folder)
        return cls(folder.model if model is None else model, folder.last_conv_layer)

    def traced(self, key, build):
        """A traced function cached under ``key``; ``build(explainer)`` makes it once."""
        if key not in self._traced:
            self._traced[key] = build(self)
        return self._traced[key]

    def stage_layers(self) -> dict:
        """``{stride: layer name}``: the last layer at each stride of :data:`STAGE_STRIDES`.

        A layer is at stride ``s`` when its output is ``ceil(H / s) × ceil(W / s)``
        (TensorFlow's ``same`` padding). The deepest stride always maps to
        ``last_conv_layer``; strides the model does not have are left out.
        """
        if self._stages is None:
            self._stages = _stage_layers(self.model, self.input_size, self.last_conv_layer)
        return self._stages

    def stage_layer(self, stride: int) -> str:
        """The stage layer at ``stride``, else the one at the nearest stride (the deeper one on a tie)."""
        stages = self.stage_layers()
        nearest = min(stages, key=lambda s: (abs(math.log2(s) - math.log2(stride)), -s))
        return stages[nearest]

    def layer_shape(self, name: str) -> tuple:
        """The spatial ``(h, w)`` of a layer's output."""
        return tuple(int(d) for d in self.model.get_layer(name=name).output.shape[1:3])

    def tfkv(self, name: str):
        """A cached tf-keras-vis explainer: ``gradcam``, ``gradcam++``, ``scorecam``, ``layercam``, ``saliency``."""
        if name not in self._tfkv:
            self._tfkv[name] = _make_tfkv(self, name)
        return self._tfkv[name]

    def weights_changed(self) -> None:
        """Forget the tf-keras-vis explainers after the model's weights were changed in place.

        They work on a clone of the model, which would keep the old weights; the
        fast path's traced functions read the model's variables and need nothing.
        """
        self._tfkv, self._linear_model = {}, None

    def linear_model(self):
        """One clone of the model with a linear output, shared by all tf-keras-vis gradient explainers.

        ``ReplaceToLinear`` needs a clone (it edits the output layer in place);
        sharing one clone keeps memory to a single extra copy of the weights.
        """
        if self._linear_model is None:
            with quiet():
                from tf_keras_vis.gradcam import Gradcam
                from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

                self._linear_model = Gradcam(self.model, model_modifier=ReplaceToLinear(), clone=True).model
        return self._linear_model


def _stage_layers(model, size: tuple, last_conv_layer: str) -> dict:
    height, width = size

    def at(stride):
        return math.ceil(height / stride), math.ceil(width / stride)

    found = {}
    for layer in model.layers:
        shape = getattr(layer.output, "shape", ())
        for stride in STAGE_STRIDES:
            if len(shape) == 4 and tuple(shape[1:3]) == at(stride):
                found[stride] = layer.name
    deepest = tuple(int(d) for d in model.get_layer(name=last_conv_layer).output.shape[1:3])
    last_stride = next((s for s in (1, 2, 4, 8, 16, 32, 64) if at(s) == deepest), round(height / deepest[0]))
    found = {s: n for s, n in found.items() if s < last_stride}
    found[last_stride] = last_conv_layer
    return dict(sorted(found.items()))


def _make_tfkv(explainer: Explainer, name: str):
    with quiet():  # tf-keras-vis 0.8.7 imports a deprecated scipy namespace
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.layercam import Layercam
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.scorecam import Scorecam

    if name == "scorecam":
        # Score-CAM scores masked inputs by their softmax probability: keep the softmax.
        return Scorecam(explainer.model)
    classes = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam, "saliency": Saliency}
    return classes[name](explainer.linear_model(), clone=False)


@contextlib.contextmanager
def quiet():
    """Silence tf-keras-vis's and Keras's warnings (deprecations, retracing) for one call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def output_logits(model):
    """``(tensor, head)``: a graph tensor and a function turning it into logits.

    Gradients of a saturated softmax vanish, so maps differentiate the logits.
    A Dense softmax head is re-applied linearly; a separate softmax layer is
    skipped; anything else falls back to ``log(p)``.
    """
    import tensorflow as tf

    layer = model.get_layer(name=model.output_names[0])
    activation = getattr(layer, "activation", None)
    is_softmax = getattr(activation, "__name__", "") == "softmax"
    if is_softmax and hasattr(layer, "kernel") and type(layer).__name__ == "Dense":
        use_bias = getattr(layer, "use_bias", True)
        return layer.input, lambda f: tf.matmul(f, layer.kernel) + (layer.bias if use_bias else 0.0)
    if is_softmax and type(layer).__name__ in ("Activation", "Softmax"):
        return layer.input, lambda f: f
    return model.outputs[0], lambda p: tf.math.log(tf.maximum(p, 1e-12))


def class_score(class_index: int):
    """tf-keras-vis's score for one class."""
    from tf_keras_vis.utils.scores import CategoricalScore

    return CategoricalScore([int(class_index)])


def normalize_map(values: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] as float32; a flat or non-finite map becomes zeros."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high - low <= 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def as_map(result) -> np.ndarray:
    """tf-keras-vis output ``(1, H, W)`` -> float32 ``(H, W)`` in [0, 1]."""
    return normalize_map(np.asarray(result, dtype=np.float32).reshape(np.shape(result)[-2:]))
