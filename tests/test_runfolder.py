"""The run folder contract: round trips of its files, its lock, and one spelling of each file name."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.contracts import runfolder as rf
from core.training import runs
PROJECT = Path(__file__).resolve().parent.parent
FILE_NAMES = [rf.CONFIG_FILE, rf.STATUS_FILE, rf.METRICS_FILE, rf.LOG_FILE, rf.LOCK_FILE, rf.LAUNCH_FILE,
              rf.CHECKPOINT_FILE, rf.STATE_FILE, rf.MODEL_FILE, rf.METADATA_FILE, rf.SPLITS_FILE]


def test_status_round_trip_through_the_registry_reader(tmp_path):
    folder = rf.RunFolder(tmp_path / "run")
    folder.update(state="done", epoch=3, epochs=3, best={"epoch": 2, rf.BEST_KEY: 0.5}, message="finished")
    status = runs.read_status(folder.dir)
    assert status["state"] == status["stored_state"] == "done"
    assert status["best"] == {"epoch": 2, rf.BEST_KEY: 0.5} and status["pid"] is not None
    assert not list(folder.dir.glob(f"*{rf.TEMP_MARK}*"))  # the atomic writer leaves no temp file


def test_a_resumed_folder_keeps_its_start_and_best(tmp_path):
    first = rf.RunFolder(tmp_path)
    first.update(state="stopped", best={"epoch": 1})
    second = rf.RunFolder(tmp_path)
    assert second.status["started"] == first.status["started"] and second.status["best"] == {"epoch": 1}


def test_metrics_records_round_trip(tmp_path):
    folder = rf.RunFolder(tmp_path)
    epoch = {"kind": rf.EPOCH_RECORD, "epoch": 1, "lr": 1e-3, **{k: 0.5 for k in rf.EPOCH_METRICS},
             **{rf.val_key(k): 0.25 for k in rf.EPOCH_METRICS}}
    batch = {"kind": rf.BATCH_RECORD, "epoch": 2, "batch": 3, "batches": 9, "loss": 0.7, "seconds": 1.5}
    folder.append_metrics(epoch)
    folder.append_metrics(batch)
    with open(folder.path(rf.METRICS_FILE), "a") as handle:
        handle.write('{"kind": "epo')  # a half-written line
    assert rf.read_records(folder.dir) == [epoch, batch]
    metrics = runs.read_metrics(folder.dir)
    assert metrics.epochs.loc[0, "val_auc"] == 0.25 and metrics.batch == batch


def test_json_round_trip_and_unreadable_files(tmp_path):
    rf.write_json_atomic(tmp_path / rf.STATE_FILE, {"epoch": 2, "phase": "finetune", "score": 0.5})
    assert rf.read_json(tmp_path / rf.STATE_FILE) == {"epoch": 2, "phase": "finetune", "score": 0.5}
    (tmp_path / "partial.json").write_text('{"epoch": ')
    (tmp_path / "list.json").write_text("[1]")
    assert rf.read_json(tmp_path / "partial.json") is None and rf.read_json(tmp_path / "list.json") is None
    assert rf.read_json(tmp_path / "missing.json") is None


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import numpy as np

    path = tmp_path / "average.npz"
    rf.write_arrays_atomic(path, [np.zeros(2)], count=1)

    def disk_full(handle, **arrays):
        handle.write(b"half an npz")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        rf.write_arrays_atomic(path, [np.ones(2)], count=2)
    assert rf.read_arrays(path)[1] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["average.npz"]


def test_the_atomic_writer_shows_the_old_file_until_the_new_one_is_whole(tmp_path):
    path = tmp_path / "status.json"
    rf.write_text_atomic(path, "the old file")
    seen = []

    def write(tmp):
        tmp.write_text("the new ")
        seen.append((tmp, path.read_text(), sorted(p.name for p in tmp_path.iterdir())))
        with open(tmp, "a") as handle:
            handle.write("file")

    rf.write_atomic(path, write)
    rf.write_atomic(path, write)
    (first, during, listing), (second, _, _) = seen
    assert during == "the old file"  # a reader during the write sees the whole old file
    assert first.parent == tmp_path and first.name.startswith(".") and rf.TEMP_MARK in first.name
    assert first.suffix == ".json" and first != second  # the suffix kept, a new name per call
    assert listing == sorted([first.name, "status.json"])
    assert path.read_text() == "the new file" and [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("failure", ["while writing", "while renaming"])
def test_a_failed_atomic_write_keeps_the_old_file_and_cleans_its_temporary_file(tmp_path, monkeypatch, failure):
    path = tmp_path / rf.METADATA_FILE
    rf.write_json_atomic(path, {"version": 1})

    def write(tmp):
        tmp.write_bytes(b'{"version": ')
        if failure == "while writing":
            raise OSError(28, "No space left on device")

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    if failure == "while renaming":
        monkeypatch.setattr(rf.os, "replace", refuse)
    with pytest.raises(OSError):
        rf.write_atomic(path, write)
    assert rf.read_json(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == [rf.METADATA_FILE]


def test_bytes_text_and_json_go_through_the_one_writer(tmp_path, monkeypatch):
    written = []
    real = rf.write_atomic
    monkeypatch.setattr(rf, "write_atomic", lambda path, write: written.append(path) or real(path, write))
    rf.write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    rf.write_text_atomic(tmp_path / "b.txt", "é")
    rf.write_json_atomic(tmp_path / "c.json", {"b": 1, "a": 2}, sort_keys=True)
    rf.write_npz_atomic(tmp_path / "d.npz", {"x": [1, 2]}, compressed=False)
    assert written == [tmp_path / name for name in ("a.bin", "b.txt", "c.json", "d.npz")]
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.txt").read_bytes() == "é".encode()
    assert (tmp_path / "c.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}'


def test_stop_request_round_trip(tmp_path):
    folder = rf.RunFolder(tmp_path)
    assert not folder.stop_requested()
    rf.request_stop(tmp_path)
    assert folder.stop_requested()
    folder.clear_stop()
    assert not folder.stop_requested()


def test_predictions_file_names():
    assert rf.predictions_file("val") == "predictions_val.csv"
    assert rf.predictions_file("external") == "predictions_external.csv"


def test_the_lock_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from core.contracts.runfolder import RunLock; "
         "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()", str(tmp_path)],
        cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert rf.is_locked(tmp_path)
        with pytest.raises(rf.RunFolderBusy, match="in use by another trainer"):
            rf.RunLock(tmp_path).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not rf.is_locked(tmp_path)
    with rf.RunLock(tmp_path):
        assert rf.is_locked(tmp_path)


def test_each_run_folder_file_name_is_spelled_in_one_core_module():
    splits = ("val", "test", "external")
    patterns = [rf.PREDICTIONS_PATTERN, rf.SCORES_PATTERN, rf.EXPORT_PATTERN]
    names = FILE_NAMES + [rf.STOP_FILE, rf.TENSORBOARD_DIR, rf.OOD_FILE, rf.EXPORT_DIR] + patterns
    instances = [rf.predictions_file(s) for s in splits] + [rf.scores_file(s) for s in splits] + [
        rf.export_file(variant) for variant in ("none", "float16", "int8", "private")]
    spelled = {}
    for path in sorted((PROJECT / "core").rglob("*.py")):
        # "export" is also the name of a command (`lesionlab export`): its entry in the command table and its prog.
        text = re.sub(r"\"export\": Command\(|prog\(\"export\"\)", "", path.read_text(encoding="utf-8"))
        for name in names + instances:
            if re.search(r"[\"'/]" + re.escape(name) + r"[\"'/]", text):
                spelled.setdefault(name, []).append(path.name)
    assert all(modules == ["runfolder.py"] for modules in spelled.values()), spelled
    assert set(spelled) == set(names)  # the constants themselves, each found once


def test_model_metadata_goes_through_the_one_atomic_writer(tmp_path, monkeypatch):
    from core.serving import modelio
    calls = []
    monkeypatch.setattr(modelio, "write_json_atomic", lambda path, data, **kw: calls.append((path, kw)))
    modelio.write_metadata(tmp_path, {"classes": []})
    assert calls == [(tmp_path / rf.METADATA_FILE, {"sort_keys": True})]


class ScriptedTrainer:
    """A trainer without a model: saves ``state.json`` after each epoch, and stops where it is told."""

    def __init__(self, folder, start_epoch=0, stop_during=None, stop_after=None):
        self.folder, self.start_epoch, self.best, self.finished = folder, start_epoch, None, False
        self.stop_during, self.stop_after = stop_during, stop_after

    def run_epoch(self, epoch: int) -> bool:
        if epoch + 1 == self.stop_during:
            return False
        self.folder.write_json(rf.STATE_FILE, {"epoch": epoch + 1})
        return epoch + 1 != self.stop_after  # a stop agreed at the epoch's end, after its state is saved

    def finish(self) -> None:
        self.finished = True


@pytest.mark.parametrize(("start", "stop_during", "stop_after", "message"), [
    (0, 3, None, "stopped during epoch 3; resume continues from epoch 3"),
    (0, 1, None, "stopped during epoch 1; resume continues from epoch 1"),
    (2, 4, None, "stopped during epoch 4; resume continues from epoch 4"),
    (0, None, 2, "stopped during epoch 2; resume continues from epoch 3"),
])
def test_a_stopped_run_says_where_a_resume_continues(tmp_path, start, stop_during, stop_after, message):
    folder = rf.RunFolder(tmp_path)
    if start:
        folder.write_json(rf.STATE_FILE, {"epoch": start})
    trainer = ScriptedTrainer(folder, start, stop_during, stop_after)
    assert rf.run_epochs(trainer, folder, epochs=5) == 0
    status = rf.read_json(tmp_path / rf.STATUS_FILE)
    assert (status["state"], status["message"]) == ("stopped", message) and status["finished"]
    assert not trainer.finished


def test_a_run_that_ends_normally_is_finished_and_done(tmp_path):
    folder = rf.RunFolder(tmp_path)
    trainer = ScriptedTrainer(folder)
    assert rf.run_epochs(trainer, folder, epochs=2) == 0
    status = rf.read_json(tmp_path / rf.STATUS_FILE)
    assert trainer.finished and (status["state"], status["message"]) == ("done", "finished")
    assert rf.read_json(tmp_path / rf.STATE_FILE) == {"epoch": 2}


class StopDuringTheLastValidation(ScriptedTrainer):
    """A STOP that arrives after the last batch, while the last epoch is scored (no batch is left to see it)."""

    def run_epoch(self, epoch: int) -> bool:
        finished = super().run_epoch(epoch)
        if epoch + 1 == 2:
            rf.request_stop(self.folder.dir)
        return finished


def test_a_stop_during_the_last_validation_skips_the_final_phases_and_a_resume_does_them(tmp_path):
    folder = rf.RunFolder(tmp_path)
    trainer = StopDuringTheLastValidation(folder)
    assert rf.run_epochs(trainer, folder, epochs=2) == 0
    status = rf.read_json(tmp_path / rf.STATUS_FILE)
    assert status["state"] == "stopped" and "before the final scoring" in status["message"]
    assert not trainer.finished
    folder.clear_stop()
    resumed = ScriptedTrainer(folder, start_epoch=2)
    assert rf.run_epochs(resumed, folder, epochs=2) == 0 and resumed.finished


def test_phase_progress_is_recorded_in_the_status(tmp_path):
    folder = rf.RunFolder(tmp_path)
    folder.set_phase("predict", "predicting val and test", 300)
    folder.advance(120)
    status = rf.read_json(tmp_path / rf.STATUS_FILE)
    assert (status["phase"], status["progress"]) == ("predict", {"done": 120, "total": 300, "unit": "images"})
    folder.set_phase("calibrate", "fitting the temperature")
    folder.advance(5)  # a phase without a count records none
    assert rf.read_json(tmp_path / rf.STATUS_FILE)["progress"] is None
