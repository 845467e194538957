"""The segmenter's trainer on a tiny generated dataset: the run-folder contract, STOP and resume, and a real
run launched as the Train page launches it."""

import json

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from core.training import options as opts
from core.contracts import runfolder as rf
from core.training import runs, segment_train, train_common
from core.contracts.runfolder import RunFolder
from core.evaluation.segmentation_metrics import SCORE_COLUMNS, load_scores
from core.dataset.splits import split_hash

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


def parse(argv):
    return train_common.parse_args(argv, prog=segment_train.PROG, default_task="segmentation")


def test_stop_is_honoured_and_resume_finishes_the_run(env):
    run = env / "run"
    args = parse(["--run-dir", str(run), *ARGS])
    assert segment_train.train(args, StopAfterFirstBatch(run)) == 0
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "stopped"
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    # the stop landed mid-epoch 2, so epoch 2 is what a resume runs again
    assert status["message"] == "stopped during epoch 2; resume continues from epoch 2"
    assert segment_train.main(["--run-dir", str(run), "--resume"]) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert [r["epoch"] for r in lines(run) if r["kind"] == "epoch"] == [1, 2]


def test_bad_options_are_refused_with_the_flags_and_nothing_trains(env, capsys):
    with pytest.raises(SystemExit) as stop:
        segment_train.main(["--run-dir", str(env / "r"), "--image-size", "100", "--arch", "small_cnn"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "unrecognized arguments: --arch small_cnn" in err  # a classifier option is not the segmenter's
    with pytest.raises(SystemExit):
        segment_train.main(["--run-dir", str(env / "r"), "--image-size", "100"])
    assert "--image-size must be a multiple of 32, got 100" in capsys.readouterr().err
    assert not (env / "r").exists()


def test_resume_options_come_from_the_config_and_a_new_length_keeps_the_planned_one(tmp_path):
    config = {**vars(parse(["--run-dir", str(tmp_path), *ARGS])), "run_dir": str(tmp_path)}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = parse(["--run-dir", str(tmp_path), "--resume"])
    assert (args.epochs, args.image_size, args.resume, getattr(args, "planned_epochs", None)) == (2, 32, True, None)
    longer = parse(["--run-dir", str(tmp_path), "--resume", "--epochs", "4"])
    assert (longer.epochs, longer.planned_epochs) == (4, 2)
    (tmp_path / "config.json").write_text(json.dumps({**config, "epochs": 4, "planned_epochs": 2}))
    again = parse(["--run-dir", str(tmp_path), "--resume"])
    assert (again.epochs, again.planned_epochs) == (4, 2)
    # python -m core.training.train resumes it as a segmentation run too: the task comes from the config
    from core.training import train
    assert train.parse_args(["--run-dir", str(tmp_path), "--resume"]).task == "segmentation"


def page_form(**changes) -> dict:
    """The options the Train page's form sends for segmentation: every field of the task, at its default."""
    form = {o.name: o.default for o in opts.schema("segmentation") if o.in_form}
    return {**form, **changes}


@pytest.mark.timeout(900)
def test_a_segmentation_run_launched_as_the_page_does_finishes_with_its_run_folder(env, monkeypatch):
    """The page's launcher (``core.training.runs.launch``) starts the real trainer process on a 1-epoch run."""
    monkeypatch.setenv("HAM_RUNS_DIR", str(env / "runs"))
    started, popen = [], runs.subprocess.Popen
    monkeypatch.setattr(runs.subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    options = page_form(image_size=32, image_height=32, epochs=1)
    run_dir = runs.launch(options)
    argv = json.loads((run_dir / rf.LAUNCH_FILE).read_text())["argv"]
    assert argv == runs.build_argv(run_dir, options) and argv[1:4] == ["-m", "core", "train"]
    assert started[0].wait(timeout=840) == 0, (run_dir / rf.LOG_FILE).read_text()[-3000:]
    status = runs.read_status(run_dir)
    assert status["state"] == "done" and status["best"]["epoch"] == 1, status
    config = json.loads((run_dir / rf.CONFIG_FILE).read_text())
    assert (config["task"], config["epochs"], config["freeze"], config["weights"]) == (
        "segmentation", 1, "block_3", "offline-imagenet")
    assert [r["epoch"] for r in lines(run_dir) if r["kind"] == "epoch"] == [1]
    for name in (rf.MODEL_FILE, rf.METADATA_FILE, rf.SPLITS_FILE, "scores_val.csv", "scores_test.csv"):
        assert (run_dir / name).is_file(), name
    sizes = runs.split_sizes(run_dir)
    assert len(load_scores(run_dir, "val")) == sizes["val"] and len(load_scores(run_dir, "test")) == sizes["test"]
    row = runs.run_summary_table().set_index("run").loc[run_dir.name]
    assert row["task"] == "segmentation" and 0 <= row["val Dice"] <= 1 and row["model"] == "segmenter @ 32×32 px"
    assert runs.resume_problem(run_dir, status) is not None  # a finished run offers no resume
