"""Export the graph that Predict's private mode runs in the browser: verdict, gate and map in one file.

The browser gets one TFLite file with three outputs, so the image needs no
server at any step:

* ``probabilities``: the model's own softmax (before temperature scaling), ``(1, C)``;
* ``gate``: the out-of-distribution parts ``[head / threshold, distance / threshold]``,
  ``(1, 2)``; the score is their maximum, exactly as ``core.serving.ood.FeatureStatistics``
  computes it on the server: the channel statistics of ``model.json["ood"]["layers"]``
  are taken inside the graph, then standardised and scored by the logistic head and
  the principal-subspace distance of ``ood.npz``;
* ``cam``: the class activation map of every class on the last convolution,
  ``(1, h, w, C)`` (the last stage's features times the classifier's weights), so the
  browser can show where the predicted class's evidence lies.

The file is float32 (``none``) so that the gate's statistics keep the precision
its thresholds were fitted with; it is written beside the other exports as
``export/model_private.tflite`` with a JSON card. Only folders whose gate is
``feature_statistics`` can be exported this way.

Command line::

    lesionlab private-export [--model DIR] [--out FILE]
"""

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from core.contracts import cli_args, validation
from core.contracts.runfolder import EXPORT_DIR, export_file
from core.serving import export, modelio
from core.serving import ood as ood_scorers
VARIANT = "private"  # the export's name: export/model_private.tflite
OUTPUTS = ("probabilities", "gate", "cam")


def private_path(model_dir: Path) -> Path:
    """Where the private-mode export of a model folder lives."""
    return Path(model_dir) / EXPORT_DIR / export_file(VARIANT)


def gate_model(model, meta: dict, fitted: ood_scorers.StatisticsModel):
    """A Keras model returning ``[probabilities, gate parts, cam]`` (see the module docstring)."""
    import keras
    from keras import ops

    entry = meta["ood"]
    stats = []
    for name in entry["layers"]:
        x = model.get_layer(name).output
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        # population standard deviation as numpy computes it in core.serving.ood.channel_statistics: two passes,
        # since E[x²] - E[x]² loses the variance of bright, flat channels in float32
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2)))
        mean = ops.squeeze(mean, axis=(1, 2))
        stats += [mean, std]
    features = keras.layers.Concatenate(axis=-1, name="ood_statistics")(stats)
    gate = GateScore(fitted, entry["thresholds"], name="gate")(features)
    cam = _class_maps(model, meta)
    return keras.Model(inputs=model.inputs, outputs=[model.outputs[0], gate, cam])


def _class_maps(model, meta: dict):
    """``(N, h, w, C)``: the last convolution's features projected on the classifier's weights."""
    from keras import ops

    dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"][-1]
    kernel, bias = dense.get_weights()
    features = model.get_layer(meta["last_conv_layer"]).output
    return ops.einsum("nhwk,kc->nhwc", features, ops.convert_to_tensor(kernel)) + bias


def _gate_layer_class():
    import keras
    from keras import ops

    class _GateScore(keras.layers.Layer):
        """``[head / threshold, distance / threshold]`` of ``core.serving.ood.StatisticsModel`` in the graph."""

        def __init__(self, fitted, thresholds, **kwargs):
            super().__init__(**kwargs)
            self.fitted, self.thresholds = fitted, thresholds

        def build(self, input_shape):
            f = self.fitted
            for name, value in (("centre", f.centre), ("scale", f.scale), ("coef", f.coef),
                                ("components", f.components), ("variances", f.variances)):
                weight = self.add_weight(name=name, shape=np.shape(value), trainable=False,
                                         initializer=keras.initializers.Constant(np.asarray(value, np.float32)))
                setattr(self, f"w_{name}", weight)

        def call(self, features):
            f = self.fitted
            x = (features - self.w_centre) / self.w_scale
            z = ops.clip(ops.sum(x * self.w_coef, axis=-1) + f.intercept, -50.0, 50.0)
            head = ops.sigmoid(z)
            inside = ops.matmul(x, ops.transpose(self.w_components))
            residual = ops.sum(ops.square(x - ops.matmul(inside, self.w_components)), axis=-1)
            squared = ops.sum(ops.square(inside) / self.w_variances, axis=-1) + residual / f.residual_variance
            distance = ops.sqrt(squared / float(x.shape[-1]))
            return ops.stack([head / self.thresholds["head"], distance / self.thresholds["distance"]], axis=-1)

    return _GateScore


def GateScore(fitted, thresholds, **kwargs):  # noqa: N802 (reads as the layer it builds)
    """The gate layer; its class is made on first use so that importing this module needs no Keras."""
    return _gate_layer_class()(fitted, thresholds, **kwargs)


def build(model_dir: Path, model=None) -> export.Export:
    """The private-mode graph of a model folder as a float32 TFLite file, with its card.

    Raises:
        export.ExportError: not a model folder, or its gate is not ``feature_statistics``.
    """
    meta = export.check_request(model_dir)
    fitted = ood_scorers.load_statistics(model_dir)
    if (meta.get("ood") or {}).get("method") != ood_scorers.STATISTICS or fitted is None:
        raise export.ExportError(f"{model_dir}: private mode needs a feature_statistics gate (ood.npz)")
    model = model if model is not None else export.load_keras(model_dir)
    content = export.convert(gate_model(model, meta, fitted), modelio.input_size(meta), quantize="none")
    return export.Export(content, card(meta, content, model_dir))


def card(meta: dict, content: bytes, model_dir: Path) -> dict:
    """The JSON beside the file: how to feed it and what each output means."""
    height, width = modelio.input_size(meta)
    return {
        "format": "tflite", "purpose": "Predict's private mode (runs in the browser)",
        "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(), "quantization": "none",
        "classes": list(meta["classes"]), "input": {"shape": [1, height, width, 3], "dtype": "float32",
                                                     "range": [0, 255], "layout": "NHWC, RGB"},
        "outputs": {"probabilities": "softmax in the order of 'classes', before temperature scaling",
                    "gate": "[head / threshold, distance / threshold]; score = max; flagged when score > threshold",
                    "cam": f"class activation maps of '{meta['last_conv_layer']}', one channel per class"},
        "gate_threshold": float(meta["ood"]["threshold"]), "temperature": meta.get("temperature"),
        "source_model": {"run_id": meta.get("run_id"), "model_sha256": export.model_sha256(model_dir)},
    }


def main(argv=None) -> int:
    """Command-line entry point: 0 on success, 2 for a folder that cannot be exported."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("private-export"), description=__doc__.split("\n")[0])
    cli_args.add_model_argument(parser, needs=(ood_scorers.OOD_FILE,))
    parser.add_argument("--out", type=Path, help="the file to write (default: export/model_private.tflite)")
    args = parser.parse_args(argv)
    try:
        model_dir = validation.check_model_folder(args.model)
        out, card_file = export.write(build(model_dir), args.out or private_path(model_dir))
    except (export.ExportError, validation.InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {card_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
