"""Keras metrics the trainer reports per batch (TensorFlow)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ham10000")
class BalancedAccuracy(keras.metrics.Metric):
    """Mean per-class recall over the classes seen so far (the ISIC 2018 Task 3 metric)."""

    def __init__(self, num_classes: int, name: str = "balanced_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.confusion = self.add_variable(shape=(num_classes, num_classes), initializer="zeros", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = ops.one_hot(ops.argmax(y_true, axis=-1), self.num_classes)
        guess = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes)
        self.confusion.assign_add(ops.matmul(ops.transpose(truth), guess))

    def result(self):
        support = ops.sum(self.confusion, axis=1)
        recall = ops.divide_no_nan(ops.diagonal(self.confusion), support)
        present = ops.cast(support > 0, recall.dtype)
        return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
