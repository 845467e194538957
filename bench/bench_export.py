"""Parity, size and latency of the TFLite exports of a model, per quantisation, on its test split.

For each quantisation: top-1 agreement with the Keras model and the largest
probability difference on every image of the split (decoded once, as serving
does, and fed to both), balanced accuracy of each against the truth, the file
size and the p50 latency of one image in the LiteRT interpreter (Keras p50 on the
same image beside it). A reference line feeds the Keras model the same images with
uniform noise of at most one grey level per pixel (seeded): how often an invisible
change of the input alone flips the top class, the scale on which to read the
quantised files' disagreement. int8 is measured twice, side by side: with its kernels
rounded to keep each layer's output (the default) and with the converter's nearest
rounding. Targets: float32 agrees on 100 % of test images with a largest difference
<= 1e-4; int8 agrees on >= 98 % and is <= 1/3 of the float size.

    HAM10000_DIR=... .venv/bin/python bench/bench_export.py [--model DIR] [--split test]
        [--quantize none,float16,dynamic,int8] [--threads 2] [--save DIR] [--no-nearest]

``--save DIR`` writes each file as ``DIR/model_<quantisation>.tflite`` with its card,
the card's parity block holding these figures: copied into a model folder's
``export/``, the Evaluate page offers them as they are.
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.serving import export, modelio  # noqa: E402

from core.evaluation import metrics

from core.contracts import paths


def split_images(model_dir: Path, meta: dict, split: str):
    """``(pixels uint8, y_true)`` of one split of the model's own split, decoded as serving does."""
    frame, table, origin = export.model_split(model_dir, meta, "the benchmark")
    ids = set(table.loc[table["split"] == split, "image_id"])
    rows = frame[frame["image_id"].isin(ids)].sort_values("image_id")
    print(f"{split} split: n = {len(rows):,} images (split from {origin})")
    pixels = export.decode_images(rows["path"], modelio.input_size(meta))
    return pixels, metrics.encode_labels(rows["dx"], meta["classes"])


def _probabilities(forward, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate([forward(tf.constant(pixels[i:i + batch_size], tf.float32)).numpy()
                           for i in range(0, len(pixels), batch_size)]).astype(np.float64)


def keras_outputs(model, pixels: np.ndarray, noise: float = 1.0, seed: int = 0) -> tuple:
    """``(probabilities, p50 ms of one image, probabilities with ±noise grey levels)`` of the Keras model."""
    import tensorflow as tf

    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    probs = _probabilities(forward, pixels)
    jitter = np.random.default_rng(seed).uniform(-noise, noise, pixels.shape)
    noisy = _probabilities(forward, np.clip(pixels + jitter, 0, 255).astype(np.float32))
    one = tf.constant(pixels[:1], tf.float32)
    forward(one)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        forward(one).numpy()
        times.append(time.perf_counter() - start)
    return probs, float(np.median(times) * 1000), noisy


def agreement(reference: np.ndarray, probs: np.ndarray, y_true) -> tuple:
    """``(the table's parity and balanced-accuracy columns, export.parity's figures)`` of ``probs``
    against the Keras model's ``reference`` on the same images."""
    figures = export.parity(reference, probs)
    columns = {"agree": figures["top1_agreement"], "disagree n": round((1 - figures["top1_agreement"]) * figures["n"]),
               "max diff": figures["max_abs_diff"], "mean diff": figures["mean_abs_diff"],
               "bal acc": metrics.balanced_accuracy(y_true, probs.argmax(1), reference.shape[1])}
    return columns, figures


def measure(model_dir: Path, model, quantize: str, pixels, reference, y_true, args, rounding: str = "gptq") -> tuple:
    """Convert, run every image, and return ``(row for the table, export with test figures in its card)``."""
    start = time.perf_counter()
    result = export.build(model_dir, quantize=quantize, representative=args.representative, parity_n=0, model=model,
                          rounding=rounding)
    seconds = time.perf_counter() - start
    runner = export.TFLiteRunner(result.content, num_threads=args.threads)
    columns, figures = agreement(reference, runner.predict(pixels), y_true)
    result.card["parity"] = {**figures, "split": args.split, "reference": "the Keras model on the same decoded images",
                             "balanced_accuracy": columns["bal acc"]}
    label = quantize if quantize != "int8" or rounding == "gptq" else f"int8 {rounding}"
    row = {"quantisation": label, "MB": len(result.content) / 1e6, **columns,
           "p50 ms": runner.latency_ms(pixels[0], args.repeats), "convert s": seconds}
    return row, result


def noise_row(reference: np.ndarray, noisy: np.ndarray, y_true, noise: float) -> dict:
    """The reference line: the Keras model against itself on inputs off by at most ``noise`` grey levels."""
    return {"quantisation": f"keras ±{noise:g} grey", **agreement(reference, noisy, y_true)[0]}


def print_table(rows: list, keras_row: dict) -> None:
    """The figures, one line per file; sizes also as a share of the float32 file."""
    float_mb = next((r["MB"] for r in rows if r["quantisation"] == "none"), None)
    print(f"{'file':<16}{'MB':>7}{'of float':>9}{'agree':>9}{'disagree':>9}{'max diff':>10}{'mean diff':>10}"
          f"{'bal acc':>8}{'p50 ms':>8}{'convert s':>10}")
    for r in [keras_row, *rows]:
        share = f"{r['MB'] / float_mb:.0%}" if float_mb and "MB" in r and r["quantisation"] != "keras" else "–"
        agree = f"{r['agree']:.2%}" if "agree" in r else "–"
        size = f"{r['MB']:7.2f}" if "MB" in r else f"{'–':>7}"
        print(f"{r['quantisation']:<16}{size}{share:>9}{agree:>9}{r.get('disagree n', '–'):>9}"
              f"{r.get('max diff', float('nan')):10.2g}{r.get('mean diff', float('nan')):10.2g}"
              f"{r['bal acc']:8.3f}{r.get('p50 ms', float('nan')):8.1f}{r.get('convert s', float('nan')):10.0f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: models/default)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--quantize", default=",".join(export.QUANTIZATIONS), help="comma-separated quantisations")
    parser.add_argument("--representative", type=int, default=export.REPRESENTATIVE_IMAGES)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    parser.add_argument("--repeats", type=int, default=50, help="timed invocations for the p50 latency")
    parser.add_argument("--noise", type=float, default=1.0, help="grey levels of the reference line's input noise")
    parser.add_argument("--save", type=Path, default=None, help="write each file and its card into this folder")
    parser.add_argument("--no-nearest", action="store_true", help="skip int8 with the converter's nearest rounding")
    args = parser.parse_args(argv)
    model_dir = args.model or paths.default_model_dir()
    try:
        meta = export.check_request(model_dir, fmt="tflite", quantize="none")
        pixels, y_true = split_images(model_dir, meta, args.split)
    except export.ExportError as err:
        raise SystemExit(f"error: {err}") from err
    model = export.load_keras(model_dir)
    reference, keras_ms, noisy = keras_outputs(model, pixels, args.noise)
    k = reference.shape[1]
    keras_row = {"quantisation": "keras", "MB": (Path(model_dir) / modelio.MODEL_FILE).stat().st_size / 1e6,
                 "bal acc": metrics.balanced_accuracy(y_true, reference.argmax(1), k), "p50 ms": keras_ms}
    rows = [noise_row(reference, noisy, y_true, args.noise)]
    for quantize in args.quantize.split(","):
        row, result = measure(model_dir, model, quantize, pixels, reference, y_true, args)
        rows.append(row)
        if args.save:
            export.write(result, args.save / export.saved_path(".", quantize).name)
        if quantize == "int8" and not args.no_nearest:
            rows.append(measure(model_dir, model, quantize, pixels, reference, y_true, args, rounding="nearest")[0])
    h, w = modelio.input_size(meta)
    print(f"\nmodel {model_dir} ({meta.get('arch')}, input {h}×{w} h×w); {args.split} split n = {len(pixels):,}; "
          f"LiteRT threads {args.threads}; int8 calibrated on {args.representative} training images")
    print_table(rows, keras_row)


if __name__ == "__main__":
    main()
