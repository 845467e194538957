"""The Evaluate page driven by AppTest on fixture model folders with generated predictions."""

import io
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from conftest import open_page, start_page, write_tiny_dataset
from streamlit.testing.v1 import AppTest

from core.evaluation import metrics
from core.contracts.labels import CLASSES

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "evaluate.py")


def write_predictions(path: Path, image_ids, labels, seed: int, skill: float) -> None:
    """Dirichlet probabilities peaked on the true class; ``skill`` sets how peaked."""
    rng = np.random.default_rng(seed)
    y = np.array([CLASSES.index(d) for d in labels])
    alpha = np.full((len(y), len(CLASSES)), 0.6)
    alpha[np.arange(len(y)), y] += skill
    alpha[:, CLASSES.index("nv")] += 0.8  # a prior towards the majority class, as real models have
    frame = pd.DataFrame(np.vstack([rng.dirichlet(a) for a in alpha]), columns=list(CLASSES))
    frame.insert(0, "dx", list(labels))
    frame.insert(0, "image_id", list(image_ids))
    frame.to_csv(path, index=False, float_format="%.6f")


def write_model_folder(folder: Path, table: pd.DataFrame, seed: int, skill: float, splits=("val", "test")) -> Path:
    """A model folder (model.json + predictions CSVs, no model.keras) over halves of ``table``."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"classes": list(CLASSES), "image_size": 64, "arch": "fixture", "last_conv_layer": "conv",
            "temperature": None, "split_sha256": "fixture-split", "run_id": folder.name}
    (folder / "model.json").write_text(json.dumps(meta))
    halves = {"val": table.iloc[::2], "test": table.iloc[1::2]}
    for i, split in enumerate(splits):
        part = halves[split]
        write_predictions(folder / f"predictions_{split}.csv", part["image_id"], part["dx"], seed + i, skill)
    return folder


def write_fixture_models(root: Path, table: pd.DataFrame) -> dict:
    """The shipped default model and two runs (one with test predictions only); run_b is the newer run."""
    folders = {
        "default": write_model_folder(root / "default", table, seed=0, skill=3.0),
        "run_a": write_model_folder(root / "runs" / "run_a", table, seed=10, skill=1.5),
        "run_b": write_model_folder(root / "runs" / "run_b", table, seed=20, skill=6.0, splits=("test",)),
    }
    an_hour_ago = time.time() - 3600  # written milliseconds apart, the two could share a timestamp
    os.utime(folders["run_a"] / "model.json", (an_hour_ago, an_hour_ago))
    return folders


@pytest.fixture
def models(tmp_path, monkeypatch):
    dataset = write_tiny_dataset(tmp_path / "ham10000", lesions_per_class=10)
    table = pd.read_csv(dataset / "HAM10000_metadata.csv")
    folders = write_fixture_models(tmp_path / "models", table)
    monkeypatch.setenv("HAM10000_DIR", str(dataset))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(folders["default"]))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "models" / "runs"))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    st.cache_data.clear()
    yield folders
    st.cache_data.clear()


run_page = partial(start_page, PAGE, timeout=60)


def markdown_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_no_models_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "none"))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "none_runs"))
    at = run_page()
    assert "No model with saved predictions" in at.warning[0].value
    assert not at.tabs


def test_default_model_test_split_shows_headline_with_split_and_n(models):
    at = run_page()
    assert at.selectbox(key="evaluate_model").value == "default (shipped)"
    assert at.radio(key="evaluate_split").value == "test"
    preds = pd.read_csv(models["default"] / "predictions_test.csv")
    text = markdown_text(at)
    assert f"default (shipped) · test** · n = {len(preds)}" in text
    shown = {m.label: float(m.value) for m in at.metric if m.label == "Balanced accuracy"}
    expected = metrics.balanced_accuracy(
        metrics.encode_labels(preds["dx"], CLASSES), preds[list(CLASSES)].to_numpy().argmax(1), 7)
    assert shown["Balanced accuracy"] == pytest.approx(expected, abs=5e-4)
    assert "95 % CI [" in text


def test_switching_to_validation_changes_every_caption(models):
    at = run_page()
    at.radio(key="evaluate_split").set_value("val").run()
    assert not at.exception
    n_val = len(pd.read_csv(models["default"] / "predictions_val.csv"))
    assert f"default (shipped) · validation** · n = {n_val}" in markdown_text(at)
    assert "test**" not in markdown_text(at)


def test_operating_point_slider_moves_sensitivity(models):
    at = run_page()
    preds = pd.read_csv(models["default"] / "predictions_test.csv")
    y_bin, scores = (preds["dx"] == "mel").to_numpy(), preds["mel"].to_numpy()
    at.slider(key="evaluate_threshold").set_value(0.2).run()
    assert not at.exception
    sens = [float(m.value) for m in at.metric if m.label == "Sensitivity"]
    assert sens[0] == pytest.approx(metrics.operating_point(y_bin, scores, 0.2)["sensitivity"], abs=5e-4)
    assert any(m.label == "mel sensitivity @ 0.20" for m in at.metric)
    at.slider(key="evaluate_target_sensitivity").set_value(0.8).run()
    reached = [m.value for m in at.metric if m.label == "Threshold reaching the target"][0]
    assert float(reached) == pytest.approx(metrics.threshold_for_sensitivity(y_bin, scores, 0.8), abs=1e-4)
    val = pd.read_csv(models["default"] / "predictions_val.csv")
    chosen = metrics.threshold_for_sensitivity((val["dx"] == "mel").to_numpy(), val["mel"].to_numpy(), 0.8)
    markdown = " ".join(m.value for m in at.markdown)
    assert f"Chosen on validation (n = {len(val):,}), read on test:** threshold {chosen:.4f}" in markdown
    applied = metrics.operating_point(y_bin, scores, chosen)
    assert f"test at the validation threshold {chosen:.4f}: TP {applied['tp']}" in " ".join(c.value for c in at.caption)


def test_compare_runs_side_by_side(models):
    at = run_page()
    compare = at.multiselect(key="evaluate_compare")
    assert compare.value == ["default (shipped)", "run_b"]
    compare.set_value(["default (shipped)", "run_a", "run_b"]).run()
    assert not at.exception
    tables = [df.value for df in at.dataframe if "metric" in df.value.columns]
    assert tables and tables[0].columns.tolist() == ["metric", "default (shipped)", "run_b", "run_a"]
    table = tables[0].set_index("metric")
    assert (table.loc["split"] == "test").all()
    assert any("mel" in m for m in table.index)  # the melanoma rows are there, not scrolled off the page
    n = table.loc["n", "default (shipped)"].replace(",", "")
    assert any(f"Small sample: default (shipped) (n = {n})" in w.value for w in at.warning)


def test_compare_says_when_runs_were_scored_on_different_n(models):
    preds = pd.read_csv(models["run_b"] / "predictions_test.csv")
    preds.iloc[:8].to_csv(models["run_b"] / "predictions_test.csv", index=False)
    at = run_page()
    warning = " ".join(w.value for w in at.warning)
    assert "scored on different numbers of images" in warning and "run_b: n = 8" in warning


def test_compare_on_validation_lists_only_runs_with_it(models):
    at = run_page()
    at.radio(key="evaluate_split").set_value("val").run()
    assert at.multiselect(key="evaluate_compare").options == ["default (shipped)", "run_a"]


def test_confusion_cell_lists_its_images(models):
    at = run_page()
    [box for box in at.selectbox if box.label == "True class"][0].set_value("mel").run()
    [box for box in at.selectbox if box.label == "Predicted class"][0].set_value("mel").run()
    preds = pd.read_csv(models["default"] / "predictions_test.csv")
    n = int(((preds["dx"] == "mel") & (preds[list(CLASSES)].idxmax(axis=1) == "mel")).sum())
    assert f"**{n} images** with true class **mel** predicted as **mel**" in markdown_text(at)


def test_subgroups_and_temperature_saving(models):
    at = run_page()
    assert "**By sex**" in markdown_text(at)
    assert at.button(key="evaluate_save_temperature").disabled  # nothing is written without the tick
    assert json.loads((models["default"] / "model.json").read_text())["temperature"] is None
    at.checkbox(key="evaluate_confirm_temperature").check().run()
    assert not at.button(key="evaluate_save_temperature").disabled
    at.button(key="evaluate_save_temperature").click().run()
    assert not at.exception
    saved = json.loads((models["default"] / "model.json").read_text())["temperature"]
    assert saved is not None and saved > 0
    assert any("Saved temperature" in s.value for s in at.success)
    n_val = len(pd.read_csv(models["default"] / "predictions_val.csv"))
    assert json.loads((models["default"] / "model.json").read_text())["temperature_n"] == n_val
    assert any(f"only {n_val} images" in w.value and "will not apply it" in w.value for w in at.warning)


def test_read_only_never_offers_to_write_the_temperature(models, monkeypatch):
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    at = run_page()
    assert not [b for b in at.button if b.key == "evaluate_save_temperature"]
    assert not [c for c in at.checkbox if c.key == "evaluate_confirm_temperature"]
    assert any("read-only demo" in c.value for c in at.caption)
    assert json.loads((models["default"] / "model.json").read_text())["temperature"] is None


def test_metrics_carry_plain_names_and_their_code_names_in_the_help(models):
    at = run_page()
    labels = {m.label for m in at.metric}
    assert {"Positive predictive value", "Negative predictive value"} <= labels and not {"PPV", "NPV"} & labels
    helps = {m.value: m.help for m in at.markdown if m.help}  # each name is shown above its value, with a help
    assert "`ppv`" in helps["Positive predictive value"] and "`npv`" in helps["Negative predictive value"]
    configs = " ".join(frame.proto.columns for frame in at.dataframe)  # column_config, as JSON
    assert "ROC AUC above 80 % sensitivity" in configs and "`auc_sens_80`" in configs
    groups = {g for frame in at.dataframe if "group" in frame.value for g in frame.value["group"]}
    assert "histopathology" in groups and not {"histo", "follow_up"} & groups  # spelled out, as on Explore


def test_broken_predictions_show_an_error(models):
    frame = pd.read_csv(models["default"] / "predictions_test.csv")
    frame.drop(columns=["vasc"]).to_csv(models["default"] / "predictions_test.csv", index=False)
    at = run_page()
    assert "Cannot evaluate default (shipped) · test" in at.error[0].value
    assert "predictions_test.csv recorded ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv']" in at.error[0].value


def test_external_split_without_model_file_explains(models):
    at = run_page()
    at.radio(key="evaluate_split").set_value("external").run()
    assert not at.exception
    assert any("has no `model.keras`" in i.value for i in at.info)


def test_external_result_says_what_overlaps_and_gives_clean_metrics(models, tmp_path):
    from core.evaluation import evaluate
    from core.dataset import leakage
    from core.contracts import predictions
    from core.dataset import uploads
    (models["default"] / "model.keras").write_bytes(b"")  # listed as predictable; nothing is predicted here
    workspace = uploads.Workspace(prefix="ham-evaluate-")  # the session's private folder, as the page makes it
    out = workspace.fresh("result-fixture")
    preds = predictions.read(models["default"] / "predictions_test.csv", CLASSES)
    preds.to_csv(out / evaluate.SPLIT_FILES["external"], index=False)
    report = pd.DataFrame({"image_id": preds["image_id"], "match": "", "split": ""})
    report.loc[:2, ["match", "split"]] = [["image_id", "train"], ["image_id", "train"], ["lesion_id", "val"]]
    report.to_csv(out / evaluate.OVERLAP_FILE, index=False)
    evaluate.external_metrics(preds, CLASSES, report).to_csv(out / evaluate.METRICS_FILE, index=False)
    source = {"model": str(models["default"].resolve()), "images": "imgs", "truth": "truth.csv", "n": len(preds),
              "created": "2026-01-01T00:00:00+00:00", "overlap": leakage.summary(report)}
    (out / evaluate.SOURCE_FILE).write_text(json.dumps(source))
    at = open_page(PAGE, timeout=180)
    at.session_state["evaluate_workspace"] = workspace
    at.run()
    at.radio(key="evaluate_split").set_value("external").run()
    assert not at.exception, at.exception
    warning = " ".join(w.value for w in at.warning)
    assert f"3 of {len(preds)} images were used to train or tune the model: 2 in its training split, 1 in its " \
        "validation split" in warning
    table = [df.value for df in at.dataframe if "images" in df.value.columns][0]
    assert table["images"].tolist() == ["all images", "clean images only"]
    assert table["n"].tolist() == [len(preds), len(preds) - 3]


def test_an_image_shows_what_predict_gives_and_the_download_says_so(models, media):
    from core.contracts import predictions
    from core.serving.calibration import calibrate

    meta = json.loads((models["default"] / "model.json").read_text())
    (models["default"] / "model.json").write_text(json.dumps({**meta, "temperature": 1.7, "temperature_n": 500}))
    saved = predictions.read(models["default"] / "predictions_test.csv", CLASSES)
    served = calibrate(saved[list(CLASSES)].to_numpy(), 1.7)
    at = run_page()
    phrase = "Calibrated with temperature scaling, T = 1.700, fitted on n = 500 validation images."
    assert phrase in markdown_text(at)
    row = saved.iloc[3]
    at.text_input(key="evaluate_find_image").set_value(row["image_id"]).run()
    assert not at.exception, at.exception
    order = np.argsort(-served[3], kind="stable")
    expected = ", ".join(f"{CLASSES[k]} {predictions.percent(served[3, k])}" for k in order)
    assert [t.value for t in at.text] == [f"{row['image_id']} · true {row['dx']} · {expected}"]
    at.text_input(key="evaluate_find_image").set_value("=1+2").run()
    assert "No image =1+2 in the test split" in at.text[0].value
    data = media["predictions_default_test.csv"]
    plain = pd.read_csv(io.BytesIO(data.encode() if isinstance(data, str) else data))  # pandas' defaults
    assert list(plain.columns) == ["image_id", "dx", *CLASSES, "calibration", "temperature", "temperature_n"]
    assert set(plain["calibration"]) == {"calibrated"} and set(plain["temperature_n"]) == {500}
    np.testing.assert_allclose(plain[list(CLASSES)].to_numpy(), served, atol=1e-6)


def test_metadata_tab_without_a_branch_says_so(models):
    at = run_page()
    assert not at.exception
    assert any("no age/sex/site branch" in i.value for i in at.info)


def _write_branch(folder: Path, weight: float) -> None:
    from core.serving import metadata_branch as mb

    weights = np.zeros((len(mb.feature_names()), len(CLASSES)))
    weights[mb.feature_names().index("site back"), CLASSES.index("bkl")] = weight
    mb.write(folder, mb.MetadataBranch(weights, tuple(CLASSES), {
        "fitted_on": {"split": "train", "n_images": 40}, "drop": 0.3, "l2": 0.001,
        "validation": [{"variant": "image only", "n": 35, "balanced_accuracy": 0.5}]}))


def test_metadata_tab_scores_the_same_images_with_and_without(models):
    _write_branch(models["default"], 3.0)
    at = run_page()
    assert not at.exception, at.exception
    side = [d.value for d in at.dataframe if "with age, sex, site" in d.value.columns]
    assert len(side) == 2 and list(side[0].columns) == ["metric", "image alone", "with age, sex, site"]
    assert list(side[1].columns) == ["class", "n", "image alone", "with age, sex, site"]  # sensitivity per class
    table = side[0].set_index("metric")
    assert (table["image alone"] != table["with age, sex, site"]).any()  # the back-site weight moves some scores
    n_test = len(pd.read_csv(models["default"] / "predictions_test.csv"))
    assert f"of {n_test:,} images" in markdown_text(at) and "What the branch learnt" in markdown_text(at)
    assert any(c.key == "evaluate_metadata_weights" for c in at.get("plotly_chart"))
    assert "Fitted on 40 images of the train split" in markdown_text(at)
    assert "associations of that population, not rules." in markdown_text(at)  # the caption is whole


def test_metadata_tab_without_the_dataset_shows_the_recorded_figures(models, monkeypatch, tmp_path):
    _write_branch(models["default"], 3.0)
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "nowhere"))
    at = run_page()
    assert not at.exception, at.exception
    assert any("validation figures recorded when the branch was fitted" in i.value for i in at.info)
    assert any("variant" in d.value.columns and d.value["n"].tolist() == [35] for d in at.dataframe)


def test_metadata_tab_with_a_corrupt_branch_explains(models):
    from core.serving import metadata_branch as mb

    mb.path_in(models["default"]).write_bytes(b"not an npz")
    at = run_page()
    assert not at.exception, at.exception
    assert any("branch cannot be read" in e.value and "unreadable" in e.value for e in at.error)
