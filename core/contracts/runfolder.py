"""The run folder: its file names, its record keys, the one atomic writer and its readers.

A run folder is written by ``lesionlab train --run-dir DIR`` (or another
trainer started through it, such as segmentation) and read by the run registry
(:mod:`core.training.runs`), the Train page and evaluation. Every file name of a run
folder is spelled here and nowhere else:

=========================  ==========================================================
``config.json``            every option, classes, image size, split hash, versions
``status.json``            state, heartbeat, epoch/batch, best epoch (atomic writes)
``metrics.jsonl``          one JSON record per line: ``kind`` ``epoch``, ``batch`` or ``average``
``train.log``              the trainer's log
``STOP``                   present: the trainer stops after its current batch (as on SIGTERM)
``train.lock``             the trainer's exclusive lock (``fcntl.flock``)
``launch.json``            what the registry launched (pid, argv, options)
``last.keras``             the last epoch's model with its optimizer state (resume)
``state.json``             the last completed epoch, its phase and the best epoch
``average.npz``            the running mean of the weights (``--average-from``) and its count
``model.keras``            the best model (inference graph), ``model.json`` its metadata
``splits.csv``             the lesion-grouped split the run used
``predictions_*.csv``      the best model's predictions, one file per split
``tensorboard/``           TensorBoard event files (``train/`` and ``validation/``)
``ood.npz``                the out-of-distribution gate's fitted statistics
``metadata_branch.npz``    optional: age, sex and site weights (``core.serving.metadata_branch``)
``scores_*.csv``           a segmenter's per-image scores, one file per split
``export/``                ready-made TFLite exports (``model_<variant>.tflite``) and their cards
=========================  ==========================================================

This module imports neither TensorFlow nor Streamlit.
"""

import fcntl
import json
import logging
import os
import secrets
import signal
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
STOP_FILE = "STOP"
LOCK_FILE = "train.lock"
LAUNCH_FILE = "launch.json"
CHECKPOINT_FILE = "last.keras"
STATE_FILE = "state.json"
AVERAGE_FILE = "average.npz"
MODEL_FILE = "model.keras"
METADATA_FILE = "model.json"
SPLITS_FILE = "splits.csv"
TENSORBOARD_DIR = "tensorboard"
PREDICTIONS_PATTERN = "predictions_{split}.csv"
OOD_FILE = "ood.npz"  # the fitted out-of-distribution gate's statistics, in a model folder
METADATA_BRANCH_FILE = "metadata_branch.npz"  # optional: the age/sex/site branch of a model folder
SCORES_PATTERN = "scores_{split}.csv"  # a segmenter folder's per-image scores of one split
EXPORT_DIR = "export"  # inside a model folder: ready-made exports (export_file) and their JSON cards
EXPORT_PATTERN = "model_{variant}.tflite"
TEMP_MARK = ".tmp"  # in the name of write_atomic's temporary files

# metrics.jsonl records
EPOCH_RECORD = "epoch"
BATCH_RECORD = "batch"
# The validation scores of the averaged weights (--average-from), written once at the end.
AVERAGE_RECORD = "average"
# The scores of an epoch, on training batches under their own name and on validation with VAL_PREFIX.
EPOCH_METRICS = ("loss", "accuracy", "balanced_accuracy", "auc")
VAL_PREFIX = "val_"
# The best epoch is the one with the highest value of this record key.
BEST_KEY = VAL_PREFIX + "balanced_accuracy"

# status.json's ``phase``: what the trainer does now. Training phases run batches (a STOP takes
# effect after the current batch); the others run between epochs or after the last one,
# with their own ``progress`` ({"done", "total", "unit"}) where it can be counted.
TRAIN_PHASES = ("warmup", "finetune", "train")
VALIDATE_PHASE = "validate"  # scoring the epoch just trained on validation, saving checkpoints
# After the last epoch, per task, in this order ("average" only with --average-from; the
# temperature is fitted between the val and the test predictions).
FINISH_PHASES = {"classification": ("average", "predict", "calibrate", "ood"),
                 "segmentation": ("threshold", "score")}


def is_model_dir(path: Path) -> bool:
    """True when ``path`` holds both a model (``model.keras``) and its metadata (``model.json``)."""
    path = Path(path)
    return (path / MODEL_FILE).is_file() and (path / METADATA_FILE).is_file()

def val_key(metric: str) -> str:
    """The record key of a validation score, e.g. ``val_auc`` for ``auc``."""
    return VAL_PREFIX + metric


def predictions_file(split: str) -> str:
    """The file name of a split's predictions, e.g. ``predictions_val.csv``."""
    return PREDICTIONS_PATTERN.format(split=split)


def scores_file(split: str) -> str:
    """The file name of a segmenter's per-image scores of a split, e.g. ``scores_val.csv``."""
    return SCORES_PATTERN.format(split=split)


def export_file(variant: str) -> str:
    """The file name of a ready-made export in :data:`EXPORT_DIR`: a quantisation (``model_int8.tflite``) or ``private``."""
    return EXPORT_PATTERN.format(variant=variant)


def now_iso() -> str:
    """The current UTC time as the run folder writes it (ISO 8601, seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- reading and writing


def write_atomic(path: Path, write) -> None:
    """Make ``path`` with ``write(temporary path)``, then rename the temporary file over ``path``.

    The one atomic writer: a reader sees the old file or the whole new one, never
    half of it. The temporary file is hidden, in ``path``'s own folder (a rename
    within one file system is atomic), named uniquely per call (two writers of one
    file never share it) and keeps ``path``'s suffix (``np.save`` and Keras choose
    the format by it); whatever happens in ``write``, it does not outlive the call.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def _through_file(write_file):
    """``write(temporary path)`` for :func:`write_atomic` from ``write_file(binary file)``."""
    def write(tmp: Path) -> None:
        with open(tmp, "xb") as fh:
            write_file(fh)
    return write


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes so a reader never sees half a file."""
    write_atomic(path, _through_file(lambda fh: fh.write(data)))


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text so a reader never sees half a file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: dict, *, sort_keys: bool = False) -> None:
    """Write JSON so a reader never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=float))


def write_arrays_atomic(path: Path, arrays: list, count: int) -> None:
    """Save numbered arrays and a count as ``.npz`` so a reader never sees half a file."""
    write_npz_atomic(path, {"count": np.int64(count), **{f"a{i}": a for i, a in enumerate(arrays)}}, compressed=False)


def write_npz_atomic(path: Path, arrays: dict, *, compressed: bool = True) -> None:
    """Save named arrays as an ``.npz`` (compressed unless told) so a reader never sees half a file."""
    save = np.savez_compressed if compressed else np.savez
    write_atomic(path, _through_file(lambda fh: save(fh, **arrays)))


def read_arrays(path: Path) -> tuple[list, int] | None:
    """The arrays and count written by :func:`write_arrays_atomic`, or None when missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[f"a{i}"] for i in range(len(data.files) - 1)]
            return arrays, int(data["count"])
    except (OSError, ValueError, KeyError):
        return None


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, partial or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def parse_record(line: str) -> dict | None:
    """One ``metrics.jsonl`` line as a dict, or None for a blank, partial or non-object line."""
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(run_dir: Path) -> list[dict]:
    """Every complete record of a run's ``metrics.jsonl``, in file order (empty when missing).

    The half-written last line of a running trainer is skipped.
    """
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [r for r in map(parse_record, text.splitlines()) if r is not None]


# ---------------------------------------------------------------- the lock


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive, non-blocking ``fcntl.flock`` on a run folder's ``train.lock``.

    The lock ends with the process, so a killed trainer never leaves a stale lock.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunFolderBusy` at once."""
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunFolderBusy(f"{self.path.parent} is in use by another trainer") from None
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock back (closing the file releases it)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def is_locked(run_dir: Path) -> bool:
    """True while a trainer holds the run folder's lock."""
    if not (Path(run_dir) / LOCK_FILE).is_file():
        return False
    try:
        RunLock(run_dir).acquire().release()
    except RunFolderBusy:
        return True
    return False


# ---------------------------------------------------------------- the writer


class RunFolder:
    """Writes the live files of one run folder: status, metrics records and the stop request.

    The interface every trainer uses (``core.training.train``, ``core.training.segment_train``):
    ``update(**fields)``, ``append_metrics(record)``, ``stop_requested()``.
    The caller holds the folder's :class:`RunLock`.
    """

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.status = {"state": "queued", "pid": os.getpid(), "started": now_iso(), "finished": None, "best": None}
        previous = read_json(self.dir / STATUS_FILE) or {}
        # a resumed run keeps its start time and best epoch
        self.status.update({k: previous[k] for k in ("best", "started") if previous.get(k)})

    def path(self, name: str) -> Path:
        """The path of a file of this run folder."""
        return self.dir / name

    def update(self, **fields) -> None:
        """Merge ``fields`` into ``status.json`` with a fresh heartbeat (atomic write)."""
        self.status.update(fields, pid=os.getpid(), updated=now_iso())
        write_json_atomic(self.dir / STATUS_FILE, self.status)

    def append_metrics(self, record: dict) -> None:
        """Append one record to ``metrics.jsonl`` and flush it."""
        with open(self.dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
            handle.flush()

    def stop_requested(self) -> bool:
        """True once a ``STOP`` file (or SIGTERM, see :func:`listen_for_sigterm`) asks the trainer to stop."""
        return _SIGNALLED["stop"] or (self.dir / STOP_FILE).exists()

    def set_phase(self, phase: str, message: str, total: int | None = None, *, unit: str = "images") -> None:
        """Record the phase the trainer enters, with a count of ``total`` units to do when it has one."""
        progress = {"done": 0, "total": int(total), "unit": unit} if total else None
        self.update(phase=phase, message=message, progress=progress)

    def advance(self, done: int) -> None:
        """Record how many units of the current phase are done."""
        progress = self.status.get("progress")
        if progress:
            self.update(progress={**progress, "done": int(min(done, progress["total"]))})

    def clear_stop(self) -> None:
        """Remove a ``STOP`` file left from before (a new start or a resume)."""
        (self.dir / STOP_FILE).unlink(missing_ok=True)

    def write_json(self, name: str, data: dict) -> None:
        """Write one of the folder's JSON files (``config.json``, ``state.json``) atomically."""
        write_json_atomic(self.dir / name, data)

    def mark_stopped(self, epoch: int) -> None:
        """Record a stop on request during ``epoch`` (1-based) and where a resume continues.

        A resume continues after the last epoch ``state.json`` records, which is the
        stopped epoch itself when the stop landed mid-epoch.
        """
        saved = int((read_json(self.dir / STATE_FILE) or {}).get("epoch") or 0)
        self.update(state="stopped", finished=now_iso(),
                    message=f"stopped during epoch {epoch}; resume continues from epoch {saved + 1}")

    def mark_done(self) -> None:
        """Record a run that ended normally."""
        self.update(state="done", finished=now_iso(), message="finished")


_SIGNALLED = {"stop": False}


def listen_for_sigterm() -> None:
    """Make SIGTERM ask this process's trainer to stop, as a ``STOP`` file does (after the current batch)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _SIGNALLED.update(stop=True))


def run_epochs(trainer, folder: RunFolder, epochs: int) -> int:
    """Run a trainer's epochs up to ``epochs``, then finish it; a stop on request ends the run early.

    A stop that arrives while the last epoch is scored on validation is honoured
    before the final phases start: a resume then runs only those.

    Args:
        trainer: has ``start_epoch`` (0-based), ``run_epoch(epoch) -> bool`` (False when the
            run stops), ``finish()`` and ``best``: ``core.training.train.Trainer`` and
            ``core.training.segment_train.SegmentTrainer``.
        folder: the run folder whose status records the end.
        epochs: the run's length.

    Returns:
        0, the trainer's exit status for a stopped or a finished run.
    """
    for epoch in range(trainer.start_epoch, epochs):
        if not trainer.run_epoch(epoch):
            log.info("stopped on request during epoch %d", epoch + 1)
            folder.mark_stopped(epoch + 1)
            return 0
    if folder.stop_requested():
        log.info("stopped on request before the final phases")
        folder.update(state="stopped", finished=now_iso(), message=f"stopped after epoch {epochs}, before the "
                      "final scoring; resume does only that")
        return 0
    trainer.finish()
    folder.mark_done()
    log.info("run finished; best %s", trainer.best)
    return 0


def request_stop(run_dir: Path) -> Path:
    """Ask a run to stop after its current batch (creates the ``STOP`` file)."""
    path = Path(run_dir) / STOP_FILE
    path.write_text(now_iso() + "\n", encoding="utf-8")
    return path
