"""The run registry: launch, watch, stop, resume and delete training runs.

A run is a folder under :func:`core.contracts.paths.runs_dir` written by
``lesionlab train --run-dir DIR`` (its files: :mod:`core.contracts.runfolder`). The
folder is the only truth: this module reads the status, the metrics records and
the log and never keeps state of its own, so a reloaded page or a restarted
server sees the same runs.

The launcher adds one file of its own (pid, argv, options), so a queued run can
be recognised as alive before the trainer writes its first status.
Only one run is active at a time: the check and the launch happen under an
exclusive lock on ``runs_dir/.lock``.
"""

import ast
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core.training import options as opts
from core.contracts import cli_args, paths
from core.contracts.runfolder import (
    BATCH_RECORD,
    CONFIG_FILE,
    EPOCH_RECORD,
    LAUNCH_FILE,
    LOG_FILE,
    METRICS_FILE,
    STATE_FILE,
    STATUS_FILE,
    STOP_FILE,
    read_json,
    read_records,
    request_stop,
    write_json_atomic,
)

# The registry's own lock, in runs_dir (each run folder has its trainer's lock, core.contracts.runfolder.LOCK_FILE).
REGISTRY_LOCK_FILE = ".lock"

TRAINER_COMMANDS = ("train", "segment-train")  # the lesionlab commands that write a run folder
ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("stopped", "crashed", "failed")
# The trainer writes a heartbeat at least every batch; a silence this long means it hangs.
STALE_AFTER_SECONDS = 15 * 60
# A queued run whose launcher never recorded a pid within this time never started.
QUEUED_GRACE_SECONDS = 60
# The ETA waits for this many batches timed after an epoch's first (which also traces the graph).
MIN_TIMED_BATCHES = 3

DEFAULT_OPTIONS = {name: value for name, value in opts.DEFAULTS.items() if value is not None}
__all__ = ["CONFIG_FILE", "LAUNCH_FILE", "LOG_FILE", "METRICS_FILE", "STATUS_FILE", "STOP_FILE", "request_stop"]


class RunError(RuntimeError):
    """A run operation that cannot be done; the message says why."""


class RunBusyError(RunError):
    """Another run is active; only one may train at a time."""

    def __init__(self, run_id: str):
        super().__init__(f"a run is already active: {run_id}")
        self.run_id = run_id


class OptionsError(RunError):
    """Training options that fail validation; ``errors`` lists every problem."""

    def __init__(self, errors: list):
        super().__init__("invalid options: " + "; ".join(errors))
        self.errors = list(errors)


@dataclass
class Metrics:
    """What ``metrics.jsonl`` holds: one row per epoch and the latest batch line."""

    epochs: pd.DataFrame
    batch: dict | None = None
    batches: pd.DataFrame = field(default_factory=pd.DataFrame)


# ---------------------------------------------------------------- ids and small files


def new_run_id(arch: str | None = None) -> str:
    """A new run id: a sortable UTC timestamp, the architecture and a random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = (arch or "run").replace("_", "-")
    return f"{stamp}-{slug}-{secrets.token_hex(2)}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None = None) -> str:
    return (moment or _now()).isoformat(timespec="seconds")


def parse_time(value) -> datetime | None:
    """Parse an ISO time from a status file; naive times are taken as local time."""
    if not value or not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(timezone.utc)


# ---------------------------------------------------------------- liveness and status


def _cmdline(pid: int) -> list | None:
    """The argv of a process from /proc, or None where /proc is not available."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return [] if Path("/proc/self").exists() else None
    except OSError:
        return None
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def _is_user_process(pid: int) -> bool:
    """True for a process that is neither a zombie nor a kernel thread."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    kernel_thread = 0x00200000  # PF_KTHREAD
    return fields[0] not in ("Z", "X") and not int(fields[6]) & kernel_thread


def pid_alive(pid, argv: list | None = None) -> bool:
    """True when ``pid`` is a live trainer process.

    A pid may be reused by an unrelated process after the trainer died, so the
    process must also be the trainer: its command line equals ``argv`` (what the
    launcher started) or is a trainer's (:func:`is_trainer_cmdline`). A zombie has an
    empty command line and counts as dead.
    """
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else: the command line decides
    cmdline = _cmdline(pid)
    if cmdline is None:
        return True
    if not cmdline:
        # Empty for a zombie and a kernel thread, but also for a moment while a freshly
        # launched process is inside exec: only the latter counts as alive.
        return _is_user_process(pid)
    if argv and cmdline == [str(a) for a in argv]:
        return True
    return is_trainer_cmdline(cmdline)


def is_trainer_cmdline(cmdline: list) -> bool:
    """True for a trainer's command line: ``lesionlab train ...``, ``python -m core train ...``
    (``segment-train`` alike), or one that names a trainer's module (``python -m core.training.train``)."""
    modules = [cli_args.COMMANDS[command].module for command in TRAINER_COMMANDS]
    if any(module in part for part in cmdline for module in modules):
        return True
    return any(part in TRAINER_COMMANDS and _runs_the_dispatcher(cmdline[:k]) for k, part in enumerate(cmdline))


def _runs_the_dispatcher(argv: list) -> bool:
    """True when ``argv`` ends by naming the dispatcher: ``... -m core`` or ``.../lesionlab``."""
    return argv[-2:] == ["-m", cli_args.PACKAGE] or (bool(argv) and Path(argv[-1]).name == cli_args.PROGRAM)


def read_status(run_dir: Path, now: datetime | None = None) -> dict:
    """The status of a run, as shown to the user.

    Never raises for a damaged folder. Adds to what the trainer wrote: ``state``
    may also be ``crashed`` (the trainer died or stopped writing its heartbeat) or
    ``unknown`` (no readable status); ``stored_state`` keeps what the file says;
    ``alive`` tells whether the trainer process runs; ``pid`` falls back to
    ``launch.json``.
    """
    run_dir = Path(run_dir)
    now = now or _now()
    raw = read_json(run_dir / STATUS_FILE)
    launch = read_json(run_dir / LAUNCH_FILE) or {}
    status = dict(raw or {})
    status["stored_state"] = status.get("state") if raw else None
    pid = status.get("pid") or launch.get("pid")
    status["pid"] = pid
    argv = launch.get("argv") if launch.get("pid") == pid else None
    status["alive"] = pid_alive(pid, argv)
    status.setdefault("message", "")
    if raw is None:
        return _without_status(status, run_dir)
    if status.get("state") in ACTIVE_STATES:
        _check_active(status, run_dir, now)
    return status


def _without_status(status: dict, run_dir: Path) -> dict:
    """A run whose status file is missing or unreadable: trust a live process."""
    exists = (run_dir / STATUS_FILE).exists()
    status["state"] = "running" if status["alive"] else "unknown"
    status["message"] = f"{STATUS_FILE} is unreadable" if exists else f"no {STATUS_FILE} yet"
    return status


def _check_active(status: dict, run_dir: Path, now: datetime) -> None:
    """Mark a queued/running run as crashed when its trainer is gone or silent."""
    beat = parse_time(status.get("updated")) or parse_time(status.get("started"))
    if beat is None:
        beat = datetime.fromtimestamp((run_dir / STATUS_FILE).stat().st_mtime, timezone.utc)
    silent = (now - beat).total_seconds()
    if status["pid"] is None:
        if silent > QUEUED_GRACE_SECONDS:
            status["state"] = "crashed"
            status["message"] = "the trainer never started (no process id recorded)"
    elif not status["alive"]:
        status["state"] = "crashed"
        status["message"] = f"the trainer process {status['pid']} is gone; see {LOG_FILE}"
    elif silent > STALE_AFTER_SECONDS:
        status["state"] = "crashed"
        status["message"] = (
            f"no heartbeat for {silent / 60:.0f} min although process {status['pid']} "
            "still exists; it seems to hang"
        )


def is_active(status: dict) -> bool:
    """True for a run that is queued or training right now."""
    return status.get("state") in ACTIVE_STATES


# ---------------------------------------------------------------- metrics and log


def read_metrics(run_dir: Path) -> Metrics:
    """Parse ``metrics.jsonl`` into epoch rows and batch progress.

    Lines that are not complete JSON objects (the half-written last line of a
    running trainer) are skipped. After a resume an epoch may appear twice; the
    later line wins.
    """
    records = read_records(run_dir)
    epochs = [r for r in records if r.get("kind") == EPOCH_RECORD]
    batches = [r for r in records if r.get("kind") == BATCH_RECORD]
    return Metrics(epochs=_epoch_frame(epochs), batch=batches[-1] if batches else None,
                   batches=pd.DataFrame(batches))


def _epoch_frame(records: list) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    if frame.empty or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    frame = frame.dropna(subset=["epoch"]).drop_duplicates(subset="epoch", keep="last")
    return frame.sort_values("epoch").reset_index(drop=True)


def split_sizes(run_dir: Path) -> dict:
    """``{split: images}`` of a run (train, val, test), or an empty dict while it is not known yet.

    From ``config.json``; runs written before it recorded them give the sizes
    their trainer logged (``split <hash>: {'train': n, ...}``).
    """
    recorded = (read_json(Path(run_dir) / CONFIG_FILE) or {}).get("split_sizes")
    if isinstance(recorded, dict):
        return {k: int(v) for k, v in recorded.items() if isinstance(v, int)}
    found = re.search(r"split [0-9a-f]+: (\{[^}]*\})", log_tail(run_dir, 10_000, max_bytes=4_000_000))
    if not found:
        return {}
    try:
        sizes = ast.literal_eval(found.group(1))
    except (ValueError, SyntaxError):
        return {}
    return {k: int(v) for k, v in sizes.items() if isinstance(v, int)} if isinstance(sizes, dict) else {}


def log_tail(run_dir: Path, n: int = 100, max_bytes: int = 256_000) -> str:
    """The last ``n`` lines of ``train.log`` (empty when there is no log)."""
    path = Path(run_dir) / LOG_FILE
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", "replace").splitlines()
    if len(data) == max_bytes and lines:
        lines = lines[1:]  # the first line was cut by the byte window
    return "\n".join(lines[-n:])


def progress(status: dict, metrics: Metrics) -> float:
    """The share of the planned epochs done, 0..1, counting the current epoch's batches."""
    total = status.get("epochs") or 0
    if status.get("stored_state") == "done" or status.get("state") == "done":
        return 1.0
    if not total:
        return 0.0
    done = int(metrics.epochs["epoch"].max()) if len(metrics.epochs) else 0
    batch = metrics.batch or {}
    if batch.get("epoch") == done + 1 and batch.get("batches"):
        done += min(1.0, batch.get("batch", 0) / batch["batches"])
    return max(0.0, min(1.0, done / total))


def eta(status: dict, metrics: Metrics) -> float | None:
    """Seconds left for an active run, from measured batches only; None until enough are timed.

    The pace is :func:`batch_pace`; the batches left are the rest of the current
    epoch plus every later epoch. Validation after each epoch is not counted.
    """
    batch = metrics.batch or {}
    total = status.get("epochs") or 0
    if not is_active(status) or not total or not batch.get("batches"):
        return None
    pace = batch_pace(metrics.batches)
    if pace is None:
        return None
    left = batch["batches"] - batch.get("batch", 0) + max(0, total - int(batch["epoch"])) * batch["batches"]
    return max(0, left) * pace


def batch_pace(batches: pd.DataFrame) -> float | None:
    """Seconds per batch of the latest epoch with at least :data:`MIN_TIMED_BATCHES` timed batches.

    Measured from an epoch's first batch record to its last, so the first batch
    (which also traces the graph, often many times slower) is left out.
    """
    if batches.empty or not {"epoch", "batch", "seconds"} <= set(batches.columns):
        return None
    for _, rows in sorted(batches.groupby("epoch"), key=lambda item: item[0], reverse=True):
        rows = rows.sort_values("batch")
        timed = rows["batch"].iloc[-1] - rows["batch"].iloc[0]
        elapsed = rows["seconds"].iloc[-1] - rows["seconds"].iloc[0]
        if timed >= MIN_TIMED_BATCHES and elapsed > 0:
            return float(elapsed / timed)
    return None


# ---------------------------------------------------------------- the registry


def _run_dirs() -> list:
    root = paths.runs_dir()
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def run_info(run_dir: Path) -> dict:
    """One run as a flat record: id, path, status, model, best val metrics, times."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    config = read_json(run_dir / CONFIG_FILE) or {}
    options = (read_json(run_dir / LAUNCH_FILE) or {}).get("options") or {}
    best = status.get("best") if isinstance(status.get("best"), dict) else {}
    started = parse_time(status.get("started")) or parse_time(config.get("created"))
    return {
        "id": run_dir.name,
        "path": run_dir,
        "state": status.get("state", "unknown"),
        "message": status.get("message", ""),
        "task": config.get("task") or options.get("task") or "classification",
        "arch": config.get("arch") or options.get("arch") or "",
        "image_size": config.get("image_size") or options.get("image_size"),
        "image_height": config.get("image_height") or options.get("image_height"),
        "epoch": status.get("epoch"),
        "epochs": status.get("epochs") or config.get("epochs") or options.get("epochs"),
        "best": best,
        "started": started,
        "duration": _duration(status, started),
    }


def _duration(status: dict, started: datetime | None) -> float | None:
    """Seconds from start to finish, or to the last heartbeat for unfinished runs."""
    if started is None:
        return None
    end = parse_time(status.get("finished")) or parse_time(status.get("updated"))
    if is_active(status):
        end = _now()
    return None if end is None else max(0.0, (end - started).total_seconds())


def list_runs() -> list:
    """Every run under ``runs_dir()``, newest first, as :func:`run_info` records."""
    infos = [run_info(d) for d in _run_dirs()]
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(infos, key=lambda r: (r["started"] or oldest, r["id"]), reverse=True)


def active_run() -> dict | None:
    """The run that is queued or training now, or None."""
    return next((r for r in list_runs() if r["state"] in ACTIVE_STATES), None)


def run_summary_table(infos: list | None = None) -> pd.DataFrame:
    """The run history as a display table, newest first."""
    infos = list_runs() if infos is None else infos
    rows = [_summary_row(r) for r in infos]
    columns = ["run", "task", "status", "model", "kept", "val bal. acc", "val AUC",
               "val acc", "val Dice", "duration", "started"]
    return pd.DataFrame(rows, columns=columns)


def _model_text(info: dict) -> str | None:
    """``mobilenet_v2 @ 192×144 px``; a segmentation run names its task."""
    name = info["arch"] or ("segmenter" if info.get("task") == "segmentation" else "")
    width = info["image_size"]
    if not width:
        return name or None
    height = info.get("image_height") or width
    return f"{name} @ {width}×{height} px".strip()


def checkpoint_text(best: dict) -> str | None:
    """Which weights a run keeps: ``epoch 8``, or ``mean of epochs 6–12`` for averaged weights."""
    averaged = best.get("averaged_epochs")
    if isinstance(averaged, list) and len(averaged) == 2:
        return f"mean of epochs {averaged[0]}–{averaged[1]}"
    return f"epoch {best['epoch']}" if isinstance(best.get("epoch"), int) else None


def _summary_row(info: dict) -> dict:
    best = info["best"] or {}
    model = _model_text(info)
    started = info["started"]
    return {
        "run": info["id"],
        "task": info.get("task"),
        "status": info["state"],
        "model": model,
        "kept": checkpoint_text(best),
        "val bal. acc": best.get("val_balanced_accuracy"),
        "val AUC": best.get("val_auc"),
        "val acc": best.get("val_accuracy"),
        "val Dice": best.get("val_dice"),
        "duration": format_duration(info["duration"]) or None,
        "started": started.astimezone().strftime("%Y-%m-%d %H:%M") if started else None,
    }


def format_duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s`` or ``42 s``; empty for None."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# ---------------------------------------------------------------- options


def validate_options(options: dict) -> list:
    """Every problem with a set of training options, as readable messages (:func:`core.training.options.validate`).

    Keys are the trainer's CLI option names with underscores; missing keys take
    their defaults. An empty list means the options can be launched.
    """
    return opts.validate(options)


def build_argv(run_dir: Path, options: dict, command: list | None = None) -> list:
    """The trainer's command line for ``options`` (None values are left out)."""
    argv = list(command or cli_args.python_argv("train"))
    return argv + ["--run-dir", str(run_dir)] + opts.to_argv(options)


# ---------------------------------------------------------------- launching


@contextmanager
def _registry_lock():
    """Hold the registry's exclusive lock (across threads and processes)."""
    root = paths.runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / REGISTRY_LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _refuse_if_busy() -> None:
    active = active_run()
    if active is not None:
        raise RunBusyError(active["id"])


def launch(options: dict, command: list | None = None) -> Path:
    """Start a new training run in the background and return its folder.

    Args:
        options: trainer options (CLI names with underscores), validated first.
        command: the program to run instead of ``python -m core train``; the
            run's ``--run-dir`` and options are appended to it.

    Raises:
        OptionsError: the options are invalid.
        RunBusyError: another run is queued or running.
    """
    errors = validate_options(options)
    if errors:
        raise OptionsError(errors)
    with _registry_lock():
        _refuse_if_busy()
        run_dir = paths.runs_dir() / new_run_id(options.get("arch") or options.get("task"))
        run_dir.mkdir()
        write_json_atomic(run_dir / STATUS_FILE, {"state": "queued", "pid": None, "started": _iso(),
                                            "updated": _iso(), "message": "starting the trainer"})
        _start(run_dir, build_argv(run_dir, options, command), options)
    return run_dir


def resume_problem(run_dir: Path, status: dict) -> str | None:
    """Why a run cannot be resumed, or None when a resume can continue it.

    A failed run is resumable only from a completed epoch: a failure before that
    (bad data, a broken option set) would repeat itself, so a new run is the answer.
    """
    if status["state"] not in RESUMABLE_STATES:
        return (f"{Path(run_dir).name} is {status['state']}: only stopped, crashed or failed runs can be resumed")
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        return "the run ended before writing its configuration; launch a new run"
    if status["state"] == "failed" and not (Path(run_dir) / STATE_FILE).is_file():
        return "the run failed before completing an epoch, so there is nothing to resume; launch a new run"
    return None


def resume(run_dir: Path, command: list | None = None) -> Path:
    """Continue a stopped, crashed or failed run from its last checkpoint.

    Raises:
        RunError: the run is not inside the registry or cannot be resumed.
        RunBusyError: another run is active.
    """
    run_dir = _inside_registry(run_dir)
    with _registry_lock():
        status = read_status(run_dir)
        problem = resume_problem(run_dir, status)
        if problem:
            raise RunError(problem)
        _refuse_if_busy()
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # else the trainer stops at once
        kept = {k: v for k, v in status.items() if k not in ("stored_state", "alive")}
        write_json_atomic(run_dir / STATUS_FILE, {**kept, "state": "queued", "pid": None,
                                            "updated": _iso(), "message": "resuming"})
        _start(run_dir, build_argv(run_dir, {}, command) + ["--resume"], None)
    return run_dir


def _start(run_dir: Path, argv: list, options: dict | None) -> None:
    """Start the trainer detached, logging to train.log, and record its pid."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (run_dir / LOG_FILE).open("a", encoding="utf-8") as log:
        log.write(f"[{_iso()}] launch: {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=paths.PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    previous = (read_json(run_dir / LAUNCH_FILE) or {}).get("options")
    write_json_atomic(run_dir / LAUNCH_FILE, {"pid": proc.pid, "argv": argv, "launched": _iso(),
                                        "options": options if options is not None else previous})
    # Reap the child when it ends so it never lingers as a zombie of the server.
    threading.Thread(target=proc.wait, daemon=True).start()


# ---------------------------------------------------------------- deleting


def _inside_registry(run_dir: Path) -> Path:
    """``run_dir`` resolved, checked to be a run folder directly inside ``runs_dir()``."""
    target = Path(run_dir).resolve()
    root = paths.runs_dir().resolve()
    model = paths.default_model_dir().resolve()
    if target == model or model.is_relative_to(target) or target.is_relative_to(model):
        raise RunError(f"{target} holds the shipped default model: it is never touched here")
    if target.parent != root:
        raise RunError(f"{target} is not a run folder inside {root}")
    if not target.is_dir():
        raise RunError(f"{target}: no such run")
    return target


def delete_run(run_dir: Path) -> None:
    """Delete a finished run folder.

    Raises:
        RunError: the folder is not a run inside ``runs_dir()``, is (or holds) the
            shipped default model, or belongs to an active run.
    """
    target = _inside_registry(run_dir)
    with _registry_lock():
        status = read_status(target)
        if is_active(status):
            raise RunError(f"{target.name} is {status['state']}: stop it before deleting it")
        shutil.rmtree(target)


# ---------------------------------------------------------------- comparing runs


def smooth(values, weight: float) -> list[float]:
    """TensorBoard's curve smoothing: an exponential moving average, debiased at the start.

    ``weight`` 0 returns the values unchanged; towards 1 the curve flattens.
    Missing values (NaN) stay missing and do not move the average.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    last, count, out = 0.0, 0, []
    for value in values:
        value = float(value)
        if value != value:  # NaN
            out.append(value)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        out.append(last / (1 - weight**count))
    return out
