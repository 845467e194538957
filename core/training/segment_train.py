"""Train the lesion segmenter into a run folder.

``lesionlab train --task segmentation --run-dir DIR [options]`` (as the Train page
launches it) hands the run to :func:`train`; ``lesionlab segment-train --run-dir DIR
[options]`` is the same with segmentation as the default task. The
options are the segmentation schema of :mod:`core.training.options`. It writes the run-folder contract of
``core.training.train``: ``config.json``, ``status.json``, ``metrics.jsonl`` (one line per
epoch with ``val_dice``), ``train.log``, ``last.keras`` + ``state.json`` (resume),
the best model by validation Dice (``model.keras`` + ``model.json``) and, when
done, per-image ``scores_val.csv`` / ``scores_test.csv``. A ``STOP`` file stops
the run after the current batch; ``--resume`` continues after the last epoch.

Masks are scored at the image's own size: the model's probability map is resized
bilinearly to the true mask's shape and thresholded (``core.serving.segment.mask_at``).
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.training import options  # noqa: E402

from core.contracts import cli_args, paths
from core.serving import segment  # noqa: E402
from core.training import segmenter  # noqa: E402
from core.training import train_common as common  # noqa: E402
from core.dataset.images import read_mask  # noqa: E402
from core.training.pipeline import cache_key, load_or_build_cache, make_augmenter  # noqa: E402
from core.contracts.predictions import write_csv  # noqa: E402
from core.evaluation.segmentation_metrics import image_scores, scores_path  # noqa: E402
from core.contracts import runfolder as rf  # noqa: E402
from core.contracts.runfolder import write_json_atomic  # noqa: E402
from core.contracts.runfolder import now_iso as now  # noqa: E402
from core.training.train_common import (  # noqa: E402
    export_model, library_versions, make_progress_callback, sample_lesions, split_dataset, split_indices,
)

log = logging.getLogger("core.training.segment_train")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)  # candidates for the mask threshold, chosen on validation


PROG = cli_args.prog("segment-train")
DESCRIPTION = "Train the HAM10000 lesion segmenter into a run folder."


def build_parser():
    """The command line: the segmentation options of :mod:`core.training.options`."""
    return common.build_parser(PROG, options.SEGMENT, DESCRIPTION)


def input_hw(args) -> tuple[int, int]:
    """The model input ``(height, width)`` of a run's options (height 0: square)."""
    return (args.image_height or args.image_size), args.image_size


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
        rf.write_atomic(final, lambda tmp: np.save(tmp, array))
    return np.load(final, mmap_mode="r")


def make_dataset(images, masks, order, *, batch_size: int, seed: int):
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
                      split_sizes={split: len(idx) for split, idx in self.idx.items()},
                      versions=library_versions(), created=now(), **segmenter.recipe())
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
            self.model = segmenter.build_segmenter(input_hw(self.args), weights=self.args.weights)
            self.start_epoch, self.best = 0, None
        segmenter.set_encoder_trainable(self.model, self.args.freeze)
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
        ds = make_dataset(self.images, self.masks, order, batch_size=args.batch_size, seed=args.seed + epoch)
        history = self.model.fit(ds, epochs=1, verbose=0, callbacks=[callback])
        if callback.stopped:
            return False
        self.end_epoch(epoch, lr=lr, loss=float(history.history["loss"][-1]), seconds=time.monotonic() - started)
        return True

    def end_epoch(self, epoch: int, *, lr: float, loss: float, seconds: float) -> None:
        """Score validation, write the epoch record, keep the best model and the resume checkpoint."""
        self.folder.set_phase(rf.VALIDATE_PHASE, f"epoch {epoch + 1}: scoring validation", len(self.idx["val"]))
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
        meta = segmenter.metadata(height, width, threshold=threshold, split_sha256=self.split_sha256,
                                  weights=self.args.weights)
        meta.update(created=now(), run_id=self.folder.dir.name, best=self.best,
                    training={k: v for k, v in vars(self.args).items() if k in segmenter.RECIPE_OPTIONS}, **extra)
        segmenter.write_segmenter_metadata(self.folder.dir, meta)

    def finish(self) -> None:
        """Choose the threshold on validation, then write per-image val and test scores with the best model."""
        import keras

        self.folder.set_phase("threshold", f"choosing the mask threshold on validation (n = {len(self.idx['val'])})",
                              len(THRESHOLDS), unit="thresholds")
        best = keras.models.load_model(self.folder.dir / rf.MODEL_FILE, compile=False)
        val_frame = self.frame.iloc[self.idx["val"]]
        val_probs = self.predict(self.idx["val"], best)
        by_threshold = {}
        for t in THRESHOLDS:
            by_threshold[t] = float(score_split(val_frame, val_probs, t)["dice"].mean())
            self.folder.advance(len(by_threshold))
        threshold = max(by_threshold, key=by_threshold.get)
        log.info("val Dice by threshold %s: chose %.2f", by_threshold, threshold)
        self.write_model_metadata(threshold, val_dice_by_threshold=by_threshold)
        write_csv(scores_path(self.folder.dir, "val"), score_split(val_frame, val_probs, threshold))
        if len(self.idx["test"]):
            self.folder.set_phase("score", f"scoring the test split (n = {len(self.idx['test'])})")
            test = score_split(self.frame.iloc[self.idx["test"]], self.predict(self.idx["test"], best), threshold)
            write_csv(scores_path(self.folder.dir, "test"), test)
            log.info("test (n=%d): dice %.4f", len(test), test["dice"].mean())


def train(args, folder) -> int:
    """Run a segmentation training in ``folder`` (a ``core.contracts.runfolder.RunFolder``); 0 when it ends normally.

    ``args`` are validated segmentation options (:func:`core.training.train_common.parse_args`).
    """
    trainer = SegmentTrainer(args, folder)
    trainer.prepare_data()
    trainer.write_config()
    trainer.build()
    return rf.run_epochs(trainer, folder, args.epochs)


def main(argv=None) -> int:
    """Run ``lesionlab segment-train``; returns the exit code."""
    args = common.parse_args(argv, prog=PROG, default_task=options.SEGMENT, description=DESCRIPTION)
    if args.task != options.SEGMENT:
        print(f"{PROG}: error: this command trains the segmenter; use {cli_args.prog('train')} for {args.task}",
              file=sys.stderr)
        return common.EXIT_USAGE
    return common.run_locked(args, args.run_dir, train, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
