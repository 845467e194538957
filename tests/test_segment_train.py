"""The segmenter's trainer on a tiny generated dataset: the run-folder contract, STOP and resume."""

import json

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from core import segment_train
from core.segmentation_metrics import SCORE_COLUMNS, load_scores
from core.splits import split_hash
from core.train import RunFolder

pytestmark = pytest.mark.timeout(900)
ARGS = ["--image-size", "32", "--image-height", "32", "--epochs", "2", "--batch-size", "8", "--weights", "none",
        "--freeze", "none", "--seed", "1"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    dataset = write_tiny_dataset(tmp_path / "ham10000")  # 6 lesions per class: enough for 7 folds
    monkeypatch.setenv("HAM10000_DIR", str(dataset))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def lines(run_dir) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_the_run_folder_contract(env):
    run = env / "run"
    assert segment_train.main(["--run-dir", str(run), *ARGS]) == 0
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["best"]["epoch"] in (1, 2)
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "segmentation" and config["split_sha256"] == split_hash(run / "splits.csv")
    epochs = [r for r in lines(run) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and all(0 <= r["val_dice"] <= 1 for r in epochs)
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "segmentation" and meta["split_sha256"] == config["split_sha256"]
    assert meta["threshold"] in segment_train.THRESHOLDS and (meta["image_height"], meta["image_width"]) == (32, 32)
    splits = pd.read_csv(run / "splits.csv")
    for split in ("val", "test"):
        scores = load_scores(run, split)
        assert set(SCORE_COLUMNS) <= set(scores.columns)
        assert set(scores["image_id"]) == set(splits.loc[splits["split"] == split, "image_id"])


class StopAfterFirstBatch(RunFolder):
    """A run folder whose STOP request arrives during the second epoch."""

    def stop_requested(self) -> bool:
        return (self.dir / "metrics.jsonl").is_file() and any(r["kind"] == "epoch" for r in lines(self.dir))


def test_stop_is_honoured_and_resume_finishes_the_run(env):
    run = env / "run"
    args = segment_train.build_parser().parse_args(["--run-dir", str(run), *ARGS])
    assert segment_train.train(args, StopAfterFirstBatch(run)) == 0
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped"
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    # the stop landed mid-epoch 2, so epoch 2 is what a resume runs again
    assert status["message"] == "stopped during epoch 2; resume continues from epoch 2"
    assert segment_train.main(["--run-dir", str(run), "--resume"]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert [r["epoch"] for r in lines(run) if r["kind"] == "epoch"] == [1, 2]


def test_bad_options_fail_with_a_reason(env):
    args = segment_train.build_parser().parse_args(["--run-dir", str(env / "r"), "--image-size", "100"])
    assert segment_train.validate_args(args) == ["image width and height must be multiples of 32 between 32 and 512"]
    folder = RunFolder(env / "r")
    assert segment_train.train(args, folder) == 2
    assert json.loads((env / "r" / "status.json").read_text())["state"] == "failed"


def test_resume_options_come_from_the_config_and_a_new_length_keeps_the_planned_one(tmp_path):
    parser = segment_train.build_parser()
    config = {**vars(parser.parse_args(["--run-dir", str(tmp_path), *ARGS])), "run_dir": str(tmp_path)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = segment_train.load_resume_args(parser, tmp_path)
    assert (args.epochs, args.image_size, args.resume, getattr(args, "planned_epochs", None)) == (2, 32, True, None)
    longer = segment_train.load_resume_args(parser, tmp_path, epochs=4)
    assert (longer.epochs, longer.planned_epochs) == (4, 2)
    (tmp_path / "config.json").write_text(json.dumps({**config, "epochs": 4, "planned_epochs": 2}))
    again = segment_train.load_resume_args(parser, tmp_path)
    assert (again.epochs, again.planned_epochs) == (4, 2)
