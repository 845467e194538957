"""The trainer: a real subprocess run on tiny data, stop and resume, determinism, multi-device."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.contracts import predictions
from core.contracts import runfolder as rf
from core.training import train
from core.contracts.labels import CLASSES
from core.dataset.splits import split_hash

PROJECT = Path(__file__).resolve().parent.parent
TINY = ["--arch", "small_cnn", "--weights", "none", "--image-size", "32", "--batch-size", "16",
        "--warmup-epochs", "1", "--lr", "0.01", "--finetune-lr", "0.005", "--augment", "light"]


def _env(tmp_path, data_dir):
    import os

    return {**os.environ, "HAM10000_DIR": str(data_dir), "HAM_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": str(PROJECT)}


def _epochs(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "epoch"]


@pytest.mark.timeout(240)
def test_subprocess_run_writes_the_whole_run_folder(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir), "--epochs", "3", *TINY]
    done = subprocess.run(cmd, cwd=PROJECT, env=_env(tmp_path, tiny_dataset), timeout=200, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["best"]["epoch"] in (1, 2, 3)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["image_size"] == 32 and config["seed"] == 42
    assert config["split_sha256"] == split_hash(run_dir / "splits.csv")
    assert {"tensorflow", "keras", "numpy"} <= set(config["versions"])
    assert [e["epoch"] for e in _epochs(run_dir)] == [1, 2, 3]
    assert any(json.loads(line)["kind"] == "batch" for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    meta = json.loads((run_dir / "model.json").read_text())
    assert meta["last_conv_layer"] == "last_conv" and meta["split_sha256"] == config["split_sha256"]
    assert meta["temperature"] > 0 and "temperature" in (run_dir / "train.log").read_text()
    assert meta["ood"]["method"] == "feature_statistics" and (run_dir / "ood.npz").is_file()
    assert meta["temperature_n"] == len(pd.read_csv(run_dir / "predictions_val.csv"))
    splits = pd.read_csv(run_dir / "splits.csv")
    for split in ("val", "test"):
        preds = pd.read_csv(run_dir / f"predictions_{split}.csv")  # a plain CSV: pandas' defaults read it
        assert list(preds.columns) == ["image_id", "dx", "dx_pred", *CLASSES, *predictions.PROVENANCE]
        assert set(preds["calibration"]) == {"raw"} and preds["temperature"].isna().all()
        assert set(preds["image_id"]) == set(splits.loc[splits["split"] == split, "image_id"])
        assert np.allclose(preds[list(CLASSES)].sum(axis=1), 1, atol=1e-4)
    assert "run finished" in (run_dir / "train.log").read_text()


def test_bad_options_are_refused_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--run-dir", str(tmp_path / "r"), "--arch", "small_cnn", "--weights", "offline-imagenet"])
    assert stop.value.code == 2 and "small_cnn has no pretrained weights" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(tmp_path / "r"), "--resume"])
    assert rf.CONFIG_FILE in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_option_checks_fail_at_once_on_the_console(tmp_path):
    # Before the data loads: a dataset folder that does not exist would fail later, not first.
    for bad in (["--dropout", "1.5"], ["--val-fraction", "0.45", "--test-fraction", "0.4"]):
        cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(tmp_path / "r"), *bad]
        done = subprocess.run(cmd, cwd=PROJECT, env=_env(tmp_path, tmp_path / "no-data"), timeout=120,
                              capture_output=True, text=True)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("lesionlab train: error: "), done.stderr
        assert not (tmp_path / "r").exists()


def test_a_refused_start_is_recorded_in_a_folder_the_page_made(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(run_dir), "--dropout", "1.5"])
    status = json.loads((run_dir / rf.STATUS_FILE).read_text())
    assert status["state"] == "failed" and "dropout must be between" in status["message"]


def test_a_second_trainer_in_a_locked_folder_exits_at_once_and_changes_nothing(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / rf.STATUS_FILE).write_text('{"state": "running"}')
    (run_dir / rf.STOP_FILE).write_text("")
    with rf.RunLock(run_dir):  # this process stands for the trainer that holds the folder
        before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
        cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir), "--epochs", "1", *TINY]
        done = subprocess.run(cmd, cwd=PROJECT, env=_env(tmp_path, tiny_dataset), timeout=120,
                              capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "in use by another trainer" in done.stderr
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
    assert after == before


def test_the_trainer_holds_the_lock_while_it_trains(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train, "_train", lambda args, folder: seen.append(rf.is_locked(folder.dir)) or 0)
    assert train.main(["--run-dir", str(tmp_path / "r"), *TINY]) == 0
    assert seen == [True] and not rf.is_locked(tmp_path / "r")


@pytest.mark.timeout(300)
def test_the_final_phases_are_named_in_the_status_with_their_progress(tmp_path, tiny_dataset, monkeypatch):
    """After the last batch the status names each phase (and counts its images or steps) until the run is done."""
    monkeypatch.setenv("HAM10000_DIR", str(tiny_dataset))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    seen, update = [], rf.RunFolder.update

    def recording(folder, **fields):
        update(folder, **fields)
        seen.append((folder.status.get("phase"), folder.status.get("progress"), folder.status["state"]))

    monkeypatch.setattr(rf.RunFolder, "update", recording)
    assert train.main(["--run-dir", str(tmp_path / "run"), "--epochs", "2", "--average-from", "1", *TINY]) == 0
    phases = [phase for phase, _, _ in seen]
    order = [p for n, p in enumerate(phases) if p and (n == 0 or phases[n - 1] != p)]
    assert order == ["warmup", "validate", "finetune", "validate", "average", "predict", "calibrate", "predict", "ood"]
    last = {phase: progress for phase, progress, _ in seen if progress}
    assert last["predict"]["done"] == last["predict"]["total"] > 0 and last["ood"] == {"done": 4, "total": 4,
                                                                                     "unit": "steps"}
    assert seen[-1][2] == "done"


def test_segmentation_without_its_module_fails_with_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "core.training.segment_train", None)  # as if the module were missing
    run_dir = tmp_path / "seg"
    assert train.main(["--run-dir", str(run_dir), "--task", "segmentation"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "segmentation training is not available" in err
    status = json.loads((run_dir / rf.STATUS_FILE).read_text())
    assert status["state"] == "failed" and "core.training.segment_train is missing" in status["message"]


def test_missing_dataset_marks_the_run_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "nowhere"))
    assert train.main(["--run-dir", str(tmp_path / "r"), *TINY]) == 1
    status = json.loads((tmp_path / "r" / "status.json").read_text())
    assert status["state"] == "failed" and "not found" in status["message"]


@pytest.mark.timeout(300)
def test_stop_then_resume_continues_from_the_last_epoch(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tiny_dataset))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"

    def stop_once_epoch_one_is_saved(folder):
        return (folder.dir / "state.json").exists()

    monkeypatch.setattr(train.RunFolder, "stop_requested", stop_once_epoch_one_is_saved)
    assert train.main(["--run-dir", str(run_dir), "--epochs", "3", *TINY]) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "stopped" and "epoch 2" in status["message"]
    assert [e["epoch"] for e in _epochs(run_dir)] == [1]
    assert not (run_dir / "predictions_test.csv").exists()

    monkeypatch.setattr(train.RunFolder, "stop_requested", lambda folder: False)
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 0
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert [e["epoch"] for e in _epochs(run_dir)] == [1, 2, 3]
    assert "resuming after epoch 1 with the optimizer state (step 3)" in (run_dir / "train.log").read_text()
    assert (run_dir / "predictions_test.csv").exists()


def _stopped_after_one_epoch(tmp_path, tiny_dataset, monkeypatch, extra=()) -> Path:
    """A run of 3 epochs stopped once epoch 1 is saved; 3 batches of 16 per epoch."""
    monkeypatch.setenv("HAM10000_DIR", str(tiny_dataset))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    monkeypatch.setattr(train.RunFolder, "stop_requested", lambda folder: folder.path(rf.STATE_FILE).exists())
    assert train.main(["--run-dir", str(run_dir), "--epochs", "3", *TINY, *extra]) == 0
    monkeypatch.setattr(train.RunFolder, "stop_requested", lambda folder: False)
    return run_dir


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.timeout(300)
def test_resume_continues_the_optimizer_and_writes_tensorboard_events(tmp_path, tiny_dataset, monkeypatch):
    run_dir = _stopped_after_one_epoch(tmp_path, tiny_dataset, monkeypatch, ["--warmup-epochs", "0"])
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 0
    batches = {r["epoch"]: r["batches"] for r in rf.read_records(run_dir) if r["kind"] == "batch"}
    # one phase throughout: the optimizer counted every batch of the three epochs, across the resume
    model = train.load_checkpoint(run_dir / rf.CHECKPOINT_FILE)
    assert int(model.optimizer.iterations.numpy()) == sum(batches.values()) == 9
    assert "optimizer state (step 3)" in (run_dir / rf.LOG_FILE).read_text()
    events = _read_events(run_dir / rf.TENSORBOARD_DIR)
    assert sorted(events["train"]["epoch_loss"]) == [1, 2, 3]
    assert sorted(events["validation"]["epoch_balanced_accuracy"]) == [1, 2, 3]
    assert events["train"]["epoch_learning_rate"][1] == pytest.approx(train.learning_rate(
        train.load_resume_args(train.build_parser(), run_dir), 0))
    last = _epochs(run_dir)[-1]
    assert events["validation"]["epoch_auc"][3] == pytest.approx(last["val_auc"], rel=1e-5)


def _read_events(root: Path) -> dict:
    """{writer: {tag: {step: value}}} from the TensorBoard event files under ``root``."""
    import tensorflow as tf

    found = {}
    for part in ("train", "validation"):
        tags = found.setdefault(part, {})
        for path in sorted((root / part).glob("events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    assert value.metadata.plugin_data.plugin_name == "scalars"
                    tags.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return found


@pytest.mark.timeout(300)
def test_a_truncated_checkpoint_falls_back_to_the_best_model(tmp_path, tiny_dataset, monkeypatch):
    run_dir = _stopped_after_one_epoch(tmp_path, tiny_dataset, monkeypatch)
    _truncate(run_dir / rf.CHECKPOINT_FILE)
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 0
    log = (run_dir / rf.LOG_FILE).read_text()
    assert "last.keras is unreadable" in log and "falling back to the best checkpoint model.keras" in log
    assert "resuming after epoch 1 from model.keras with a fresh optimizer" in log
    assert json.loads((run_dir / rf.STATUS_FILE).read_text())["state"] == "done"
    assert [e["epoch"] for e in _epochs(run_dir)] == [1, 2, 3]


@pytest.mark.timeout(300)
def test_no_loadable_checkpoint_fails_clearly(tmp_path, tiny_dataset, monkeypatch):
    run_dir = _stopped_after_one_epoch(tmp_path, tiny_dataset, monkeypatch)
    _truncate(run_dir / rf.CHECKPOINT_FILE)
    _truncate(run_dir / rf.MODEL_FILE)
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 1
    status = json.loads((run_dir / rf.STATUS_FILE).read_text())
    assert status["state"] == "failed"
    assert "cannot resume: last.keras and model.keras are both unreadable" in status["message"]


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    class Failing:
        def save(self, path):
            Path(path).write_bytes(b"half a fil")
            raise OSError("disk full")

    target = tmp_path / rf.CHECKPOINT_FILE
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(OSError, match="disk full"):
        train.save_atomic(Failing(), target)
    assert target.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [target]  # no temp file left behind


@pytest.mark.timeout(300)
def test_same_config_and_seed_give_the_same_split_and_metrics(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tiny_dataset))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    runs = [tmp_path / "a", tmp_path / "b"]
    for run_dir in runs:
        assert train.main(["--run-dir", str(run_dir), "--epochs", "2", *TINY]) == 0
    assert split_hash(runs[0] / "splits.csv") == split_hash(runs[1] / "splits.csv")
    for first, second in zip(_epochs(runs[0]), _epochs(runs[1])):
        for key in ("loss", "val_loss", "val_accuracy", "val_balanced_accuracy"):
            assert first[key] == pytest.approx(second[key], abs=0.02), key


@pytest.mark.timeout(240)
def test_mirrored_strategy_over_two_logical_cpus(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir), "--epochs", "2", "--logical-cpus", "2", *TINY]
    done = subprocess.run(cmd, cwd=PROJECT, env=_env(tmp_path, tiny_dataset), timeout=200, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    log = (run_dir / "train.log").read_text()
    assert "strategy MirroredStrategy with 2 replicas" in log
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"


def test_class_weights_balance_the_loss():
    labels = np.array([0] * 8 + [1] * 2)
    weights = train.class_weights(labels, 3)
    assert weights[2] == 0  # absent class
    assert weights[0] * 8 == pytest.approx(weights[1] * 2)


def test_lesion_sample_keeps_every_class_and_whole_lesions():
    frame = pd.DataFrame({"lesion_id": [f"L{i // 2}" for i in range(400)],
                          "dx": [CLASSES[(i // 2) % 7] for i in range(400)]})
    sample = train.sample_lesions(frame, 100, seed=0)
    assert set(sample["dx"]) == set(CLASSES)
    assert (sample.groupby("lesion_id").size() == 2).all()
    assert 60 <= len(sample) <= 140


def test_learning_rate_schedule_warms_up_then_decays():
    args = train.build_parser().parse_args(["--run-dir", "x", "--epochs", "10", "--warmup-epochs", "2"])
    rates = [train.learning_rate(args, e) for e in range(10)]
    assert rates[:2] == [args.lr, args.lr] and rates[2] == pytest.approx(args.finetune_lr)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:])) and rates[-1] > 0


def _free_ports(n: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.timeout(600)
def test_two_workers_under_multi_worker_mirrored_strategy_end_with_the_same_weights(tmp_path, tiny_dataset):
    import numpy as np

    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir), "--epochs", "1", *TINY,
           "--warmup-epochs", "0"]
    workers, logs = [], [tmp_path / f"worker-{index}.err" for index in range(2)]
    for index in range(2):
        env = {**_env(tmp_path, tiny_dataset), "HAM_WORKER_DIR": str(tmp_path / "workers"),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        with logs[index].open("w") as log:  # a file, not a pipe: an unread full pipe would block its worker
            workers.append(subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=log))
    codes = [w.wait(timeout=540) for w in workers]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    chief_log = (run_dir / rf.LOG_FILE).read_text()
    assert "strategy CollectiveAllReduceStrategy with 2 replicas" in chief_log
    assert json.loads((run_dir / rf.STATUS_FILE).read_text())["state"] == "done"
    worker = tmp_path / "workers" / "worker-1"
    assert json.loads((worker / rf.STATUS_FILE).read_text())["state"] == "done"
    # only the chief (worker 0) wrote the run folder
    assert json.loads((run_dir / rf.STATUS_FILE).read_text())["pid"] == workers[0].pid
    chief = train.load_checkpoint(run_dir / rf.CHECKPOINT_FILE)
    other = train.load_checkpoint(worker / rf.CHECKPOINT_FILE)
    assert int(chief.optimizer.iterations.numpy()) == int(other.optimizer.iterations.numpy()) > 0
    assert len(chief.get_weights()) == len(other.get_weights())
    for a, b in zip(chief.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_chief_is_the_chief_task_or_worker_zero(monkeypatch):
    two = {"worker": ["a:1", "b:2"]}
    cases = [(None, True, 0),
             ({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, True, 1),
             ({"cluster": two, "task": {"type": "worker", "index": 0}}, True, 2),
             ({"cluster": two, "task": {"type": "worker", "index": 1}}, False, 2),
             ({"cluster": {**two, "chief": ["c:3"]}, "task": {"type": "worker", "index": 0}}, False, 3),
             ({"cluster": {**two, "chief": ["c:3"]}, "task": {"type": "chief", "index": 0}}, True, 3)]
    for config, chief, workers in cases:
        if config is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        assert (train.is_chief(), train.cluster_workers()) == (chief, workers), config


@pytest.mark.timeout(300)
def test_weight_averaging_survives_a_resume_and_is_scored_once(tmp_path, tiny_dataset, monkeypatch):
    run_dir = _stopped_after_one_epoch(tmp_path, tiny_dataset, monkeypatch, extra=["--average-from", "1"])
    assert rf.read_arrays(run_dir / rf.AVERAGE_FILE)[1] == 1
    assert train.main(["--run-dir", str(run_dir), "--resume"]) == 0

    arrays, count = rf.read_arrays(run_dir / rf.AVERAGE_FILE)
    assert count == 3  # epoch 1 before the stop, epochs 2 and 3 after it, none twice
    records = [json.loads(line) for line in (run_dir / rf.METRICS_FILE).read_text().splitlines()]
    averages = [r for r in records if r["kind"] == rf.AVERAGE_RECORD]
    assert len(averages) == 1 and averages[0]["epochs"] == [1, 3]
    best_epoch = max(r[rf.BEST_KEY] for r in records if r["kind"] == rf.EPOCH_RECORD)
    assert averages[0]["chosen"] == (averages[0][rf.BEST_KEY] > best_epoch)
    if averages[0]["chosen"]:
        import keras

        kept = keras.models.load_model(run_dir / rf.MODEL_FILE, compile=False).get_weights()
        assert all(np.allclose(k, a.astype(np.float32)) for k, a in zip(kept, arrays))


def test_averaging_from_beyond_the_last_epoch_is_refused(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "core", "train", "--run-dir", str(tmp_path / "r"), "--epochs", "3",
                                "--average-from", "4"], capture_output=True, text=True, cwd=PROJECT, timeout=120)
    assert completed.returncode == 2
    assert "--average-from cannot exceed --epochs" in completed.stderr


def test_the_running_mean_of_arrays_round_trips(tmp_path):
    path = tmp_path / rf.AVERAGE_FILE
    rf.write_arrays_atomic(path, [np.arange(3.0), np.ones((2, 2))], 5)
    arrays, count = rf.read_arrays(path)
    assert count == 5 and np.array_equal(arrays[0], np.arange(3.0)) and arrays[1].shape == (2, 2)
    path.write_bytes(b"not an npz")
    assert rf.read_arrays(path) is None
