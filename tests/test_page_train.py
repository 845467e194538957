"""The Train page, driven by AppTest over fixture run folders in a temp registry."""

import json
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest
from conftest import TRAINER_LIKE_ARGV, start_page, write_tiny_dataset
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "train.py")
STATES = ("queued", "running", "done", "failed", "crashed", "stopped")


def _iso(delta_seconds: float = 0.0) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_seconds)).isoformat(timespec="seconds")


def _epoch(epoch: int, phase: str) -> dict:
    score = 0.3 + 0.05 * epoch
    return {"kind": "epoch", "epoch": epoch, "phase": phase, "lr": 1e-3 if phase == "warmup" else 1e-4,
            "seconds": 30.0, "loss": 1.5 / epoch, "accuracy": score + 0.2,
            "balanced_accuracy": score, "auc": score + 0.4, "val_loss": 1.6 / epoch,
            "val_accuracy": score + 0.15, "val_balanced_accuracy": score - 0.02, "val_auc": score + 0.38}


def _write(run_dir: Path, status: dict, epochs: int = 0, config: bool = True, extra: str = "") -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps(status))
    lines = [json.dumps(_epoch(e, "warmup" if e <= 2 else "finetune")) for e in range(1, epochs + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines) + extra)
    if config:
        (run_dir / "config.json").write_text(json.dumps({"arch": "mobilenet_v2", "image_size": 128,
                                                         "epochs": 6, "seed": 42}))
    (run_dir / "train.log").write_text(f"run {run_dir.name}\nepoch lines: {epochs}\n")
    return run_dir


def write_fixture_runs(root: Path, live_pid: int, live_argv: list, dead_pid: int) -> dict:
    """One run folder per state; returns {state: run id}. Used by the browser check too."""
    best = {"epoch": 4, "val_balanced_accuracy": 0.48, "val_auc": 0.86, "val_accuracy": 0.63}
    batch = json.dumps({"kind": "batch", "epoch": 3, "batch": 40, "batches": 100, "loss": 0.7,
                        "seconds": 12.0}) + "\n"
    ids = {state: f"2025010{n + 1}-120000-mobilenet-v2-{state}" for n, state in enumerate(
        ("done", "failed", "crashed", "running", "queued", "stopped"))}
    _write(root / ids["done"], {"state": "done", "pid": dead_pid, "started": "2025-01-01T12:00:00+00:00",
                                "finished": "2025-01-01T12:42:10+00:00", "epoch": 6, "epochs": 6,
                                "best": best, "message": "finished"}, epochs=6)
    _write(root / ids["failed"], {"state": "failed", "pid": dead_pid, "started": "2025-01-02T12:00:00+00:00",
                                  "finished": "2025-01-02T12:01:00+00:00", "best": None,
                                  "message": "ValueError: boom"}, config=False)
    _write(root / ids["crashed"], {"state": "running", "pid": dead_pid, "started": "2025-01-03T12:00:00+00:00",
                                   "updated": "2025-01-03T12:20:00+00:00", "epoch": 3, "epochs": 6,
                                   "best": {**best, "epoch": 2}}, epochs=2)
    _write(root / ids["running"], {"state": "running", "pid": live_pid, "started": _iso(-600),
                                   "updated": _iso(), "epoch": 3, "epochs": 6, "phase": "finetune",
                                   "batch": 40, "batches": 100, "best": best}, epochs=2,
           extra=batch + '{"kind": "batch", "epo')
    queued = _write(root / ids["queued"], {"state": "queued", "pid": None, "started": _iso(-300),
                                           "updated": _iso()}, config=False)
    # The newest run is a finished one, so opening the active run by default is a choice.
    _write(root / ids["stopped"], {"state": "stopped", "pid": dead_pid, "started": _iso(-60),
                                   "finished": _iso(-5), "epoch": 1, "epochs": 6, "best": None,
                                   "message": "stopped during epoch 1"})
    (queued / "launch.json").write_text(json.dumps({"pid": live_pid, "argv": live_argv,
                                                    "options": {"arch": "efficientnet_b0"}}))
    return ids


@pytest.fixture(autouse=True)
def clear_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A temp registry, a tiny dataset and a default model outside the registry."""
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(write_tiny_dataset(tmp_path / "ham10000")))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "default"))
    return tmp_path / "runs"


@pytest.fixture
def fixture_runs(env, live_trainer, dead_pid):
    return write_fixture_runs(env, live_trainer, TRAINER_LIKE_ARGV, dead_pid)


run_page = partial(start_page, PAGE, timeout=60)


def open_run(at: AppTest, run_id: str) -> AppTest:
    at.selectbox(key="train_selected_run").set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def chart_keys(at: AppTest) -> set:
    return {chart.key for chart in at.get("plotly_chart")}


def submit_button(at: AppTest):
    return next(b for b in at.button if "Launch training" in b.label)


def test_history_lists_every_state(fixture_runs):
    at = run_page()
    table = at.dataframe[0].value.set_index("run")
    assert set(table["task"]) == {"classification"}
    assert {state: table.loc[run_id, "status"] for state, run_id in fixture_runs.items()} == {
        s: s for s in STATES}
    assert table.loc[fixture_runs["done"], "val bal. acc"] == pytest.approx(0.48)
    assert table.loc[fixture_runs["done"], "duration"] == "42 min 10 s"
    assert table.loc[fixture_runs["queued"], "model"] == "efficientnet_b0"
    newest_first = ["stopped", "queued", "running", "crashed", "failed", "done"]
    assert list(table.index) == [fixture_runs[s] for s in newest_first]


def test_page_reattaches_to_the_active_run(fixture_runs):
    at = run_page()
    assert at.selectbox(key="train_selected_run").value == fixture_runs["queued"]
    assert f"Run `{fixture_runs['queued']}` is active" in texts(at)


def test_running_run_shows_progress_curves_and_stops(fixture_runs, env):
    at = open_run(run_page(), fixture_runs["running"])
    bars = [p.proto.text for p in at.get("progress")]
    assert any("epoch 3/6 (fine-tuning)" in t and "ETA" in t for t in bars), bars
    assert any("batch 40/100 of epoch 3" in t for t in bars), bars
    assert {"train_curves", "train_lr"} <= chart_keys(at)
    stop = next(b for b in at.button if "Stop" in b.label)
    stop.click().run()
    assert (env / fixture_runs["running"] / "STOP").is_file()
    assert "Stop requested" in texts(at)


def test_opening_a_done_run_shows_curves_metrics_and_config(fixture_runs):
    at = open_run(run_page(), fixture_runs["done"])
    assert {"train_curves", "train_lr"} <= chart_keys(at)  # the four metric curves and the learning rate
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Val balanced acc."] == "0.480" and metrics["Weights kept"] == "epoch 4"
    assert at.json[0].value and json.loads(at.json[0].value)["arch"] == "mobilenet_v2"
    assert not [b for b in at.button if "Resume" in b.label]


def test_crashed_run_explains_and_offers_resume_refused_while_busy(fixture_runs):
    at = open_run(run_page(), fixture_runs["crashed"])
    assert any("is gone" in e.value for e in at.error)
    resume = next(b for b in at.button if "Resume" in b.label)
    resume.click().run()
    assert any(f"a run is already active: {fixture_runs['queued']}" in e.value for e in at.error)


def field(at: AppTest, name: str, task: str = "classification"):
    """The form field of an option of ``task``."""
    key = f"train_opt_{task}_{name}"
    return next(w for w in (*at.selectbox, *at.number_input) if w.key == key)


def test_choosing_an_architecture_sets_its_defaults(env):
    at = run_page()
    field(at, "arch").set_value("small_cnn").run()
    assert field(at, "weights").value == "none"
    assert field(at, "warmup_epochs").value == 0
    assert field(at, "finetune_lr").value == pytest.approx(1e-3)
    field(at, "arch").set_value("mobilenet_v2").run()
    assert field(at, "weights").value == "offline-imagenet"
    assert field(at, "warmup_epochs").value == 2
    field(at, "arch").set_value("efficientnet_b0").run()
    assert field(at, "weights").value == "imagenet"


def test_form_validation_error_is_shown_with_the_labels_and_nothing_launches(fixture_runs, env):
    at = run_page()
    field(at, "arch").set_value("small_cnn").run()
    field(at, "weights").set_value("imagenet")
    field(at, "val_fraction").set_value(0.5)
    field(at, "test_fraction").set_value(0.45)
    submit_button(at).click().run()
    errors = "\n".join(e.value for e in at.error)
    assert "small_cnn has no pretrained weights" in errors
    assert "Validation share + Test share must leave at least 20% for training" in errors
    assert len([p for p in env.iterdir() if p.is_dir()]) == len(STATES)


@pytest.fixture
def launched(env, monkeypatch) -> list:
    """The options the page hands to the launcher (nothing trains)."""
    from core.training import runs
    calls = []
    monkeypatch.setattr(runs, "launch", lambda options, command=None: calls.append(options) or env / "launched")
    return calls


def test_a_one_epoch_run_with_the_default_warm_up_launches(launched):
    at = run_page()
    field(at, "epochs").set_value(1).run()
    assert field(at, "warmup_epochs").value == 1 and field(at, "warmup_epochs").max == 1  # the form follows
    submit_button(at).click().run()
    assert not at.error and launched[-1]["epochs"] == 1 and launched[-1]["warmup_epochs"] == 1


def test_segmentation_has_its_own_fields_defaults_and_launches_them(launched):
    from core.training import options as opts
    at = run_page()
    at.selectbox(key="train_opt_task").set_value("segmentation").run()
    assert not [w for w in at.selectbox if w.key == "train_opt_segmentation_arch"]
    assert (field(at, "image_size", "segmentation").value, field(at, "image_height", "segmentation").value) == (128, 96)
    assert field(at, "freeze", "segmentation").value == "block_3"
    field(at, "epochs", "segmentation").set_value(1)
    field(at, "max_images", "segmentation").set_value(200)
    submit_button(at).click().run()
    assert not at.error, [e.value for e in at.error]
    expected = {o.name: o.default for o in opts.schema("segmentation") if o.in_form}
    assert launched == [{**expected, "epochs": 1, "max_images": 200}]
    assert opts.validate(launched[0]) == []


def test_the_title_names_no_single_task(env):
    at = run_page()
    assert at.title[0].value.endswith("Train a model")
    assert at.selectbox(key="train_opt_task").options == ["Classification (7 diagnoses)", "Segmentation (lesion masks)"]


def test_launch_while_a_run_is_active_is_refused(fixture_runs, env):
    at = run_page()
    submit_button(at).click().run()
    assert any(f"a run is already active: {fixture_runs['queued']}" in e.value for e in at.error)
    assert len([p for p in env.iterdir() if p.is_dir()]) == len(STATES)


def test_without_dataset_launch_is_disabled_and_explained(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "nowhere"))
    at = run_page()
    assert any("HAM10000_DIR" in w.value for w in at.warning)
    assert submit_button(at).disabled
    assert any("No runs yet" in i.value for i in at.info)


def test_delete_asks_for_confirmation(fixture_runs, env):
    failed = fixture_runs["failed"]
    at = open_run(run_page(), failed)
    next(b for b in at.button if "Delete run" in b.label).click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    assert (env / failed).is_dir()
    at.button(key="train_delete_no").click().run()
    assert not any("cannot be undone" in w.value for w in at.warning)
    next(b for b in at.button if "Delete run" in b.label).click().run()
    at.button(key="train_delete_yes").click().run()
    assert not (env / failed).exists()
    assert failed not in set(at.dataframe[0].value["run"])
    assert not at.exception


def test_active_run_offers_no_delete(fixture_runs):
    at = open_run(run_page(), fixture_runs["running"])
    assert not [b for b in at.button if "Delete" in b.label]


@pytest.fixture
def scheduled(monkeypatch) -> list:
    """``(function name, run_every)`` of every ``st.fragment`` the page declares."""
    import streamlit

    original, found = streamlit.fragment, []

    def recording_fragment(func=None, *, run_every=None, **kwargs):
        found.append((func.__name__, run_every))
        return original(func, run_every=run_every, **kwargs)

    monkeypatch.setattr(streamlit, "fragment", recording_fragment)
    return found


def test_only_an_active_run_is_polled(fixture_runs, scheduled):
    at = open_run(run_page(), fixture_runs["done"])
    open_run(at, fixture_runs["running"])
    panels = [every for name, every in scheduled if name == "_run_panel"]
    assert panels == [2.0, None, 2.0]  # queued (opened by default), done, running
    # while a run is active the history refreshes with the live view
    assert {every for name, every in scheduled if name == "_history"} == {2.0}


def test_history_is_not_polled_without_an_active_run(env, dead_pid, scheduled):
    _write(env / "20250101-120000-done", {"state": "done", "pid": dead_pid, "epochs": 2, "epoch": 2}, epochs=2)
    run_page()
    assert ("_history", None) in scheduled and ("_history", 2.0) not in scheduled


def test_read_only_mode_hides_launch_stop_resume_and_delete(fixture_runs, monkeypatch):
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    at = open_run(run_page(), fixture_runs["running"])
    assert any("Read-only mode" in i.value for i in at.info)
    assert not [b for b in at.button if "Launch" in b.label or "Stop" in b.label]
    open_run(at, fixture_runs["crashed"])
    assert not [b for b in at.button if "Resume" in b.label or "Delete" in b.label]
    assert at.dataframe[0].value.shape[0] == len(STATES)


def test_lr_axis_is_logarithmic_with_labelled_ticks():
    import pandas as pd

    from ui.train import lr_figure

    epochs = pd.DataFrame({"epoch": [1, 2, 3, 4], "lr": [1e-3, 5e-5, 3e-5, 2.5e-6]})
    axis = lr_figure(epochs).layout.yaxis
    assert axis.type == "log" and axis.title.text == "learning rate"
    assert len(axis.tickvals) == 5 and axis.ticktext[0] == "2.5e-06" and axis.ticktext[-1] == "1.0e-03"
    narrow = lr_figure(pd.DataFrame({"epoch": [1, 2], "lr": [5e-5, 4e-5]})).layout.yaxis
    assert narrow.tickvals and all("e-05" in t for t in narrow.ticktext)


def test_runs_overlay_with_smoothing(fixture_runs):
    at = run_page()
    assert at.multiselect(key="train_compare_runs").value == [fixture_runs["stopped"], fixture_runs["queued"]]
    at.multiselect(key="train_compare_runs").set_value([fixture_runs["done"], fixture_runs["crashed"]]).run()
    at.slider(key="train_compare_smoothing").set_value(0.0).run()
    assert not at.exception
    assert "train_compare_chart" in chart_keys(at)


def test_overlay_figure_draws_raw_and_smoothed_lines_per_run():
    import pandas as pd

    from ui.train_compare import overlay_figure

    frames = {"a": pd.DataFrame({"epoch": [1, 2, 3], "val_auc": [0.5, 0.9, 0.7]}),
              "b": pd.DataFrame({"epoch": [1, 2], "val_auc": [0.6, 0.8]})}
    fig = overlay_figure(frames, "val_auc", 0.5, {"a": 1432, "b": None})
    assert [t.name for t in fig.data if t.showlegend is not False] == ["a (n = 1,432)", "b (n not recorded)"]
    raw, smoothed = fig.data[0], fig.data[1]
    assert list(raw.y) == [0.5, 0.9, 0.7]
    assert smoothed.y[0] == pytest.approx(0.5) and smoothed.y[1] == pytest.approx((0.5 * 0.25 + 0.5 * 0.9) / 0.75)


def _finishing_run(env, dead_pid, live_trainer, phase: str, progress=None, task="classification") -> str:
    run_id = f"20250109-120000-{phase}"
    status = {"state": "running", "pid": live_trainer, "started": _iso(-600), "updated": _iso(), "epoch": 6,
              "epochs": 6, "phase": phase, "batch": 100, "batches": 100, "message": "fitting it on 6 images",
              "progress": progress, "best": {"epoch": 4, "val_balanced_accuracy": 0.48}}
    run_dir = _write(env / run_id, status, epochs=6)
    config = {"task": task, "arch": "mobilenet_v2", "image_size": 128, "epochs": 6,
              "split_sizes": {"train": 7010, "val": 1432, "test": 1431}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_id


def test_after_the_last_batch_the_monitor_names_the_phase_with_its_progress(env, dead_pid, live_trainer):
    run_id = _finishing_run(env, dead_pid, live_trainer, "predict", {"done": 1024, "total": 2863, "unit": "images"})
    at = open_run(run_page(), run_id)
    bars = [p.proto.text for p in at.get("progress")]
    assert any("now predicting the validation and test splits" in t for t in bars), bars
    assert any(t.endswith("1,024/2,863 images") for t in bars), bars
    assert not any("ETA" in t for t in bars)
    assert "These final steps cannot be stopped" in texts(at)
    assert not [b for b in at.button if "Stop" in b.label]


def test_a_stop_during_validation_says_when_it_lands(env, dead_pid, live_trainer):
    run_id = _finishing_run(env, dead_pid, live_trainer, "validate", {"done": 0, "total": 1432, "unit": "images"})
    at = open_run(run_page(), run_id)
    next(b for b in at.button if "Stop after this epoch" in b.label).click().run()
    assert (env / run_id / "STOP").is_file()
    assert "it stops once that epoch is saved" in texts(at)


def test_metrics_and_curves_carry_their_n(env, dead_pid, live_trainer):
    run_id = _finishing_run(env, dead_pid, live_trainer, "ood", {"done": 1, "total": 4, "unit": "steps"})
    at = open_run(run_page(), run_id)
    assert "scored on the validation split (n = 1,432 images)" in texts(at)
    curves = next(c for c in at.get("plotly_chart") if c.key == "train_curves")
    names = {t["name"] for t in json.loads(curves.proto.spec)["data"]}
    assert names == {"train (n = 7,010)", "validation (n = 1,432)"}


def test_a_failed_run_without_a_completed_epoch_offers_no_resume(env, dead_pid):
    run_id = "20250110-120000-failed-early"
    _write(env / run_id, {"state": "failed", "pid": dead_pid, "started": _iso(-60), "finished": _iso(-50),
                          "message": "AttributeError: boom"})
    at = open_run(run_page(), run_id)
    assert not [b for b in at.button if "Resume" in b.label]
    assert "nothing to resume" in texts(at)


def test_a_segmentation_run_has_its_own_curves_with_both_splits_in_the_legend():
    import pandas as pd

    from ui.train import CURVES, curves_figure

    epochs = pd.DataFrame({"epoch": [1, 2], "loss": [1.2, 0.8], "val_dice": [0.4, 0.7], "val_jaccard": [0.3, 0.5],
                           "val_thresholded_jaccard": [0.0, 0.4]})
    fig = curves_figure(epochs, CURVES["segmentation"], 144, 35)
    assert [t.name for t in fig.data if t.showlegend] == ["train (n = 144)", "validation (n = 35)"]
    assert [a.text for a in fig.layout.annotations][:4] == ["Loss (BCE + 1 − Dice)", "Dice", "Jaccard",
                                                            "Thresholded Jaccard"]
