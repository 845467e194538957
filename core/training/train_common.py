"""What both trainers share: the command line, the run folder's setup, data split, batch progress, model files.

``core.training.train`` (classification, and the command line's entry for both tasks)
and ``core.training.segment_train`` (segmentation) import this module; neither imports
the other at module level, and the segment trainer never imports ``core.training.train``,
so there is no import cycle between them. The options themselves are
:mod:`core.training.options`; the run folder's files and the stop request are
:mod:`core.contracts.runfolder`. TensorFlow is imported only inside the functions that
need it.
"""

import argparse
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from core.training import options

from core.contracts import paths
from core.contracts import runfolder as rf
from core.dataset.data import load_dataset
from core.contracts.runfolder import RunFolder, RunFolderBusy, RunLock
from core.contracts.runfolder import now_iso as now
from core.dataset.splits import load_splits, make_splits, save_splits

log = logging.getLogger("core.training.train")
EXIT_USAGE = 2  # bad options, busy run folder: nothing was trained


# ---------------------------------------------------------------- the command line


def build_parser(prog: str, task: str = options.CLASSIFY, description: str = "") -> argparse.ArgumentParser:
    """A trainer's command line for ``task``: ``--run-dir``, the task's options and ``--resume``."""
    p = options.OneLineParser(prog=prog, description=description, formatter_class=options.HelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path, help="run folder to create (or resume)")
    options.add_arguments(p, task)
    p.set_defaults(task=task)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last completed epoch (the segmenter also takes "
                        "--epochs: a new length)")
    return p


def option_values(args) -> dict:
    """The training options of parsed arguments (without ``run_dir`` and ``resume``)."""
    values = {o.name: getattr(args, o.name) for o in options.schema(args.task) if hasattr(args, o.name)}
    return {**values, "task": args.task}


def validate_args(args) -> list[str]:
    """Problems with the options, named by their flags; empty when all is well (:func:`core.training.options.validate`)."""
    return options.validate(option_values(args), cli=True)


def requested_task(argv: list, default: str) -> str:
    """The task of a command line: ``--task``, else the config of the run ``--resume`` continues, else ``default``."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--task")
    peek.add_argument("--run-dir", type=Path)
    peek.add_argument("--resume", action="store_true")
    known = peek.parse_known_args(argv)[0]
    if known.task:
        return known.task
    if known.resume and known.run_dir:
        return (rf.read_json(known.run_dir / rf.CONFIG_FILE) or {}).get("task") or default
    return default


def parse_args(argv=None, *, prog: str, default_task: str = options.CLASSIFY, description: str = ""):
    """Parsed, resume-merged, completed and validated options; exits with code 2 and one line when they are bad.

    The parser holds the options of the task the command line asks for, so an
    option of the other task is refused as unknown. A segmentation run resumed
    with ``--epochs`` gets that new length.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    task = requested_task(argv, default_task)
    if task not in options.TASKS:
        task = default_task  # the parser's --task choices then refuse it with the usual message
    parser = build_parser(prog, task, description)
    args = parser.parse_args(argv)
    if args.resume:
        epochs = args.epochs if task == options.SEGMENT and "--epochs" in argv else None
        args = load_resume_args(parser, args.run_dir, keep=("planned_epochs",), epochs=epochs)
    args = argparse.Namespace(**{**vars(args), **options.complete(option_values(args))})
    errors = validate_args(args)
    if errors:
        _mark_failed(args.run_dir, "; ".join(errors))
        parser.error("; ".join(errors))
    return args


def load_resume_args(parser: argparse.ArgumentParser, run_dir: Path, *, keep=(), epochs: int | None = None):
    """The options a run was started with, read back from its config file.

    ``keep`` names recorded values that are not options of ``parser`` but are carried
    over when the config has them (the segmenter's ``planned_epochs``). ``epochs``
    changes the run's length: fewer ends it (the best checkpoint is then scored) at
    the epochs already done, more extends it; the planned length is kept.
    """
    config = rf.read_json(run_dir / rf.CONFIG_FILE)
    if config is None:
        parser.error(f"--resume: no readable {rf.CONFIG_FILE} in {run_dir}")
    defaults = vars(parser.parse_args(["--run-dir", str(run_dir)]))
    merged = {k: config.get(k, v) for k, v in defaults.items()}
    for key in (option.name for option in options.OPTIONS if option.kind is Path):
        merged[key] = Path(merged[key]) if merged.get(key) else None
    merged["run_dir"], merged["resume"] = run_dir, True
    merged.update({k: config[k] for k in keep if config.get(k)})
    if epochs is not None and epochs != merged["epochs"]:
        merged["planned_epochs"] = merged.get("planned_epochs") or merged["epochs"]
        merged["epochs"] = epochs
    return argparse.Namespace(**merged)


def _mark_failed(run_dir: Path, message: str) -> None:
    """Record a refused start in a folder the page created, unless another trainer holds it."""
    if not run_dir.is_dir():
        return
    try:
        with RunLock(run_dir):
            RunFolder(run_dir).update(state="failed", finished=now(), message=message)
    except RunFolderBusy:
        pass


# ---------------------------------------------------------------- running in a folder


def run_locked(args, run_dir: Path, work, *, prog: str) -> int:
    """Lock ``run_dir`` and run ``work(args, folder)`` there; any failure ends up in the folder's status.

    Returns ``work``'s exit code, 1 when it raised, or :data:`EXIT_USAGE` when
    another trainer holds the folder (nothing is changed then).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(run_dir).acquire()
    except RunFolderBusy as err:
        print(f"{prog}: error: {err}; nothing was changed", file=sys.stderr)
        return EXIT_USAGE
    try:
        folder = RunFolder(run_dir)
        folder.clear_stop()
        setup_logging(folder.dir)
        rf.listen_for_sigterm()
        folder.update(state="running", message="starting")
        log.info("run %s started (pid %d): %s", folder.dir.name, os.getpid(), " ".join(sys.argv[1:]))
        try:
            return work(args, folder)
        except Exception as err:  # noqa: BLE001  any failure must reach the status file, not only the log
            log.error("run failed: %s\n%s", err, traceback.format_exc())
            folder.update(state="failed", finished=now(), message=f"{type(err).__name__}: {err}")
            return 1
    finally:
        lock.release()


def setup_logging(run_dir: Path) -> None:
    handlers = [logging.FileHandler(run_dir / rf.LOG_FILE, encoding="utf-8")]
    if sys.stderr.isatty():
        handlers.append(logging.StreamHandler())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)


def library_versions() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


# ---------------------------------------------------------------- data and split

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
    target = run_dir / rf.SPLITS_FILE
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


def split_dataset(args, folder: RunFolder) -> tuple[pd.DataFrame, str]:
    """The dataset with the run's lesion-grouped split as a ``split`` column, and the split's hash."""
    folder.update(state="running", message="loading the dataset")
    frame = load_dataset(args.data_dir or paths.dataset_dir())
    splits, split_sha256 = prepare_split(args, frame, folder.dir)
    # the split covers the whole dataset; --max-images samples lesions within it
    return frame.merge(splits[["image_id", "split"]], on="image_id", how="inner"), split_sha256


def split_indices(frame: pd.DataFrame, split_sha256: str) -> dict:
    """``{split: row positions}`` for train, val and test, logged with the split's hash."""
    idx = {s: np.flatnonzero(frame["split"].to_numpy() == s) for s in ("train", "val", "test")}
    log.info("split %s: %s", split_sha256[:12], {s: len(i) for s, i in idx.items()})
    return idx


# ---------------------------------------------------------------- training


def make_progress_callback(folder: RunFolder, epoch: int, batches: int, *, every_seconds: float = 2.0,
                           distributed: bool = False):
    """A Keras callback that writes batch progress and the heartbeat, and honours STOP.

    Under a multi-worker strategy a stop mid-epoch would leave the other workers
    waiting in a collective: there the stop is agreed at the epoch's end instead.
    """
    import keras

    class Progress(keras.callbacks.Callback):
        stopped = False
        last = 0.0
        started = time.monotonic()

        def on_train_batch_end(self, batch, logs=None):
            if not distributed and folder.stop_requested():
                self.model.stop_training = True
                self.stopped = True
            t = time.monotonic()
            if t - self.last >= every_seconds or batch + 1 == batches or self.stopped:
                self.last = t
                loss = float((logs or {}).get("loss", float("nan")))
                folder.append_metrics({"kind": rf.BATCH_RECORD, "epoch": epoch, "batch": batch + 1, "batches": batches,
                                       "loss": loss, "seconds": round(t - self.started, 2)})
                folder.update(batch=batch + 1, batches=batches)

    return Progress()


def save_atomic(model, path: Path) -> None:
    """Save a Keras model so ``path`` always holds a complete file (:func:`core.contracts.runfolder.write_atomic`)."""
    rf.write_atomic(path, model.save)


def export_model(model, path: Path) -> None:
    """Save the bare inference graph (no optimizer, no training metrics), atomically."""
    import keras

    save_atomic(keras.Model(inputs=model.inputs, outputs=model.outputs, name=model.name), path)
