"""Train a model into a run folder: ``lesionlab train --run-dir DIR [options]``.

This command is the only way a model trains; the Train page launches exactly it
as a subprocess. The run folder (its files are listed in :mod:`core.contracts.runfolder`)
is the truth about a run: the options, a status with a heartbeat, one metrics
record per epoch and per-batch progress, the log, a checkpoint with optimizer
state for resume, the best model by validation balanced accuracy with its
metadata, the best model's predictions and TensorBoard event files.

The options are the task's :func:`core.training.options.schema`; bad ones end the command at once
with a one-line message and exit code 2, as does a run folder another trainer
holds. A stop file in the run folder (or SIGTERM) stops the run after the
current batch; ``--resume`` continues from the last completed epoch with the
optimizer state, or from the best checkpoint when the last one is unreadable.
``--task segmentation`` hands the run to ``core.training.segment_train``.

Under ``TF_CONFIG`` naming several workers the run trains with
``MultiWorkerMirroredStrategy``; only the chief writes the run folder, the other
workers write into temporary folders that are removed at the end.
"""

import argparse
import os

# oneDNN kernels train convnets 1.5-2x faster on this kind of CPU; must be set before TF loads.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.training import options  # noqa: E402

from core.contracts import cli_args, paths
from core.contracts import runfolder as rf  # noqa: E402
from core.training import train_common as common  # noqa: E402
from core.contracts.labels import CLASSES  # noqa: E402
from core.serving.modelio import read_metadata, write_metadata  # noqa: E402
from core.training.models import HEAD_LAYERS, build_model, model_facts  # noqa: E402
from core.training.pipeline import epoch_indices, load_or_build_cache, make_dataset  # noqa: E402
from core.contracts.runfolder import RunFolder  # noqa: E402
from core.contracts.runfolder import now_iso as now  # noqa: E402
from core.training.train_common import (  # noqa: E402, F401  (shared with core.training.segment_train; tests reach them here too)
    EXIT_USAGE, export_model, library_versions, load_resume_args, make_progress_callback, option_values,
    sample_lesions, save_atomic, setup_logging, split_dataset, split_indices, validate_args,
)

log = logging.getLogger("core.training.train")
PROG = cli_args.prog("train")
WORKER_DIR_ENV = "HAM_WORKER_DIR"


def build_parser(task: str = options.CLASSIFY) -> argparse.ArgumentParser:
    """The command line of ``task``, generated from :func:`core.training.options.schema`."""
    return common.build_parser(PROG, task, "Train a HAM10000 classifier (or, with --task segmentation, the lesion "
                               "segmenter) into a run folder (see the module docstring for its files).")


def input_hw(args) -> tuple[int, int]:
    """The model input ``(height, width)`` of a run's options."""
    return (args.image_height or args.image_size), args.image_size


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced class weights n / (k · n_c); classes absent from training get weight 0."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def cluster_workers() -> int:
    """How many workers ``TF_CONFIG`` names (0 when it is unset or unreadable)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except ValueError:
        return 0
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` makes this process a non-chief worker.

    The chief is the ``chief`` task, or worker 0 of a cluster without one (the
    convention of the Keras multi-worker guide).
    """
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    except ValueError:
        return True
    task, cluster = config.get("task", {}), config.get("cluster", {})
    if not task or cluster_workers() <= 1:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


def worker_dir() -> Path:
    """Where a non-chief worker writes its copy of the run folder.

    A fresh temporary folder, removed at the end; or, when ``HAM_WORKER_DIR`` is
    set, ``$HAM_WORKER_DIR/worker-<index>``, kept for inspection.
    """
    keep = os.environ.get(WORKER_DIR_ENV)
    if not keep:
        return Path(tempfile.mkdtemp(prefix="ham-worker-"))
    index = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    return Path(keep) / f"worker-{index}"


def choose_strategy(logical_cpus: int = 0):
    """The distribution strategy of a run.

    ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers;
    else ``MirroredStrategy`` over N logical CPUs when asked, or over all GPUs
    when there are several; else the default strategy.
    """
    import tensorflow as tf

    if cluster_workers() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
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

    from core.training.train_metrics import BalancedAccuracy

    if args.imbalance == "focal":
        loss = keras.losses.CategoricalFocalCrossentropy(gamma=2.0, label_smoothing=args.label_smoothing)
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing)
    metrics = [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        BalancedAccuracy(num_classes=model.output_shape[-1], name="balanced_accuracy"),
        keras.metrics.AUC(multi_label=True, num_labels=model.output_shape[-1], name="auc"),
    ]
    if args.soft_targets:  # a student: its targets carry the label and the teachers' probabilities side by side
        from core.training import distill
        loss, metrics = distill.loss_and_metrics(args, model.output_shape[-1], metrics)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=metrics)


def learning_rate(args, epoch: int) -> float:
    """Warm-up at ``lr``; then cosine decay from ``finetune_lr`` to 5 % of it."""
    if epoch < args.warmup_epochs:
        return args.lr
    span = max(1, args.epochs - args.warmup_epochs)
    t = (epoch - args.warmup_epochs) / span
    return float(args.finetune_lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t))))


def stop_agreed(strategy, folder: RunFolder) -> bool:
    """True on every worker when any worker was asked to stop (a collective: all workers call it)."""
    import tensorflow as tf

    local = tf.constant(float(folder.stop_requested()))
    per_replica = strategy.run(lambda: tf.identity(local))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) > 0


def predict_probs(model, images: np.ndarray, idx: np.ndarray, *, batch_size: int = 128, chunk: int = 1024,
                  direct: bool = False, progress=None) -> np.ndarray:
    """Model probabilities for ``images[idx]``, a chunk of the cache at a time.

    ``model.predict`` rather than ``predict_on_batch``: under MirroredStrategy the
    latter returned every replica's rows. ``direct`` calls the model itself, batch
    by batch, as under MultiWorkerMirroredStrategy, where ``predict`` would split
    the rows between the workers. ``progress(done)`` hears the rows done after each chunk.
    """
    step = batch_size if direct else chunk
    out = []
    for i in range(0, len(idx), step):
        rows = images[idx[i : i + step]].astype(np.float32)
        if direct:
            out.append(np.asarray(model(rows, training=False)))
        else:
            out.append(model.predict(rows, batch_size=batch_size, verbose=0))
        if progress:
            progress(i + len(rows))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def fit_multi_worker(model, ds, *, callback, strategy):
    """One epoch of ``model.fit`` under MultiWorkerMirroredStrategy.

    Works around two faults of Keras 3 ``fit`` with this strategy
    (keras-team/keras#20585): it reduces the first batch eagerly to build the
    model, which fails on a tuple of per-replica values (the model is built
    already, so the strategy is taken from the scope rather than from the model),
    and it averages each step's scalar logs with ``reduce(axis=0)`` (so each log
    is returned with shape ``(1,)``).
    """
    import tensorflow as tf

    if "train_step" not in vars(model):
        step = model.train_step
        model.train_step = lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}
    saved, model._distribute_strategy = model._distribute_strategy, None
    try:
        with strategy.scope():
            return model.fit(ds, epochs=1, verbose=0, callbacks=[callback])
    finally:
        model._distribute_strategy = saved


def score(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> dict:
    """Loss, accuracy, balanced accuracy and macro one-vs-rest ROC AUC, as the Evaluate page computes them."""
    from sklearn.metrics import log_loss

    from core.evaluation import metrics
    predicted = metrics.predicted_labels(probs)
    return {
        "loss": float(log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(n_classes)))),
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": metrics.balanced_accuracy(labels, predicted, n_classes),
        "auc": float(metrics.weighted_macro_auc(np.ones((1, len(labels))), labels, probs, n_classes=n_classes)[0]),
    }


def load_checkpoint(path: Path):
    """The model of a checkpoint written by :func:`save_atomic`, compiled, with its optimizer state."""
    import keras

    import core.training.distill  # noqa: F401  registers a student's loss and metrics for deserialisation
    import core.training.train_metrics  # noqa: F401  registers BalancedAccuracy for deserialisation

    return keras.models.load_model(path, compile=True)


class CheckpointError(RuntimeError):
    """Neither the last nor the best checkpoint of a run can be loaded."""


class EventLog:
    """TensorBoard event files: ``train/`` and ``validation/`` writers in the run folder.

    The same tag (``epoch_loss``) in both writers makes TensorBoard overlay the
    train and validation curves, as ``keras.callbacks.TensorBoard`` does. Written
    with ``tf.summary.write`` and the scalars plugin's metadata, because
    ``tf.summary.scalar`` needs the TensorBoard package, an optional install.
    """

    def __init__(self, run_dir: Path):
        import tensorflow as tf

        root = Path(run_dir) / rf.TENSORBOARD_DIR
        self.writers = {part: tf.summary.create_file_writer(str(root / part)) for part in ("train", "validation")}

    def write(self, record: dict) -> None:
        """Write one epoch record's scores and learning rate at step = epoch."""
        step = int(record["epoch"])
        for part, prefix in (("train", ""), ("validation", rf.VAL_PREFIX)):
            scalars = {f"epoch_{m}": record[prefix + m] for m in rf.EPOCH_METRICS if prefix + m in record}
            if part == "train":
                scalars["epoch_learning_rate"] = record["lr"]
            with self.writers[part].as_default(step=step):
                for tag, value in scalars.items():
                    write_scalar(tag, value, step)
            self.writers[part].flush()


def write_scalar(tag: str, value: float, step: int) -> None:
    """One scalar summary, as TensorBoard's scalars plugin reads it, into the default writer."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(data_class=summary_pb2.DATA_CLASS_SCALAR)
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), dtype=tf.float32), step=step, metadata=metadata)


def write_predictions(path: Path, frame: pd.DataFrame, probs: np.ndarray, *, classes: list[str]) -> None:
    """Write the model's own (raw) probabilities of ``frame``'s images in the ``core.contracts.predictions`` format."""
    from core.contracts import predictions
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
        frame, self.split_sha256 = split_dataset(args, folder)
        self.frame = sample_lesions(frame, args.max_images, args.seed)
        self.labels = self.frame["dx"].map({c: i for i, c in enumerate(self.classes)}).to_numpy()
        self.idx = split_indices(self.frame, self.split_sha256)

        def progress(done, total):
            folder.update(message=f"decoding images into the cache: {done}/{total}")

        self.images = load_or_build_cache(self.frame["path"].tolist(), input_hw(args), paths.cache_dir(),
                                          progress=progress)
        train_labels = self.labels[self.idx["train"]]
        weights = class_weights(train_labels, self.k) if args.imbalance == "class_weight" else np.ones(self.k, np.float32)
        self.sample_weights = weights[self.labels]
        self.onehot = np.eye(self.k, dtype=np.float32)[self.labels]
        log.info("class weights: %s", dict(zip(self.classes, np.round(weights, 3).tolist())))
        self.distillation = self.add_soft_targets() if args.soft_targets else None

    def add_soft_targets(self) -> dict:
        """Append the teachers' softened ensemble probabilities to each image's one-hot target.

        The target is the ensemble averaged over the 4 flips, whichever flip the augmentation
        drew: the ensemble as it is scored (with test-time flips) is flip-invariant, so its
        answer for any flip of an image is this mean, and copying it teaches the student the
        averaged answer in one pass. Per-flip targets would copy one view's answer, noise
        included. The file keeps the per-flip probabilities for measuring the teachers.
        """
        from core.training.soft_targets import training_targets

        args = self.args
        soft, summary = training_targets(args.soft_targets, self.frame["image_id"], split_sha256=self.split_sha256,
                                         temperature=args.distill_temperature)
        self.onehot = np.concatenate([self.onehot, soft], axis=1)
        log.info("distilling %s at T=%g, soft share %g", [t["name"] for t in summary["teachers"]],
                 args.distill_temperature, args.distill_weight)
        return summary

    def write_config(self) -> None:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items() if k != "resume"}
        config.update(classes=self.classes, split_sha256=self.split_sha256, n_images=len(self.frame),
                      split_sizes={split: len(idx) for split, idx in self.idx.items()},
                      versions=library_versions(), created=now(), **model_facts(self.args.arch, self.args.weights))
        if self.distillation:
            config["distillation"] = self.distillation
        self.folder.write_json(rf.CONFIG_FILE, config)

    def build(self, strategy) -> None:
        """Build the model, or restore it from the run's checkpoints when resuming."""
        import keras

        self.strategy, self.phase = strategy, None
        self.events = EventLog(self.folder.dir)
        with strategy.scope():
            state = rf.read_json(self.folder.path(rf.STATE_FILE)) if self.args.resume else None
            if state:
                self.restore(state)
            else:
                keras.utils.set_random_seed(self.args.seed)
                self.model = build_model(self.args.arch, input_hw(self.args), self.k, weights=self.args.weights,
                                         dropout=self.args.dropout)
                self.start_epoch, self.best = 0, None
        log.info("strategy %s with %d replicas", type(strategy).__name__, strategy.num_replicas_in_sync)

    def restore(self, state: dict) -> None:
        """Continue from ``last.keras`` with its optimizer; if it is unreadable, from the best model."""
        import keras

        last, best_file = self.folder.path(rf.CHECKPOINT_FILE), self.folder.path(rf.MODEL_FILE)
        self.best = state.get("best")
        try:
            self.model = load_checkpoint(last)
        except Exception as err:  # noqa: BLE001  a truncated zip raises anything from OSError to ValueError
            log.warning("%s is unreadable (%s: %s); falling back to the best checkpoint %s", last.name,
                        type(err).__name__, str(err)[:200], best_file.name)
        else:
            self.start_epoch, self.phase = int(state["epoch"]), state.get("phase")
            step = int(self.model.optimizer.iterations.numpy())
            log.info("resuming after epoch %d with the optimizer state (step %d)", self.start_epoch, step)
            return
        try:
            self.model = keras.models.load_model(best_file, compile=False)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"cannot resume: {last.name} and {best_file.name} are both unreadable "
                                  f"({type(err).__name__}); start a new run") from err
        self.start_epoch = int((self.best or {}).get("epoch") or 0)
        log.warning("resuming after epoch %d from %s with a fresh optimizer", self.start_epoch, best_file.name)

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
        ds = make_dataset(self.images, order, self.onehot, sample_weights=self.sample_weights,
                          batch_size=args.batch_size, augment=args.augment, seed=args.seed + epoch)
        batches = -(-len(order) // args.batch_size)
        self.folder.update(epoch=epoch + 1, epochs=args.epochs, phase=phase, batch=0, batches=batches,
                           message=f"epoch {epoch + 1}/{args.epochs} ({phase})")
        started = time.monotonic()
        callback = make_progress_callback(self.folder, epoch + 1, batches, distributed=self.distributed)
        if self.distributed:
            history = fit_multi_worker(self.model, ds, callback=callback, strategy=self.strategy)
        else:
            history = self.model.fit(ds, epochs=1, verbose=0, callbacks=[callback])
        if callback.stopped:
            return False
        self.end_epoch(epoch, phase=phase, lr=lr, history=history.history, seconds=time.monotonic() - started)
        return not (self.distributed and stop_agreed(self.strategy, self.folder))

    @property
    def distributed(self) -> bool:
        """True under a multi-worker strategy, where stops are agreed at epoch ends."""
        return cluster_workers() > 1

    def end_epoch(self, epoch: int, *, phase: str, lr: float, history: dict, seconds: float) -> None:
        self.folder.set_phase(rf.VALIDATE_PHASE, f"epoch {epoch + 1}: scoring validation", len(self.idx["val"]))
        probs = predict_probs(self.model, self.images, self.idx["val"], direct=self.distributed,
                              progress=self.folder.advance)
        val = score(self.labels[self.idx["val"]], probs, self.k)
        record = {"kind": rf.EPOCH_RECORD, "epoch": epoch + 1, "phase": phase, "lr": lr,
                  "seconds": round(seconds, 1)}
        record.update({k: float(history[k][-1]) for k in rf.EPOCH_METRICS})
        record.update({rf.val_key(k): v for k, v in val.items()})
        self.folder.append_metrics(record)
        self.events.write(record)
        log.info("epoch %d %s: %s", epoch + 1, phase, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
        if self.best is None or record[rf.BEST_KEY] > self.best[rf.BEST_KEY]:
            self.best = {"epoch": epoch + 1, **{rf.val_key(k): v for k, v in val.items()}}
            export_model(self.model, self.folder.path(rf.MODEL_FILE))
            self.write_model_metadata()
        save_atomic(self.model, self.folder.path(rf.CHECKPOINT_FILE))
        if self.args.average_from and epoch + 1 >= self.args.average_from:
            self.add_to_average(epoch + 1 - self.args.average_from + 1)
        self.folder.write_json(rf.STATE_FILE, {"epoch": epoch + 1, "phase": phase, "best": self.best})
        self.folder.update(best=self.best)

    def add_to_average(self, position: int) -> None:
        """Fold this epoch's weights, the ``position``-th averaged (1-based), into ``average.npz``.

        An epoch already in the mean (a resume after a crash between the two writes)
        is not added twice. BatchNorm layers are frozen while fine-tuning, so their
        statistics do not move and the mean of the weights is itself a consistent model.
        """
        saved = rf.read_arrays(self.folder.path(rf.AVERAGE_FILE))
        if saved is not None and saved[1] >= position:
            return
        weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
        if saved is None:
            mean, count = weights, 1
        else:
            previous, count = saved
            count += 1
            mean = [m + (w - m) / count for m, w in zip(previous, weights)]
        rf.write_arrays_atomic(self.folder.path(rf.AVERAGE_FILE), mean, count)
        log.info("weights of %d epochs averaged", count)

    def keep_average_if_better(self) -> None:
        """Score the averaged weights on validation; make them the model when they beat the best epoch."""
        saved = rf.read_arrays(self.folder.path(rf.AVERAGE_FILE))
        if saved is None or saved[1] < 2 or not len(self.idx["val"]):
            return
        mean, count = saved
        self.folder.set_phase("average", f"scoring the mean of the last {count} epochs' weights on validation",
                              len(self.idx["val"]))
        self.model.set_weights([m.astype(np.float32) for m in mean])
        probs = predict_probs(self.model, self.images, self.idx["val"], progress=self.folder.advance)
        val = score(self.labels[self.idx["val"]], probs, self.k)
        first = self.args.epochs - count + 1
        record = {"kind": rf.AVERAGE_RECORD, "epochs": [first, self.args.epochs],
                  **{rf.val_key(k): v for k, v in val.items()}}
        chosen = self.best is None or record[rf.BEST_KEY] > self.best[rf.BEST_KEY]
        record["chosen"] = chosen
        self.folder.append_metrics(record)
        log.info("average of epochs %d-%d: val %s; %s", first, self.args.epochs,
                 {k: round(v, 4) for k, v in val.items()}, "kept" if chosen else "the best epoch stays")
        if chosen:
            self.best = {"epoch": self.args.epochs, "averaged_epochs": [first, self.args.epochs],
                         **{rf.val_key(k): v for k, v in val.items()}}
            export_model(self.model, self.folder.path(rf.MODEL_FILE))
            self.write_model_metadata()
            self.folder.update(best=self.best)

    def write_model_metadata(self, **extra) -> None:
        args = self.args
        height, width = input_hw(args)
        meta = {"classes": self.classes, "image_height": height, "image_width": width,
                **model_facts(args.arch, args.weights),
                "input": "RGB float32 in 0..255, decoded by core.dataset.images, resized to image_height x image_width "
                "(bilinear stretch, no crop)",
                "temperature": None, "split_sha256": self.split_sha256,
                "created": now(), "run_id": self.folder.dir.name, "best": self.best}
        meta.update(extra)
        write_metadata(self.folder.dir, meta)

    def finish(self) -> None:
        """Predict val and test with the best checkpoint and write the prediction files."""
        import keras

        self.keep_average_if_better()
        total = len(self.idx["val"]) + len(self.idx["test"])
        self.folder.set_phase("predict", "predicting val and test with the best checkpoint", total)
        best = keras.models.load_model(self.folder.path(rf.MODEL_FILE), compile=False)
        done = 0
        for split in ("val", "test"):
            idx = self.idx[split]
            if len(idx) == 0:
                continue
            probs = predict_probs(best, self.images, idx, progress=lambda n, before=done: self.folder.advance(before + n))
            done += len(idx)
            write_predictions(self.folder.path(rf.predictions_file(split)), self.frame.iloc[idx], probs,
                              classes=self.classes)
            if split == "val":
                self.calibrate(probs, self.labels[idx])
                self.folder.set_phase("predict", "predicting val and test with the best checkpoint", total)
                self.folder.advance(done)
                log.info("val (n=%d): %s", len(idx), score(self.labels[idx], probs, self.k))
            else:  # the test split is scored once, by whoever evaluates the finished model, not in the log
                log.info("%s (n=%d): predictions written", split, len(idx))
        if len(self.idx["val"]):
            self.fit_ood(best)

    def fit_ood(self, model) -> None:
        """Fit the feature-space out-of-distribution score (core.serving.ood) and record it in model.json."""
        from core.serving import ood_fit
        rng = np.random.default_rng(self.args.seed)
        train = self.idx["train"]
        train = np.sort(rng.choice(train, size=min(ood_fit.MAX_TRAIN, len(train)), replace=False))
        self.folder.set_phase("ood", f"fitting the out-of-distribution scorer on {len(train)} training images",
                              ood_fit.FIT_STEPS, unit="steps")
        entry = ood_fit.fit_for_model(self.folder.dir, model, train_images=self.images[train],
                                      val_images=self.images[self.idx["val"]], seed=self.args.seed,
                                      progress=self.folder.advance)
        meta = read_metadata(self.folder.dir)
        meta["ood"] = entry
        write_metadata(self.folder.dir, meta)
        log.info("out-of-distribution threshold %.2f (%s, fitted on val n=%d)", entry["threshold"], entry["method"], entry["n"])

    def calibrate(self, val_probs: np.ndarray, val_labels: np.ndarray) -> None:
        """Fit temperature scaling on validation and store it with the model."""
        from core.serving.calibration import expected_calibration_error, fit_temperature, save_temperature

        self.folder.set_phase("calibrate", f"fitting the temperature on validation (n = {len(val_labels)})")
        temperature = fit_temperature(val_probs, val_labels)
        save_temperature(self.folder.dir, temperature, n=len(val_labels))
        log.info("temperature %.3f fitted on val (n=%d); val ECE %.4f before scaling", temperature,
                 len(val_labels), expected_calibration_error(val_probs, val_labels))


def parse_args(argv=None):
    """Parsed, resume-merged and validated options; exits with code 2 and one line when they are bad."""
    return common.parse_args(argv, prog=PROG, description=build_parser().description)


def main(argv=None) -> int:
    """Run ``lesionlab train``; returns the exit code."""
    args = parse_args(argv)
    chief = is_chief()
    run_dir = args.run_dir if chief else worker_dir()
    try:
        return common.run_locked(args, run_dir, _run, prog=PROG)
    finally:
        if not chief and not os.environ.get(WORKER_DIR_ENV):
            shutil.rmtree(run_dir, ignore_errors=True)


def _run(args, folder: RunFolder) -> int:
    """Train into a locked run folder: a segmentation run goes to ``core.training.segment_train``."""
    if args.task == options.SEGMENT:
        return _segment(args, folder)
    return _train(args, folder)


def _segment(args, folder: RunFolder) -> int:
    """Hand a segmentation run to ``core.training.segment_train.train(args, folder)``."""
    import importlib

    try:  # by module name, so an installed stand-in in sys.modules is honoured
        segment_train = importlib.import_module("core.training.segment_train")
    except ModuleNotFoundError as err:
        if err.name != "core.training.segment_train":
            raise
        message = "segmentation training is not available in this version (core.training.segment_train is missing)"
        log.error(message)
        folder.update(state="failed", finished=now(), message=message)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return segment_train.train(args, folder)


def _train(args, folder: RunFolder) -> int:
    strategy = choose_strategy(args.logical_cpus)  # first: MultiWorkerMirroredStrategy wants a fresh runtime
    trainer = Trainer(args, folder)
    trainer.prepare_data()
    trainer.write_config()
    trainer.build(strategy)
    return rf.run_epochs(trainer, folder, args.epochs)


if __name__ == "__main__":
    sys.exit(main())
