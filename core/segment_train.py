"""Train the lesion segmenter into a run folder.

``python -m core.segment_train --run-dir DIR [options]`` (and ``train(args, folder)``
for ``core.train``'s ``--task segmentation``) writes the run-folder contract of
``core.train``: ``config.json``, ``status.json``, ``metrics.jsonl`` (one line per
epoch with ``val_dice``), ``train.log``, ``last.keras`` + ``state.json`` (resume),
the best model by validation Dice (``model.keras`` + ``model.json``) and, when
done, per-image ``scores_val.csv`` / ``scores_test.csv``. A ``STOP`` file stops
the run after the current batch; ``--resume`` continues after the last epoch.

Masks are scored at the image's own size: the model's probability map is resized
bilinearly to the true mask's shape and thresholded (``core.segment.mask_at``).
"""

import argparse
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core import paths  # noqa: E402
from core import segment  # noqa: E402
from core.images import read_mask  # noqa: E402
from core.pipeline import cache_key, load_or_build_cache, make_augmenter  # noqa: E402
from core.predictions import write_csv  # noqa: E402
from core.segmentation_metrics import image_scores, scores_path  # noqa: E402
from core import runfolder as rf  # noqa: E402
from core.runfolder import RunFolder, write_json_atomic  # noqa: E402
from core.runfolder import now_iso as now  # noqa: E402
from core.train import (  # noqa: E402
    _on_sigterm, export_model, library_versions, make_progress_callback, sample_lesions, setup_logging,
    split_dataset, split_indices,
)
from core.train import load_resume_args as recorded_args  # noqa: E402  (this module's own adds --epochs)

log = logging.getLogger("core.segment_train")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # candidates for the mask threshold, chosen on validation


def build_parser() -> argparse.ArgumentParser:
    """The command line, with every option documented."""
    p = argparse.ArgumentParser(prog="python -m core.segment_train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Train the HAM10000 lesion segmenter into a run folder.")
    p.add_argument("--run-dir", required=True, type=Path, help="run folder to create (or resume)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $HAM10000_DIR or data/ham10000)")
    p.add_argument("--weights", choices=("none", "offline-imagenet"), default="offline-imagenet", help="encoder weights")
    p.add_argument("--image-size", type=int, default=128, help="width of the model input (a multiple of 32)")
    p.add_argument("--image-height", type=int, default=96, help="height of the model input (a multiple of 32)")
    p.add_argument("--epochs", type=int, default=8, help="total epochs")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay to 5 %% of it)")
    p.add_argument("--freeze", choices=segment.FREEZE_POINTS, default="block_3",
                   help="encoder blocks below this one stay frozen (encoder BatchNorm is always frozen)")
    p.add_argument("--seed", type=int, default=42, help="seed for initialisation, order and augmentation")
    p.add_argument("--split-file", type=Path, default=None, help="use this split CSV instead of making one")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of images for validation")
    p.add_argument("--test-fraction", type=float, default=0.15, help="share of images for test")
    p.add_argument("--max-images", type=int, default=0, help="train on a lesion-grouped sample of about N images (0 = all)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last completed epoch (with --epochs: a new length)")
    return p


def validate_args(args) -> list[str]:
    """Problems with the options, as sentences; empty when all is well."""
    errors = []
    for side in (args.image_size, args.image_height):
        if not 32 <= side <= 512 or side % 32:
            errors.append("image width and height must be multiples of 32 between 32 and 512")
            break
    if args.epochs < 1 or args.batch_size < 1 or args.max_images < 0:
        errors.append("epochs and batch size must be ≥ 1, max images ≥ 0")
    if not 0 < args.lr < 1:
        errors.append("the learning rate must be in (0, 1)")
    return errors


def input_hw(args) -> tuple[int, int]:
    """The model input ``(height, width)`` of a run's options."""
    return args.image_height, args.image_size


def learning_rate(args, epoch: int) -> float:
    """Cosine decay from ``lr`` to 5 % of it over the run (over its planned length when it was shortened)."""
    t = epoch / max(1, getattr(args, "planned_epochs", None) or args.epochs)
    return float(args.lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t))))


def dice_bce_loss(y_true, y_pred):
    """Binary cross-entropy plus (1 - soft Dice), the Dice taken per image and averaged."""
    import keras

    ops = keras.ops
    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    overlap = ops.sum(y_true * y_pred, axis=(1, 2, 3))
    total = ops.sum(y_true, axis=(1, 2, 3)) + ops.sum(y_pred, axis=(1, 2, 3))
    return bce + 1.0 - ops.mean((2.0 * overlap + 1.0) / (total + 1.0))


def load_or_build_mask_cache(mask_paths: list[str], size, cache_root: Path) -> np.ndarray:
    """All masks at the model size as uint8 0..255 (bilinear, so edges are soft targets), cached like images."""
    from PIL import Image

    height, width = size
    final = Path(cache_root) / f"masks_{cache_key(mask_paths, size)}.npy"
    if not final.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        array = np.zeros((len(mask_paths), height, width), np.uint8)
        for i, path in enumerate(mask_paths):
            mask = Image.fromarray(read_mask(Path(path)).astype(np.uint8) * 255)
            array[i] = np.asarray(mask.resize((width, height), resample=Image.Resampling.BILINEAR))
        tmp = final.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, array)
        os.replace(tmp, final)
    return np.load(final, mmap_mode="r")


def make_dataset(images, masks, order, batch_size: int, seed: int):
    """Batches ``(x, y)`` of ``images[order]`` and their masks, flipped together (the 4 flips of a 4:3 frame)."""
    import tensorflow as tf

    height, width = images.shape[1:3]

    def gather(idx):
        idx = np.sort(idx)  # memory-map reads in file order; the batch's order does not matter
        return images[idx].astype(np.float32), masks[idx][..., None].astype(np.float32) / 255.0

    def load(batch_idx):
        x, y = tf.numpy_function(gather, [batch_idx], (tf.float32, tf.float32))
        return tf.ensure_shape(x, [None, height, width, 3]), tf.ensure_shape(y, [None, height, width, 1])

    augment = make_augmenter("light", seed, square=height == width)

    def flip_together(i, batch):
        both = augment(tf.concat(batch, axis=3), i)
        return both[..., :3], both[..., 3:]

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(order, dtype=np.int64)).batch(batch_size)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).enumerate()
    return ds.map(flip_together, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def score_split(frame: pd.DataFrame, probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """Per-image scores at the true masks' own size: ``image_id, lesion_id, dx`` and ``image_scores``."""
    rows = []
    for (_, row), prob in zip(frame.iterrows(), probs):
        truth = read_mask(Path(row["mask_path"]))
        scores = image_scores(truth, segment.mask_at(prob, truth.shape, threshold))
        rows.append({"image_id": row["image_id"], "lesion_id": row["lesion_id"], "dx": row["dx"], **scores})
    return pd.DataFrame(rows)


class SegmentTrainer:
    """One segmentation run: data, model, epochs, best checkpoint, per-image scores."""

    def __init__(self, args, folder):
        self.args, self.folder = args, folder

    def prepare_data(self) -> None:
        """Load the dataset and split, keep images with a mask, build the image and mask caches."""
        args, folder = self.args, self.folder
        frame, self.split_sha256 = split_dataset(args, folder)
        missing = int((frame["mask_path"] == "").sum())
        if missing:
            log.info("%d images have no mask and are left out", missing)
        frame = frame[frame["mask_path"] != ""].reset_index(drop=True)
        self.frame = sample_lesions(frame, args.max_images, args.seed)
        self.idx = split_indices(self.frame, self.split_sha256)
        if len(self.idx["train"]) == 0 or len(self.idx["val"]) == 0:
            raise ValueError("the split has no training or no validation images with masks")
        folder.update(message="decoding images and masks into the cache")
        size = input_hw(args)
        self.images = load_or_build_cache(self.frame["path"].tolist(), size, paths.cache_dir())
        self.masks = load_or_build_mask_cache(self.frame["mask_path"].tolist(), size, paths.cache_dir())

    def write_config(self) -> None:
        """Write ``config.json``: every option, the split hash, the model recipe, library versions."""
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items() if k != "resume"}
        config.update(task="segmentation", split_sha256=self.split_sha256, n_images=len(self.frame),
                      versions=library_versions(), created=now(), **segment.recipe())
        write_json_atomic(self.folder.dir / rf.CONFIG_FILE, config)

    def build(self) -> None:
        """Build the model, or load ``last.keras`` when resuming."""
        import keras

        last, state_file = self.folder.dir / rf.CHECKPOINT_FILE, self.folder.dir / rf.STATE_FILE
        if self.args.resume and last.is_file() and state_file.is_file():
            state = json.loads(state_file.read_text())
            self.model = keras.models.load_model(last, compile=False)
            self.start_epoch, self.best = state["epoch"], state.get("best")
            log.info("resuming after epoch %d", self.start_epoch)
        else:
            keras.utils.set_random_seed(self.args.seed)
            self.model = segment.build_segmenter(input_hw(self.args), weights=self.args.weights)
            self.start_epoch, self.best = 0, None
        segment.set_encoder_trainable(self.model, self.args.freeze)
        self.model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.args.lr), loss=dice_bce_loss)

    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch (0-based); False when a stop was requested."""
        args = self.args
        lr = learning_rate(args, epoch)
        self.model.optimizer.learning_rate.assign(lr)
        order = np.random.default_rng(args.seed * 1000 + epoch).permutation(self.idx["train"])
        batches = -(-len(order) // args.batch_size)
        self.folder.update(epoch=epoch + 1, epochs=args.epochs, phase="train", batch=0, batches=batches,
                           message=f"epoch {epoch + 1}/{args.epochs}")
        started = time.monotonic()
        callback = make_progress_callback(self.folder, epoch + 1, batches)
        ds = make_dataset(self.images, self.masks, order, args.batch_size, args.seed + epoch)
        history = self.model.fit(ds, epochs=1, verbose=0, callbacks=[callback])
        if callback.stopped:
            return False
        self.end_epoch(epoch, lr, float(history.history["loss"][-1]), time.monotonic() - started)
        return True

    def end_epoch(self, epoch: int, lr: float, loss: float, seconds: float) -> None:
        """Score validation, write the epoch record, keep the best model and the resume checkpoint."""
        val = score_split(self.frame.iloc[self.idx["val"]], self.predict(self.idx["val"]), segment.THRESHOLD)
        means = {f"val_{k}": float(val[k].mean()) for k in ("dice", "jaccard", "thresholded_jaccard")}
        record = {"kind": "epoch", "epoch": epoch + 1, "phase": "train", "lr": lr, "seconds": round(seconds, 1),
                  "loss": loss, **means}
        self.folder.append_metrics(record)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
        if self.best is None or means["val_dice"] > self.best["val_dice"]:
            self.best = {"epoch": epoch + 1, **means}
            export_model(self.model, self.folder.dir / rf.MODEL_FILE)
            self.write_model_metadata(segment.THRESHOLD)
        export_model(self.model, self.folder.dir / rf.CHECKPOINT_FILE)
        write_json_atomic(self.folder.dir / rf.STATE_FILE, {"epoch": epoch + 1, "best": self.best})
        self.folder.update(best=self.best)

    def predict(self, idx: np.ndarray, model=None) -> np.ndarray:
        """Probability maps ``(n, H, W)`` at the model size for ``images[idx]``."""
        return segment.predict_probs(model or self.model, self.images, idx)

    def write_model_metadata(self, threshold: float, **extra) -> None:
        """Write ``model.json`` next to the best checkpoint."""
        height, width = input_hw(self.args)
        meta = segment.metadata(height, width, threshold, self.split_sha256, self.args.weights)
        meta.update(created=now(), run_id=self.folder.dir.name, best=self.best,
                    training={k: v for k, v in vars(self.args).items() if k in segment.RECIPE_OPTIONS}, **extra)
        segment.write_segmenter_metadata(self.folder.dir, meta)

    def finish(self) -> None:
        """Choose the threshold on validation, then write per-image val and test scores with the best model."""
        import keras

        self.folder.update(phase="score", message="scoring val and test with the best checkpoint")
        best = keras.models.load_model(self.folder.dir / rf.MODEL_FILE, compile=False)
        val_frame = self.frame.iloc[self.idx["val"]]
        val_probs = self.predict(self.idx["val"], best)
        by_threshold = {t: float(score_split(val_frame, val_probs, t)["dice"].mean()) for t in THRESHOLDS}
        threshold = max(by_threshold, key=by_threshold.get)
        log.info("val Dice by threshold %s: chose %.2f", by_threshold, threshold)
        self.write_model_metadata(threshold, val_dice_by_threshold=by_threshold)
        write_csv(scores_path(self.folder.dir, "val"), score_split(val_frame, val_probs, threshold))
        if len(self.idx["test"]):
            test = score_split(self.frame.iloc[self.idx["test"]], self.predict(self.idx["test"], best), threshold)
            write_csv(scores_path(self.folder.dir, "test"), test)
            log.info("test (n=%d): dice %.4f", len(test), test["dice"].mean())


def train(args, folder) -> int:
    """Run a segmentation training in ``folder`` (a ``core.train.RunFolder``); 0 when it ends normally."""
    errors = validate_args(args)
    if errors:
        folder.update(state="failed", finished=now(), message="; ".join(errors))
        return 2
    trainer = SegmentTrainer(args, folder)
    trainer.prepare_data()
    trainer.write_config()
    trainer.build()
    return rf.run_epochs(trainer, folder, args.epochs)


def load_resume_args(parser: argparse.ArgumentParser, run_dir: Path, epochs: int | None = None):
    """The options a run was started with, read back from its config.json.

    ``epochs`` changes the run's length: fewer ends it (the best checkpoint is
    then scored) at the epochs already done, more extends it.
    """
    merged = vars(recorded_args(parser, run_dir, keep=("planned_epochs",)))
    if epochs is not None and epochs != merged["epochs"]:
        merged["planned_epochs"] = merged.get("planned_epochs") or merged["epochs"]
        merged["epochs"] = epochs
    return argparse.Namespace(**merged)


def main(argv=None) -> int:
    """Parse the command line and train; failures reach ``status.json``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        if not (args.run_dir / rf.CONFIG_FILE).is_file():
            parser.error(f"--resume: {args.run_dir / rf.CONFIG_FILE} not found")
        epochs = args.epochs if "--epochs" in (sys.argv[1:] if argv is None else argv) else None
        args = load_resume_args(parser, args.run_dir, epochs)
    errors = validate_args(args)
    if errors:
        parser.error("; ".join(errors))
    folder = RunFolder(args.run_dir)
    (folder.dir / rf.STOP_FILE).unlink(missing_ok=True)
    setup_logging(folder.dir)
    signal.signal(signal.SIGTERM, _on_sigterm)  # the progress callback then stops after the batch
    folder.update(state="running", message="starting")
    log.info("run %s started (pid %d): %s", folder.dir.name, os.getpid(), " ".join(sys.argv[1:]))
    try:
        return train(args, folder)
    except Exception as err:  # noqa: BLE001  any failure must reach status.json, not only the log
        log.error("run failed: %s\n%s", err, traceback.format_exc())
        folder.update(state="failed", finished=now(), message=f"{type(err).__name__}: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
