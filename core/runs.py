"""The run registry: launch, watch, stop, resume and delete training runs.

A run is a folder under :func:`core.paths.runs_dir` written by
``python -m core.train --run-dir DIR``. The folder is the only truth: this module
reads ``status.json``, ``metrics.jsonl`` and ``train.log`` and never keeps state of
its own, so a reloaded page or a restarted server sees the same runs.

The launcher adds one file of its own, ``launch.json`` (pid, argv, options), so a
queued run can be recognised as alive before the trainer writes its first status.
Only one run is active at a time: the check and the launch happen under an
exclusive lock on ``runs_dir/.lock``.
"""

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from core import paths

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
STOP_FILE = "STOP"
LAUNCH_FILE = "launch.json"
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"

TRAINER_MODULE = "core.train"
ACTIVE_STATES = ("queued", "running")
RESUMABLE_STATES = ("stopped", "crashed", "failed")
# The trainer writes a heartbeat at least every batch; a silence this long means it hangs.
STALE_AFTER_SECONDS = 15 * 60
# A queued run whose launcher never recorded a pid within this time never started.
QUEUED_GRACE_SECONDS = 60

ARCHS = ("small_cnn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
WEIGHTS = ("none", "imagenet", "offline-imagenet")
IMBALANCE = ("none", "class_weight", "oversample", "focal")
AUGMENT = ("none", "light", "strong")

DEFAULT_OPTIONS = {
    "arch": "mobilenet_v2",
    "weights": "offline-imagenet",
    "image_size": 128,
    "image_height": 0,
    "epochs": 12,
    "warmup_epochs": 2,
    "unfreeze": 0,
    "batch_size": 32,
    "lr": 1e-3,
    "finetune_lr": 5e-5,
    "imbalance": "class_weight",
    "augment": "light",
    "dropout": 0.2,
    "label_smoothing": 0.0,
    "seed": 42,
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "max_images": 0,
}

# The trainer's CLI options (python -m core.train --help), with the same choices and
# ranges as its own checks: (kind, low, high) for numbers, a tuple of choices, or "path".
OPTION_RULES = {
    "arch": ARCHS,
    "weights": WEIGHTS,
    "image_size": ("int", 32, 512),
    "image_height": ("int", 0, 512),
    "epochs": ("int", 1, 500),
    "warmup_epochs": ("int", 0, 500),
    "unfreeze": ("int", 0, 10_000),
    "batch_size": ("int", 1, 1024),
    "lr": ("float", 1e-7, 0.999),
    "finetune_lr": ("float", 1e-8, 0.999),
    "imbalance": IMBALANCE,
    "augment": AUGMENT,
    "dropout": ("float", 0.0, 0.9),
    "label_smoothing": ("float", 0.0, 0.5),
    "seed": ("int", 0, 2**32 - 1),
    "val_fraction": ("float", 0.01, 0.5),
    "test_fraction": ("float", 0.01, 0.5),
    "max_images": ("int", 0, 10_000_000),
    "logical_cpus": ("int", 0, 64),
    "data_dir": "path",
    "split_file": "path",
}
OPTIONAL = ("max_images", "logical_cpus", "data_dir", "split_file")
# Fewer images than this leave some classes with no validation or test lesion.
MIN_SAMPLE_IMAGES = 50


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


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, partial or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict) -> None:
    """Write JSON atomically so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2), encoding="utf-8")
    os.replace(tmp, path)


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
    launcher started) or mentions ``core.train``. A zombie has an empty command
    line and counts as dead.
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
    return any(TRAINER_MODULE in part for part in cmdline)


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
    raw = _read_json(run_dir / STATUS_FILE)
    launch = _read_json(run_dir / LAUNCH_FILE) or {}
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
    status["message"] = "status.json is unreadable" if exists else "no status.json yet"
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
        status["message"] = f"the trainer process {status['pid']} is gone; see train.log"
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
    path = Path(run_dir) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    epochs, batches = [], []
    for line in text.splitlines():
        record = _parse_line(line)
        if record is None:
            continue
        if record.get("kind") == "epoch":
            epochs.append(record)
        elif record.get("kind") == "batch":
            batches.append(record)
    return Metrics(epochs=_epoch_frame(epochs), batch=batches[-1] if batches else None,
                   batches=pd.DataFrame(batches))


def _parse_line(line: str) -> dict | None:
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _epoch_frame(records: list) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    if frame.empty or "epoch" not in frame:
        return pd.DataFrame(columns=["epoch"])
    frame = frame.dropna(subset=["epoch"]).drop_duplicates(subset="epoch", keep="last")
    return frame.sort_values("epoch").reset_index(drop=True)


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
    """Seconds left for an active run, or None when there is nothing to base it on.

    Uses the mean duration of finished epochs, else the pace of the current
    epoch's batches.
    """
    if not is_active(status):
        return None
    total = status.get("epochs") or 0
    left = total * (1.0 - progress(status, metrics))
    if not total or left <= 0:
        return None
    per_epoch = _seconds_per_epoch(metrics)
    return None if per_epoch is None else left * per_epoch


def _seconds_per_epoch(metrics: Metrics) -> float | None:
    if len(metrics.epochs) and "seconds" in metrics.epochs:
        seconds = pd.to_numeric(metrics.epochs["seconds"], errors="coerce").dropna()
        if len(seconds) and seconds.mean() > 0:
            return float(seconds.mean())
    batch = metrics.batch or {}
    if batch.get("batch") and batch.get("batches") and batch.get("seconds"):
        return float(batch["seconds"]) / batch["batch"] * batch["batches"]
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
    config = _read_json(run_dir / CONFIG_FILE) or {}
    options = (_read_json(run_dir / LAUNCH_FILE) or {}).get("options") or {}
    best = status.get("best") if isinstance(status.get("best"), dict) else {}
    started = parse_time(status.get("started")) or parse_time(config.get("created"))
    return {
        "id": run_dir.name,
        "path": run_dir,
        "state": status.get("state", "unknown"),
        "message": status.get("message", ""),
        "arch": config.get("arch") or options.get("arch") or "",
        "image_size": config.get("image_size") or options.get("image_size"),
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
    columns = ["run", "status", "model", "best epoch", "val bal. acc", "val AUC",
               "val acc", "duration", "started"]
    return pd.DataFrame(rows, columns=columns)


def _summary_row(info: dict) -> dict:
    best = info["best"] or {}
    model = info["arch"] + (f" @ {info['image_size']}px" if info["image_size"] else "") or None
    started = info["started"]
    return {
        "run": info["id"],
        "status": info["state"],
        "model": model,
        "best epoch": best.get("epoch"),
        "val bal. acc": best.get("val_balanced_accuracy"),
        "val AUC": best.get("val_auc"),
        "val acc": best.get("val_accuracy"),
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
    """Every problem with a set of training options, as readable messages.

    Keys are the trainer's CLI option names with underscores; missing keys take
    :data:`DEFAULT_OPTIONS`. An empty list means the options can be launched.
    """
    merged = {**DEFAULT_OPTIONS, **options}
    errors = [f"unknown option {key!r}" for key in options if key not in OPTION_RULES]
    for key, rule in OPTION_RULES.items():
        value = merged.get(key)
        if value is None and key in OPTIONAL:
            continue
        problem = _check_value(key, value, rule)
        if problem:
            errors.append(problem)
    return errors + _cross_checks(merged) if not errors else errors


def _check_value(key: str, value, rule) -> str | None:
    if rule == "path":
        return None if Path(str(value)).exists() else f"{key}: {value} does not exist"
    if isinstance(rule[0], str) and rule[0] in ("int", "float"):
        kind, low, high = rule
        number_types = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return f"{key} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}"
        if not low <= value <= high:
            return f"{key} must be between {low:g} and {high:g}, got {value:g}"
        return None
    if value not in rule:
        return f"{key} must be one of {', '.join(rule)}, got {value!r}"
    return None


def _cross_checks(options: dict) -> list:
    errors = []
    if 0 < options["image_height"] < 32:
        errors.append("image_height must be 0 (square) or at least 32")
    if options["warmup_epochs"] > options["epochs"]:
        errors.append("warmup_epochs cannot exceed epochs")
    if options["val_fraction"] + options["test_fraction"] > 0.8:
        errors.append("val_fraction + test_fraction must leave at least 20% for training")
    if options["arch"] == "small_cnn" and options["weights"] != "none":
        errors.append("small_cnn has no pretrained weights: choose weights 'none'")
    if options["weights"] == "offline-imagenet" and options["arch"] != "mobilenet_v2":
        errors.append("offline-imagenet weights exist for mobilenet_v2 only")
    if 0 < (options.get("max_images") or 0) < MIN_SAMPLE_IMAGES:
        errors.append(f"max_images must be 0 (all images) or at least {MIN_SAMPLE_IMAGES}")
    return errors


def build_argv(run_dir: Path, options: dict, command: list | None = None) -> list:
    """The trainer's command line for ``options`` (None values are left out)."""
    argv = list(command or [sys.executable, "-m", TRAINER_MODULE])
    argv += ["--run-dir", str(run_dir)]
    for key, value in options.items():
        if value is None:
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


# ---------------------------------------------------------------- launching


@contextmanager
def _registry_lock():
    """Hold the registry's exclusive lock (across threads and processes)."""
    root = paths.runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as handle:
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
        command: the program to run instead of ``python -m core.train``; the
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
        run_dir = paths.runs_dir() / new_run_id(options.get("arch"))
        run_dir.mkdir()
        _write_json(run_dir / STATUS_FILE, {"state": "queued", "pid": None, "started": _iso(),
                                            "updated": _iso(), "message": "starting the trainer"})
        _start(run_dir, build_argv(run_dir, options, command), options)
    return run_dir


def resume(run_dir: Path, command: list | None = None) -> Path:
    """Continue a stopped, crashed or failed run from its last checkpoint.

    Raises:
        RunError: the run is not inside the registry or cannot be resumed.
        RunBusyError: another run is active.
    """
    run_dir = _inside_registry(run_dir)
    with _registry_lock():
        status = read_status(run_dir)
        if status["state"] not in RESUMABLE_STATES:
            raise RunError(f"{run_dir.name} is {status['state']}: only stopped, crashed or "
                           "failed runs can be resumed")
        _refuse_if_busy()
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # else the trainer stops at once
        kept = {k: v for k, v in status.items() if k not in ("stored_state", "alive")}
        _write_json(run_dir / STATUS_FILE, {**kept, "state": "queued", "pid": None,
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
    previous = (_read_json(run_dir / LAUNCH_FILE) or {}).get("options")
    _write_json(run_dir / LAUNCH_FILE, {"pid": proc.pid, "argv": argv, "launched": _iso(),
                                        "options": options if options is not None else previous})
    # Reap the child when it ends so it never lingers as a zombie of the server.
    threading.Thread(target=proc.wait, daemon=True).start()


def request_stop(run_dir: Path) -> Path:
    """Ask a run to stop after its current batch (creates the ``STOP`` file)."""
    path = Path(run_dir) / STOP_FILE
    path.write_text(_iso() + "\n", encoding="utf-8")
    return path


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
