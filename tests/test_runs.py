"""Tests of the run registry: status parsing, metrics, options, launching, deleting."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from core.training import runs  # A stand-in for core.training.train: writes "running", waits for STOP (bounded), writes "stopped".
FAKE_TRAINER = r"""
import json, os, sys, time
run_dir = sys.argv[sys.argv.index("--run-dir") + 1]
def write(state):
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    tmp = os.path.join(run_dir, ".status.tmp")
    with open(tmp, "w") as handle:
        json.dump({"state": state, "pid": os.getpid(), "updated": now, "started": now,
                   "epochs": 3, "epoch": 1, "argv": sys.argv[1:]}, handle)
    os.replace(tmp, os.path.join(run_dir, "status.json"))
write("running")
print("fake trainer running", flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(run_dir, "STOP")) and time.monotonic() < deadline:
    time.sleep(0.02)
write("stopped")
"""
FAKE_COMMAND = [sys.executable, "-c", FAKE_TRAINER]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty run registry in a temp folder, with a default model beside it."""
    root = tmp_path / "runs"
    monkeypatch.setenv("HAM_RUNS_DIR", str(root))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "default"))
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "model.json").write_text("{}")
    yield root
    _kill_launched(root)


def _kill_launched(root: Path) -> None:
    """Kill fake trainers a failing test left behind (only processes this test started).

    A trainer that was told to stop may exit between the check and the kill: that is
    the outcome wanted, not an error.
    """
    for launch in root.glob("*/launch.json"):
        record = json.loads(launch.read_text())
        if runs.pid_alive(record["pid"], record["argv"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record["pid"], signal.SIGKILL)


def test_cleanup_tolerates_a_trainer_that_exits_between_check_and_kill(tmp_path, monkeypatch):
    """The race that broke a CI run: the check saw the trainer alive, then it exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped: os.kill now raises ProcessLookupError
    run_dir = tmp_path / "runs" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "launch.json").write_text(json.dumps({"pid": proc.pid, "argv": ["x"]}))
    monkeypatch.setattr(runs, "pid_alive", lambda pid, argv=None: True)
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    _kill_launched(tmp_path / "runs")


def wait_until(condition, timeout: float = 30.0) -> None:
    """Wait for ``condition()`` to hold, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        tick.wait(0.02)


def make_run(root: Path, name: str, status, metrics: str = "", config=None) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    if status is not None:
        text = status if isinstance(status, str) else json.dumps(status)
        (run_dir / "status.json").write_text(text)
    if metrics:
        (run_dir / "metrics.jsonl").write_text(metrics)
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def iso(delta_seconds: float = 0.0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_seconds)).isoformat()


# ---------------------------------------------------------------- status


def test_status_of_live_running_run_is_running(registry, live_trainer):
    run_dir = make_run(registry, "a", {"state": "running", "pid": live_trainer, "updated": iso()})
    status = runs.read_status(run_dir)
    assert status["state"] == "running"
    assert status["alive"] is True
    assert runs.is_active(status)


def test_running_run_with_dead_pid_reads_as_crashed(registry, dead_pid):
    run_dir = make_run(registry, "a", {"state": "running", "pid": dead_pid, "updated": iso()})
    status = runs.read_status(run_dir)
    assert status["state"] == "crashed"
    assert status["stored_state"] == "running"
    assert str(dead_pid) in status["message"]
    assert not runs.is_active(status)


def test_reused_pid_of_another_program_reads_as_crashed(registry):
    # This pytest process is alive but is not a trainer: a recycled pid must not look alive.
    run_dir = make_run(registry, "a", {"state": "running", "pid": os.getpid(), "updated": iso()})
    assert runs.read_status(run_dir)["state"] == "crashed"


def test_stale_heartbeat_reads_as_crashed(registry, live_trainer):
    old = iso(-(runs.STALE_AFTER_SECONDS + 60))
    run_dir = make_run(registry, "a", {"state": "running", "pid": live_trainer, "updated": old})
    status = runs.read_status(run_dir)
    assert status["state"] == "crashed"
    assert "heartbeat" in status["message"]


def test_queued_without_pid_is_queued_then_crashed_after_grace(registry):
    run_dir = make_run(registry, "a", {"state": "queued", "pid": None, "updated": iso()})
    assert runs.read_status(run_dir)["state"] == "queued"
    later = datetime.now(timezone.utc) + timedelta(seconds=runs.QUEUED_GRACE_SECONDS + 5)
    assert runs.read_status(run_dir, now=later)["state"] == "crashed"


def test_finished_states_are_kept_even_with_dead_pid(registry, dead_pid):
    for state in ("done", "failed", "stopped"):
        run_dir = make_run(registry, state, {"state": state, "pid": dead_pid})
        assert runs.read_status(run_dir)["state"] == state


def test_missing_or_partial_status_is_unknown(registry):
    missing = make_run(registry, "missing", None)
    partial = make_run(registry, "partial", '{"state": "runn')
    not_object = make_run(registry, "list", "[1, 2]")
    assert runs.read_status(missing)["state"] == "unknown"
    assert runs.read_status(partial)["state"] == "unknown"
    assert "unreadable" in runs.read_status(partial)["message"]
    assert runs.read_status(not_object)["state"] == "unknown"


def test_unreadable_status_with_live_launched_trainer_stays_running(registry, live_trainer):
    run_dir = make_run(registry, "a", '{"state": ')
    (run_dir / "launch.json").write_text(json.dumps({"pid": live_trainer, "argv": ["x"]}))
    assert runs.read_status(run_dir)["state"] == "running"


# ---------------------------------------------------------------- metrics and log


def epoch_line(epoch, phase="warmup", **extra):
    record = {"kind": "epoch", "epoch": epoch, "phase": phase, "lr": 1e-3, "seconds": 10.0,
              "loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "val_balanced_accuracy": 0.1 * epoch}
    return json.dumps({**record, **extra}) + "\n"


def batch_line(epoch, batch, batches=10, seconds=2.0):
    return json.dumps({"kind": "batch", "epoch": epoch, "batch": batch, "batches": batches,
                       "loss": 0.5, "seconds": seconds}) + "\n"


def test_read_metrics_skips_half_written_last_line(registry):
    text = epoch_line(1) + batch_line(2, 5) + epoch_line(2)[:25]
    run_dir = make_run(registry, "a", {"state": "running"}, metrics=text)
    metrics = runs.read_metrics(run_dir)
    assert list(metrics.epochs["epoch"]) == [1]
    assert metrics.batch["batch"] == 5


def test_read_metrics_keeps_the_later_line_of_a_repeated_epoch(registry):
    text = epoch_line(1) + epoch_line(2, loss=9.0) + "garbage\n" + epoch_line(2, loss=0.25)
    run_dir = make_run(registry, "a", {"state": "done"}, metrics=text)
    epochs = runs.read_metrics(run_dir).epochs
    assert list(epochs["epoch"]) == [1, 2]
    assert epochs.loc[1, "loss"] == 0.25


def test_read_metrics_of_missing_file_is_empty(registry):
    metrics = runs.read_metrics(make_run(registry, "a", {"state": "queued"}))
    assert metrics.epochs.empty and metrics.batch is None


def test_progress_counts_the_current_epochs_batches(registry):
    text = epoch_line(1) + epoch_line(2) + batch_line(3, 5, batches=10)
    run_dir = make_run(registry, "a", {"state": "running"}, metrics=text)
    assert runs.progress({"state": "running", "epochs": 4}, runs.read_metrics(run_dir)) == pytest.approx(2.5 / 4)


def test_eta_comes_from_timed_batches_without_the_first_one(registry):
    # The first batch took 30 s (graph tracing); the next ones 0.5 s each.
    text = batch_line(1, 1, batches=20, seconds=30.0) + batch_line(1, 2, batches=20, seconds=30.5)
    status = {"state": "running", "epochs": 3}
    run_dir = make_run(registry, "a", {}, metrics=text)
    assert runs.eta(status, runs.read_metrics(run_dir)) is None  # one timed batch is not enough
    text += batch_line(1, 5, batches=20, seconds=32.0)
    (run_dir / "metrics.jsonl").write_text(text)
    # 4 batches in 2 s: 0.5 s each; 15 left in epoch 1 and 2 x 20 after it
    assert runs.eta(status, runs.read_metrics(run_dir)) == pytest.approx(55 * 0.5)
    assert runs.eta({"state": "done", "epochs": 3}, runs.read_metrics(run_dir)) is None


def test_eta_early_in_an_epoch_uses_the_last_timed_epoch(registry):
    text = "".join(batch_line(1, b, batches=10, seconds=1.0 + b) for b in (1, 4, 7, 10))
    text += epoch_line(1) + batch_line(2, 1, batches=10, seconds=50.0)
    run_dir = make_run(registry, "a", {}, metrics=text)
    # epoch 1 paced 1 s per batch; 9 batches of epoch 2 are left
    assert runs.eta({"state": "running", "epochs": 2}, runs.read_metrics(run_dir)) == pytest.approx(9.0)


def test_log_tail_returns_last_lines(registry):
    run_dir = make_run(registry, "a", {"state": "done"})
    (run_dir / "train.log").write_text("".join(f"line {i}\n" for i in range(500)))
    assert runs.log_tail(run_dir, 3).splitlines() == ["line 497", "line 498", "line 499"]
    assert runs.log_tail(registry / "nothing", 3) == ""


# ---------------------------------------------------------------- registry listing


def test_list_runs_newest_first_with_best_metrics(registry, dead_pid):
    make_run(registry, "old", {"state": "done", "started": "2024-01-01T10:00:00+00:00",
                               "finished": "2024-01-01T11:30:00+00:00",
                               "best": {"epoch": 4, "val_balanced_accuracy": 0.61}},
             config={"arch": "mobilenet_v2", "image_size": 128})
    make_run(registry, "new", {"state": "running", "pid": dead_pid,
                               "started": "2024-02-01T10:00:00+00:00",
                               "updated": "2024-02-01T10:05:00+00:00"})
    infos = runs.list_runs()
    assert [r["id"] for r in infos] == ["new", "old"]
    assert infos[0]["state"] == "crashed"
    table = runs.run_summary_table(infos)
    old = table.set_index("run").loc["old"]
    assert old["status"] == "done"
    assert old["model"] == "mobilenet_v2 @ 128×128 px"
    assert old["val bal. acc"] == 0.61 and old["kept"] == "epoch 4"
    assert old["duration"] == "1 h 30 min"
    assert runs.active_run() is None


def test_the_model_column_gives_width_by_height_and_names_segmentation_runs(registry):
    make_run(registry, "wide", {"state": "done"}, config={"arch": "mobilenet_v2", "image_size": 192, "image_height": 144})
    make_run(registry, "seg", {"state": "done"}, config={"task": "segmentation", "arch": None, "image_size": 128,
                                                         "image_height": 96})
    table = runs.run_summary_table().set_index("run")
    assert table.loc["wide", "model"] == "mobilenet_v2 @ 192×144 px"
    assert table.loc["seg", "model"] == "segmenter @ 128×96 px"
    assert (table.loc["seg", "task"], table.loc["wide", "task"]) == ("segmentation", "classification")


def test_split_sizes_come_from_the_config_or_the_trainer_log(registry):
    run_dir = make_run(registry, "a", {"state": "done"}, config={"split_sizes": {"train": 70, "val": 15, "test": 14}})
    assert runs.split_sizes(run_dir) == {"train": 70, "val": 15, "test": 14}
    old = make_run(registry, "b", {"state": "done"}, config={})
    (old / "train.log").write_text("2025-01-01 INFO split 0123abcd: {'train': 7010, 'val': 1432, 'test': 1431}\n")
    assert runs.split_sizes(old) == {"train": 7010, "val": 1432, "test": 1431}
    assert runs.split_sizes(make_run(registry, "c", {"state": "queued"})) == {}


def test_the_kept_column_names_averaged_weights(registry):
    make_run(registry, "avg", {"state": "done", "best": {"epoch": 12, "averaged_epochs": [6, 12],
                                                         "val_balanced_accuracy": 0.737}})
    make_run(registry, "none", {"state": "crashed"})
    table = runs.run_summary_table().set_index("run")
    assert table.loc["avg", "kept"] == "mean of epochs 6–12"
    assert pd.isna(table.loc["none", "kept"])


def test_new_run_ids_sort_by_time_and_differ():
    first, second = runs.new_run_id("mobilenet_v2"), runs.new_run_id("mobilenet_v2")
    assert first != second
    assert "mobilenet-v2" in first
    assert first[:15] <= second[:15]


# ---------------------------------------------------------------- options


def test_default_options_are_valid():
    assert runs.validate_options({}) == []
    assert runs.validate_options(dict(runs.DEFAULT_OPTIONS)) == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"arch": "resnet"}, "Architecture must be one of"),
        ({"image_size": 8}, "Input width (px) must be between"),
        ({"epochs": 2.5}, "Epochs must be an integer"),
        ({"batch_size": True}, "Batch size must be an integer"),
        ({"lr": 0.0}, "Warm-up learning rate must be between"),
        ({"imbalance": "smote"}, "Class imbalance must be one of"),
        ({"warmup_epochs": 5, "epochs": 3}, "Warm-up epochs cannot exceed Epochs"),
        ({"val_fraction": 0.5, "test_fraction": 0.4}, "at least 20% for training"),
        ({"arch": "small_cnn"}, "small_cnn has no pretrained weights"),
        ({"arch": "efficientnet_b0"}, "offline-imagenet weights exist for mobilenet_v2, efficientnet_lite0"),
        ({"lr": 1.0}, "Warm-up learning rate must be between"),
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"max_images": 3}, "Max images (0 = all) must be 0 (all images) or at least 50"),
        ({"max_images": -1}, "Max images (0 = all) must be between"),
        ({"split_file": "/no/such/split.csv"}, "does not exist"),
        ({"task": "detection"}, "Task must be one of classification, segmentation"),
        ({"dropout": 1.5}, "Dropout must be between"),
        ({"task": "segmentation", "image_height": 100}, "Input height (px, 0 = square) must be 0 or a multiple of 32"),
        ({"task": "segmentation", "warmup_epochs": 1}, "Warm-up epochs is not an option of segmentation"),
    ],
)
def test_invalid_options_are_reported(options, fragment):
    errors = runs.validate_options(options)
    assert any(fragment in e for e in errors), errors


def test_argv_parses_with_the_trainer_cli_to_the_same_values(tmp_path):
    train = pytest.importorskip("core.training.train")  # imports no TensorFlow
    options = {**runs.DEFAULT_OPTIONS, "arch": "efficientnet_b0", "weights": "none", "max_images": 300,
               "finetune_lr": 3e-5, "imbalance": "focal", "dropout": 0.3, "seed": 7}
    assert runs.validate_options(options) == []
    argv = runs.build_argv(tmp_path, options)
    args = train.build_parser().parse_args(argv[4:])
    assert train.validate_args(args) == []
    for key, value in options.items():
        assert getattr(args, key) == value, key


def test_build_argv_uses_cli_option_names(tmp_path):
    argv = runs.build_argv(tmp_path, {"warmup_epochs": 2, "finetune_lr": 1e-4, "max_images": None})
    assert argv[:6] == [sys.executable, "-m", "core", "train", "--run-dir", str(tmp_path)]
    assert argv[6:] == ["--warmup-epochs", "2", "--finetune-lr", "0.0001"]


@pytest.mark.parametrize("cmdline, trainer", [
    ([sys.executable, "-m", "core", "train", "--run-dir", "r"], True),
    ([sys.executable, "/venv/bin/lesionlab", "segment-train", "--run-dir", "r"], True),
    ([sys.executable, "-m", "core.training.train", "--run-dir", "r"], True),
    ([sys.executable, "-m", "core", "predict", "--out", "train"], False),
    ([sys.executable, "-m", "streamlit", "run", "app.py"], False),
    (["/usr/bin/train"], False),
])
def test_a_trainer_is_recognised_by_its_command_line(cmdline, trainer):
    assert runs.is_trainer_cmdline(cmdline) is trainer


# ---------------------------------------------------------------- launching


def test_launch_starts_trainer_and_refuses_a_second_run(registry):
    run_dir = runs.launch({"epochs": 3}, command=FAKE_COMMAND)
    assert run_dir.parent == registry
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["argv"][-2:] == ["--epochs", "3"] and "--run-dir" in launch["argv"]
    wait_until(lambda: runs.read_status(run_dir).get("stored_state") == "running")
    assert runs.read_status(run_dir)["state"] == "running"

    with pytest.raises(runs.RunBusyError, match=f"a run is already active: {run_dir.name}"):
        runs.launch({}, command=FAKE_COMMAND)
    assert [p.name for p in registry.iterdir() if p.is_dir()] == [run_dir.name]

    runs.request_stop(run_dir)
    wait_until(lambda: runs.read_status(run_dir)["state"] == "stopped")
    assert "fake trainer running" in runs.log_tail(run_dir)
    second = runs.launch({}, command=FAKE_COMMAND)
    assert second != run_dir
    runs.request_stop(second)
    wait_until(lambda: runs.read_status(second)["state"] == "stopped")


def test_launch_with_invalid_options_creates_nothing(registry):
    with pytest.raises(runs.OptionsError) as caught:
        runs.launch({"epochs": 0, "arch": "vgg"}, command=FAKE_COMMAND)
    assert len(caught.value.errors) == 2
    assert not registry.exists() or not any(registry.iterdir())


def test_two_concurrent_launches_exactly_one_wins(registry, monkeypatch):
    # Hold each launcher after its busy check until the other also got there (or 0.5 s):
    # without the registry lock both would pass the check and both would launch.
    arrived = {"n": 0}
    cond = threading.Condition()
    original = runs._refuse_if_busy

    def slow_check():
        original()
        with cond:
            arrived["n"] += 1
            cond.notify_all()
            cond.wait_for(lambda: arrived["n"] >= 2, timeout=0.5)

    monkeypatch.setattr(runs, "_refuse_if_busy", slow_check)
    results, start = [], threading.Barrier(2)

    def attempt():
        start.wait(timeout=10)
        try:
            results.append(runs.launch({}, command=FAKE_COMMAND))
        except runs.RunBusyError as err:
            results.append(err)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    winners = [r for r in results if isinstance(r, Path)]
    losers = [r for r in results if isinstance(r, runs.RunBusyError)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].run_id == winners[0].name
    runs.request_stop(winners[0])
    wait_until(lambda: not runs.is_active(runs.read_status(winners[0])))


def test_request_stop_writes_stop_file(registry):
    run_dir = make_run(registry, "a", {"state": "running"})
    path = runs.request_stop(run_dir)
    assert path == run_dir / "STOP" and path.is_file()


def test_resume_relaunches_with_resume_flag_and_clears_stop(registry):
    run_dir = make_run(registry, "a", {"state": "stopped", "best": {"epoch": 2}}, config={})
    (run_dir / "STOP").write_text("")
    runs.resume(run_dir, command=FAKE_COMMAND)
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["argv"][-3:] == ["--run-dir", str(run_dir), "--resume"]
    wait_until(lambda: runs.read_status(run_dir).get("stored_state") == "running")
    assert "--resume" in runs.read_status(run_dir)["argv"]
    runs.request_stop(run_dir)
    wait_until(lambda: runs.read_status(run_dir)["state"] == "stopped")


def test_resume_refuses_a_done_run(registry):
    run_dir = make_run(registry, "a", {"state": "done"})
    with pytest.raises(runs.RunError, match="only stopped, crashed or failed"):
        runs.resume(run_dir, command=FAKE_COMMAND)


def test_resume_refuses_a_run_that_failed_before_its_first_epoch(registry):
    run_dir = make_run(registry, "a", {"state": "failed", "message": "AttributeError: boom"}, config={})
    with pytest.raises(runs.RunError, match="failed before completing an epoch"):
        runs.resume(run_dir, command=FAKE_COMMAND)
    (run_dir / "state.json").write_text('{"epoch": 1}')
    assert runs.resume_problem(run_dir, runs.read_status(run_dir)) is None


# ---------------------------------------------------------------- deleting


def test_delete_removes_a_finished_run(registry):
    run_dir = make_run(registry, "a", {"state": "done"})
    runs.delete_run(run_dir)
    assert not run_dir.exists()


def test_delete_refuses_the_default_model(registry, tmp_path, monkeypatch):
    with pytest.raises(runs.RunError, match="default model"):
        runs.delete_run(tmp_path / "default")
    # even when the default model folder sits inside the registry
    inside = make_run(registry, "shipped", {"state": "done"})
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(inside))
    with pytest.raises(runs.RunError, match="default model"):
        runs.delete_run(inside)
    assert (tmp_path / "default" / "model.json").is_file() and inside.is_dir()


def test_delete_refuses_paths_outside_the_registry(registry, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    nested = make_run(registry, "a/b", {"state": "done"})
    for target in (outside, registry, nested, registry / "a" / ".." / ".." / "elsewhere"):
        with pytest.raises(runs.RunError, match="not a run folder"):
            runs.delete_run(target)
    assert outside.is_dir() and nested.is_dir()


def test_delete_refuses_an_active_run(registry, live_trainer):
    run_dir = make_run(registry, "a", {"state": "running", "pid": live_trainer, "updated": iso()})
    with pytest.raises(runs.RunError, match="stop it before deleting"):
        runs.delete_run(run_dir)
    assert run_dir.is_dir()


def test_zombie_trainer_reads_as_crashed(registry):
    proc = subprocess.Popen([sys.executable, "-c", "pass", "core.training.train"])
    # Wait for the exit without reaping, so the pid stays a zombie during the check.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    run_dir = make_run(registry, "a", {"state": "running", "pid": proc.pid, "updated": iso()})
    try:
        assert runs.read_status(run_dir)["state"] == "crashed"
    finally:
        proc.wait(timeout=10)
