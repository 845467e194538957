"""The trainer: a real subprocess run on tiny data, stop and resume, determinism, multi-device."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import train
from core.labels import CLASSES
from core.splits import split_hash

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
    cmd = [sys.executable, "-m", "core.train", "--run-dir", str(run_dir), "--epochs", "3", *TINY]
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
    assert meta["temperature_n"] == len(pd.read_csv(run_dir / "predictions_val.csv", skiprows=1))
    splits = pd.read_csv(run_dir / "splits.csv")
    for split in ("val", "test"):
        assert (run_dir / f"predictions_{split}.csv").read_text().startswith("# probabilities: raw")
        preds = pd.read_csv(run_dir / f"predictions_{split}.csv", skiprows=1)
        assert list(preds.columns) == ["image_id", "dx", "dx_pred", *CLASSES]
        assert set(preds["image_id"]) == set(splits.loc[splits["split"] == split, "image_id"])
        assert np.allclose(preds[list(CLASSES)].sum(axis=1), 1, atol=1e-4)
    assert "run finished" in (run_dir / "train.log").read_text()


def test_bad_options_are_refused_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(tmp_path / "r"), "--arch", "small_cnn", "--weights", "offline-imagenet"])
    assert "small_cnn trains from scratch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--run-dir", str(tmp_path / "r"), "--resume"])
    assert "config.json" in capsys.readouterr().err


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
    assert "resuming after epoch 1" in (run_dir / "train.log").read_text()
    assert (run_dir / "predictions_test.csv").exists()


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
    cmd = [sys.executable, "-m", "core.train", "--run-dir", str(run_dir), "--epochs", "2", "--logical-cpus", "2", *TINY]
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
