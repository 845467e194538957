"""Export a model folder for on-device inference: a TFLite (LiteRT) file and its JSON card.

The Keras graph of a model folder takes RGB float32 pixels in 0..255 and
normalises them itself (the model folder contract), so the exported file does
too: an app decodes, resizes and feeds pixels, nothing more. TensorFlow's own
converter does the work; the LiteRT interpreter (``ai-edge-litert``) runs it.

Beside ``FILE.tflite`` goes ``FILE.json``: classes in output order, input
height × width, dtype and range, how to feed it, the temperature, the
quantisation, the source model's split hash and, when the dataset is present,
parity with the Keras model on a sample of its validation predictions.

Quantisations:

* ``none``: float32 weights and activations.
* ``float16``: float16 weights (half the size), float32 compute.
* ``dynamic``: int8 weights, activations quantised on the fly; needs no data.
* ``int8``: full integer, int8 weights (per channel) and activations, calibrated
  on a class-balanced sample of the model's own *training* split; float32 input
  and output, so every variant is fed the same way. Before conversion the
  convolution kernels are rounded onto the int8 grid on the same images so as to
  keep each layer's output (``core.serving.int8_rounding``, GPTQ); ``--rounding nearest``
  leaves the rounding to the converter.

Command line::

    lesionlab export [--model DIR] --format tflite [--quantize none|float16|dynamic|int8] --out FILE
                     [--representative N] [--parity N] [--rounding gptq|nearest]

A request that cannot be served (unknown format, quantisation or rounding, a folder
that is not a model, int8 without the dataset, an ``--out`` it must not write) exits
with status 2 and one line on stderr. int8 reports its rounding's progress on stderr
(it takes minutes).

``--out`` never lies inside a model folder (``FILE.json`` could be its ``model.json``)
and replaces only an earlier export: ``FILE.tflite`` and ``FILE.json`` may exist when
``FILE.json`` is an export card; ``--force`` lifts both refusals.
"""

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset import data, splits

from core.serving import modelio

from core.contracts import cli_args, paths, predictions, runfolder, validation
from core.dataset.images import ImageError, read_model_pixels

FORMATS = ("tflite",)
QUANTIZATIONS = {
    "none": "float32 weights and activations",
    "float16": "float16 weights, float32 compute",
    "dynamic": "int8 weights, activations quantised at run time (dynamic range)",
    "int8": "full integer: int8 weights (per channel) and activations, float32 input and output",
}
ROUNDINGS = {  # how int8 kernels are rounded onto their grid
    "gptq": "kernels rounded to keep each layer's output on the calibration images (GPTQ), then converted",
    "nearest": "the converter's own rounding to the nearest int8 code",
}
REPRESENTATIVE_IMAGES = 200
PARITY_IMAGES = 100
SEED = 0
PREPROCESSING_LAYERS = ("Rescaling", "Normalization")


class ExportError(ValueError):
    """A request that cannot be served; the message is one line for the user."""


@dataclass(frozen=True)
class Export:
    """An exported model held in memory: the file's bytes and its JSON card."""

    content: bytes
    card: dict

    @property
    def card_json(self) -> str:
        """The card as written beside the file."""
        return json.dumps(self.card, indent=2)


def check_request(model_dir: Path, *, fmt: str = "tflite", quantize: str = "none", rounding: str = "gptq") -> dict:
    """Validate a request before any TensorFlow import; returns the model's metadata.

    Raises:
        ExportError: unknown format, quantisation or rounding, or a folder that is not a model.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantisation {quantize!r}: expected one of {', '.join(QUANTIZATIONS)}")
    if rounding not in ROUNDINGS:
        raise ExportError(f"unknown rounding {rounding!r}: expected one of {', '.join(ROUNDINGS)}")
    try:
        return modelio.read_metadata(validation.check_model_folder(model_dir, "model"))
    except (validation.InputError, modelio.ModelFolderError) as err:
        raise ExportError(str(err)) from err


def _run_config(model_dir: Path) -> dict:
    """The run's ``config.json`` (seed and split fractions), or ``{}``."""
    try:
        return json.loads((Path(model_dir) / runfolder.CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _dataset(purpose: str) -> pd.DataFrame:
    """The dataset's image table, or an ExportError saying what it was needed for."""
    root = paths.dataset_dir()
    try:
        return data.load_dataset(root)
    except data.DatasetError as err:
        raise ExportError(f"{purpose} needs the HAM10000 images, which are not available ({err}); "
                          "set HAM10000_DIR or download the dataset") from err


def model_split(model_dir: Path, meta: dict, purpose: str) -> tuple:
    """``(dataset table, split table, where the split came from)`` of the split the model was trained on.

    Raises:
        ExportError: no dataset, or no split with the model's hash; the message starts with ``purpose``.
    """
    frame = _dataset(purpose)
    try:
        table, origin = splits.split_of_model(model_dir, frame, meta.get("split_sha256"), config=_run_config(model_dir))
    except ValueError as err:
        raise ExportError(f"{purpose}: {err}") from err
    return frame, table, origin


def representative_sample(model_dir: Path, meta: dict, *, n: int = REPRESENTATIVE_IMAGES, seed: int = SEED) -> tuple:
    """A class-balanced, seeded sample of the model's own training images, decoded as serving does.

    Returns:
        ``(pixels, info)``: ``(n, H, W, 3)`` uint8 model inputs and a dict for the card
        (split, n, seed, where the split came from).

    Raises:
        ExportError: no dataset, or no split with the model's hash.
    """
    frame, table, origin = model_split(model_dir, meta, "int8 calibration")
    train_ids = set(table.loc[table["split"] == "train", "image_id"])
    rows = balanced_sample(frame[frame["image_id"].isin(train_ids)], n, seed)
    pixels = decode_images(rows["path"], modelio.input_size(meta))
    if origin == str(Path(model_dir) / splits.SPLIT_FILE):  # no machine's path in a card that may be shipped
        origin = f"{splits.SPLIT_FILE} in the model folder"
    info = {"split": "train", "n": int(len(pixels)), "seed": seed, "class_balanced": True, "split_source": origin}
    return pixels, info


def balanced_sample(frame: pd.DataFrame, n: int, seed: int = SEED) -> pd.DataFrame:
    """About ``n`` rows with the classes (``dx``) as equal as their sizes allow, seeded."""
    rng = np.random.default_rng(seed)
    groups = [g.iloc[rng.permutation(len(g))] for _, g in sorted(frame.groupby("dx"), key=lambda kv: kv[0])]
    picked, quota = [], n
    for i, group in enumerate(sorted(groups, key=len)):
        take = min(len(group), quota // (len(groups) - i))
        picked.append(group.iloc[:take])
        quota -= take
    return pd.concat(picked).sort_values("image_id") if picked else frame.iloc[:0]


def decode_images(image_paths, size) -> np.ndarray:
    """Decode files to ``(n, H, W, 3)`` uint8 model inputs exactly as serving does."""
    try:
        return np.stack([read_model_pixels(p, size) for p in image_paths])
    except (ImageError, OSError) as err:
        raise ExportError(f"a dataset image cannot be read: {err}") from err


def load_keras(model_dir: Path):
    """The folder's Keras model; an unreadable file becomes a one-line ExportError."""
    try:
        return modelio.load_model(model_dir)
    except Exception as err:  # noqa: BLE001 (Keras raises many types for a broken file)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{Path(model_dir) / modelio.MODEL_FILE}: cannot be loaded ({first})") from err


def preprocessing_layers(model) -> list:
    """Names of the preprocessing layers (Rescaling, Normalization) inside a Keras model."""
    return [layer.name for layer in model.layers if type(layer).__name__ in PREPROCESSING_LAYERS]


def convert(model, size: tuple, *, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to TFLite with TensorFlow's converter; batch 1, NHWC float32 input.

    Args:
        model: a Keras model taking ``(N, H, W, 3)`` float32 pixels.
        size: the input ``(height, width)``.
        quantize: a key of :data:`QUANTIZATIONS`.
        representative: ``(n, H, W, 3)`` calibration images, required for ``int8``.
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        _saved_model(model, size, tmp)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        _configure(converter, quantize, representative)
        return bytes(converter.convert())


def _saved_model(model, size: tuple, folder: str) -> None:
    """Write a SavedModel with one batch-1 ``serve`` endpoint (weights as constants once converted)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    spec = tf.TensorSpec(shape=(1, *size, 3), dtype=tf.float32, name="image")
    archive.add_endpoint(name="serve", fn=lambda x: model(x, training=False), input_signature=[spec])
    archive.write_out(folder, verbose=False)


def _configure(converter, quantize: str, representative) -> None:
    """Set the converter's optimisation options for a quantisation."""
    import tensorflow as tf

    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if representative is None or not len(representative):
            raise ExportError("int8 needs representative images")
        converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


class TFLiteRunner:
    """A TFLite model loaded in the LiteRT interpreter, fed like the Keras model.

    Args:
        content: the ``.tflite`` file's bytes.
        num_threads: interpreter threads (None: LiteRT's default).
    """

    def __init__(self, content: bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_size = (int(self.input["shape"][1]), int(self.input["shape"][2]))

    def predict_one(self, pixels: np.ndarray) -> np.ndarray:
        """The output of one ``(H, W, 3)`` image (values 0..255) as float64 probabilities."""
        x = np.asarray(pixels, dtype=np.float32)[None]
        scale, zero = self.input["quantization"]
        if scale:
            x = np.round(x / scale + zero)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0].astype(np.float64)
        scale, zero = self.output["quantization"]
        return (y - zero) * scale if scale else y

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C)`` probabilities of ``(N, H, W, 3)`` images, one invocation each (batch 1 file)."""
        return np.stack([self.predict_one(x) for x in batch])

    def latency_ms(self, pixels: np.ndarray, repeats: int = 50) -> float:
        """Median wall time of one invocation on ``pixels`` (after one warm-up)."""
        self.predict_one(pixels)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.predict_one(pixels)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000)


def parity(reference: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1 agreement and probability differences of ``probs`` against ``reference`` (both ``(N, C)``)."""
    reference, probs = np.asarray(reference, np.float64), np.asarray(probs, np.float64)
    if reference.shape != probs.shape or not len(reference):
        raise ValueError(f"parity needs two non-empty arrays of one shape, got {reference.shape} and {probs.shape}")
    diff = np.abs(reference - probs)
    return {"n": int(len(reference)), "top1_agreement": float(np.mean(reference.argmax(1) == probs.argmax(1))),
            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}


def val_parity(runner: TFLiteRunner, model_dir: Path, meta: dict, *, n: int = PARITY_IMAGES, seed: int = SEED) -> dict:
    """Parity with the Keras model's saved validation predictions on a seeded sample of ``n`` images.

    Raises:
        ExportError: no dataset, or no ``predictions_val.csv``.
    """
    csv = Path(model_dir) / runfolder.predictions_file("val")
    if not csv.is_file():
        raise ExportError(f"parity: {csv} not found")
    frame = _dataset("parity").set_index("image_id")
    saved = predictions.read_frame(csv)
    saved = saved[saved["image_id"].isin(frame.index)]
    if saved.empty:
        raise ExportError(f"parity: none of the images of {csv.name} is in the dataset")
    saved = saved.sample(n=min(n, len(saved)), random_state=seed).sort_values("image_id")
    pixels = decode_images(frame.loc[saved["image_id"], "path"], runner.input_size)
    result = parity(saved[list(meta["classes"])].to_numpy(), runner.predict(pixels))
    return {**result, "split": "val", "reference": "the Keras model's saved predictions_val.csv (6 decimals)",
            "sample_seed": seed}


def build(model_dir: Path, *, quantize: str = "none", representative: int = REPRESENTATIVE_IMAGES,
          parity_n: int = PARITY_IMAGES, model=None, rounding: str = "gptq", progress=None) -> Export:
    """Convert a model folder in memory; see the module docstring for the card.

    Args:
        model_dir: the model folder.
        quantize: a key of :data:`QUANTIZATIONS`.
        representative: training images to calibrate ``int8`` with.
        parity_n: validation images to measure parity on (0: none); skipped with a
            note in the card when the dataset or the validation predictions are missing.
        model: the already loaded Keras model (skips loading).
        rounding: a key of :data:`ROUNDINGS`, for ``int8`` only.
        progress: ``progress(done, total, layer)`` while ``int8`` kernels are rounded.
    """
    meta = check_request(model_dir, fmt="tflite", quantize=quantize, rounding=rounding)
    sample, calibration = (representative_sample(model_dir, meta, n=representative) if quantize == "int8"
                           else (None, None))
    model = model if model is not None else load_keras(model_dir)
    if quantize == "int8":
        calibration["rounding"] = {"method": rounding, "what": ROUNDINGS[rounding]}
    if quantize == "int8" and rounding == "gptq":
        from core.serving import int8_rounding
        started = time.perf_counter()
        model = int8_rounding.round_weights(model, sample, progress=progress)
        calibration["rounding"]["seconds"] = round(time.perf_counter() - started, 1)
    content = convert(model, modelio.input_size(meta), quantize=quantize, representative=sample)
    runner = TFLiteRunner(content)
    card = model_card(meta, content, quantize=quantize, runner=runner, preprocessing=preprocessing_layers(model),
                      calibration=calibration)
    card["source_model"]["model_sha256"] = model_sha256(model_dir)
    if parity_n:
        try:
            card["parity"] = val_parity(runner, model_dir, meta, n=parity_n)
        except ExportError as err:
            card["parity"] = {"not_measured": str(err)}
    return Export(content, card)


def model_card(meta: dict, content: bytes, *, quantize: str, runner: TFLiteRunner, preprocessing: list,
               calibration: dict | None) -> dict:
    """The JSON written beside an exported file: everything an app needs to feed it and read it."""
    import tensorflow as tf

    height, width = runner.input_size
    return {
        "format": "tflite", "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest(),
        "quantization": quantize, "quantization_detail": QUANTIZATIONS[quantize], "calibration_images": calibration,
        "classes": list(meta["classes"]),
        "input": {"name": runner.input["name"], "shape": [1, height, width, 3], "height": height, "width": width,
                  "dtype": np.dtype(runner.input["dtype"]).name, "range": [0, 255], "layout": "NHWC, RGB"},
        "output": {"shape": [1, len(meta["classes"])], "dtype": np.dtype(runner.output["dtype"]).name,
                   "meaning": "softmax probabilities in the order of 'classes', before temperature scaling"},
        "how_to_feed": (f"Decode to 8-bit RGB (apply the EXIF orientation, composite transparency on white), "
                        f"resize to {width}x{height} (width x height) with a bilinear stretch, no crop, cast to "
                        "float32 keeping values 0..255, add a batch axis. Do not normalise: the model does it."),
        "preprocessing_inside": {"layers": preprocessing, "what": meta.get("preprocessing")},
        "temperature": meta.get("temperature"),
        "calibrate": "p = softmax(log(output) / temperature); use the output as is when temperature is null",
        "source_model": {k: meta.get(k) for k in ("run_id", "arch", "created", "split_sha256", "weights")},
        "converter": f"TensorFlow {tf.__version__} TFLiteConverter.from_saved_model",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def card_path(out: Path) -> Path:
    """Where the JSON card of an exported file goes: ``FILE.tflite`` -> ``FILE.json``."""
    return Path(out).with_suffix(".json")


def write(export: Export, out: Path) -> tuple:
    """Write the file and its card; returns both paths."""
    out = _not_json(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(export.content)
    card = card_path(out)
    card.write_text(export.card_json + "\n", encoding="utf-8")
    return out, card


def _not_json(out: Path) -> Path:
    out = Path(out)
    if out.suffix.lower() == ".json":
        raise ExportError(f"{out}: the output file needs another suffix than .json (its card goes there)")
    return out


def saved_path(model_dir: Path, quantize: str) -> Path:
    """Where a ready-made export of a model folder lives: ``export/model_<quantisation>.tflite``."""
    return Path(model_dir) / runfolder.EXPORT_DIR / runfolder.export_file(quantize)


def load_saved(model_dir: Path, quantize: str) -> Export | None:
    """A ready-made export shipped beside a model, with its card.

    None when absent, unreadable, or made from another ``model.keras`` than the folder's.
    """
    path = saved_path(model_dir, quantize)
    try:
        saved = Export(path.read_bytes(), json.loads(card_path(path).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError):
        return None
    made_from = (saved.card.get("source_model") or {}).get("model_sha256")
    return saved if made_from == model_sha256(model_dir) else None


def model_sha256(model_dir: Path) -> str:
    """SHA-256 of a folder's ``model.keras``: which model an export was made from."""
    return hashlib.sha256((Path(model_dir) / modelio.MODEL_FILE).read_bytes()).hexdigest()


def is_card(path: Path) -> bool:
    """True when ``path`` is an export card (a JSON object naming an export format and the file's hash)."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and card.get("format") in FORMATS and isinstance(card.get("sha256"), str)


def check_out(out: Path, force: bool = False) -> None:
    """Refuse an ``--out`` the command must not write (module docstring), before any conversion.

    Raises:
        ExportError: one line naming the file and what to do.
    """
    out = _not_json(out)
    try:
        validation.check_output_file(out, force=force, owned=lambda p: is_card(card_path(p)))
        validation.check_output_file(card_path(out), force=force, owned=is_card)
    except validation.InputError as err:
        raise ExportError(str(err)) from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=cli_args.prog("export"), description=__doc__.split("\n")[0])
    cli_args.add_model_argument(parser)
    parser.add_argument("--format", default="tflite", help="export format: " + ", ".join(FORMATS))
    parser.add_argument("--quantize", default="none", help="one of " + ", ".join(QUANTIZATIONS) + " (default none)")
    parser.add_argument("--out", required=True, type=Path, help="the file to write (its JSON card goes beside it)")
    parser.add_argument("--representative", type=int, default=REPRESENTATIVE_IMAGES,
                        help="training images to calibrate int8 with")
    parser.add_argument("--parity", type=int, default=PARITY_IMAGES,
                        help="validation images to measure parity on (0: skip)")
    parser.add_argument("--rounding", default="gptq",
                        help="int8 kernels: " + "; ".join(f"{k}: {v}" for k, v in ROUNDINGS.items()))
    parser.add_argument("--force", action="store_true", help="write --out even inside a model folder or over "
                        "files that are not an earlier export")
    return parser


def _print_progress(done: int, total: int, layer: str) -> None:
    """One stderr line every ten layers while int8 kernels are rounded."""
    if done % 10 == 0 or done == total:
        print(f"rounding int8 kernels: {done}/{total} layers ({layer})", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Command-line entry point: 0 on success, 2 for a request that cannot be served."""
    args = _parser().parse_args(argv)
    try:
        if args.format not in FORMATS:
            raise ExportError(f"unknown format {args.format!r}: expected one of {', '.join(FORMATS)}")
        check_out(args.out, args.force)
        model_dir = validation.check_model_folder(args.model)
        export = build(model_dir, quantize=args.quantize, representative=args.representative, parity_n=args.parity,
                       rounding=args.rounding,
                       progress=_print_progress)
        out, card = write(export, args.out)
    except (ExportError, validation.InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {args.out.name} cannot be written ({err.strerror or err})", file=sys.stderr)
        return 2
    figures = export.card.get("parity", {})
    summary = (f"val n={figures['n']}: top-1 agreement {figures['top1_agreement']:.1%}, "
               f"max prob diff {figures['max_abs_diff']:.2g}") if "n" in figures else figures.get("not_measured", "")
    print(f"wrote {out} ({len(export.content) / 1e6:.2f} MB, {args.quantize}) and {card}; parity: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
