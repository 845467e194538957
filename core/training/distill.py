"""Knowledge distillation for the trainer: the loss and the label metrics of a student (TensorFlow).

A student run (``lesionlab train --soft-targets FILE``) feeds each image a
target of ``2K`` columns: its one-hot label, then the teachers' ensemble
probabilities already softened by the distillation temperature ``T``
(:func:`core.training.soft_targets.training_targets`). The model itself is the same flat
graph as any run's; only its loss and the way its training metrics read the
target differ, and both are registered so a checkpoint loads with them.
"""

import keras
from keras import ops

_EPS = 1e-7


@keras.saving.register_keras_serializable(package="ham10000")
class DistillationLoss(keras.losses.Loss):
    """Hinton et al. (2015): ``w · T² · KL(teacher_T ‖ student_T) + (1 − w) · CE(label, student)``.

    ``student_T`` is ``softmax(log p / T)`` of the student's probabilities, which
    equals ``softmax(logits / T)``; ``T²`` keeps the soft term's gradients at the
    scale of the hard term's whatever ``T`` is. Sample weights (class weights)
    weigh both terms.

    Args:
        num_classes: K; ``y_true`` holds the label in its first K columns and the
            softened teacher probabilities in the next K.
        temperature: the distillation temperature ``T`` (the targets were softened with it).
        weight: ``w``, the soft term's share of the loss.
        label_smoothing: applied to the label's cross-entropy.
    """

    def __init__(self, num_classes: int, temperature: float, weight: float, label_smoothing: float = 0.0,
                 name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.temperature, self.weight = num_classes, temperature, weight
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        k, t = self.num_classes, self.temperature
        labels, soft = y_true[..., :k], y_true[..., k:]
        hard = keras.losses.categorical_crossentropy(labels, y_pred, label_smoothing=self.label_smoothing)
        student = ops.log_softmax(log_probabilities(y_pred) / t, axis=-1)
        kl = ops.sum(soft * (ops.log(ops.clip(soft, _EPS, 1.0)) - student), axis=-1)
        return self.weight * t * t * kl + (1.0 - self.weight) * hard

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "temperature": self.temperature,
                "weight": self.weight, "label_smoothing": self.label_smoothing}


def log_probabilities(y_pred):
    """``log p`` of a softmax output, from its logits when the graph has them (as Keras' cross-entropy does).

    ``log(clip(p))`` alone has no gradient where ``p`` is below the clip: a student
    confidently wrong there could never be pulled back, and one was seen to stay stuck.
    """
    try:
        op = y_pred.op  # a traced graph (training); eager tensors have no op
    except AttributeError:
        op = None
    if op is not None and op.type == "Softmax":
        return ops.log_softmax(op.inputs[0], axis=-1)
    return ops.log(ops.clip(y_pred, _EPS, 1.0))


@keras.saving.register_keras_serializable(package="ham10000")
class OnLabels(keras.metrics.Metric):
    """A training metric scored against the label columns of a distillation target (the first K)."""

    def __init__(self, metric, num_classes: int, name: str | None = None, **kwargs):
        if isinstance(metric, dict):
            metric = keras.saving.deserialize_keras_object(metric)
        super().__init__(name=name or metric.name, **kwargs)
        self.metric, self.num_classes = metric, num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        return self.metric.update_state(y_true[..., : self.num_classes], y_pred, sample_weight=sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()

    def get_config(self):
        return {**super().get_config(), "metric": keras.saving.serialize_keras_object(self.metric),
                "num_classes": self.num_classes}


def loss_and_metrics(args, num_classes: int, metrics: list) -> tuple:
    """The distillation loss of a run's options and its training metrics made to read the labels."""
    loss = DistillationLoss(num_classes, args.distill_temperature, args.distill_weight, args.label_smoothing)
    return loss, [OnLabels(m, num_classes) for m in metrics]
