"""The segmentation parts of the Predict and Evaluate pages, driven by AppTest with a tiny U-Net."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from conftest import start_page, write_tiny_dataset
from streamlit.testing.v1 import AppTest
from test_page_evaluate import write_fixture_models
from test_page_predict import png, texts
from tiny_models import build_tiny_model, save_model_folder
from tiny_segmenter import save_tiny_segmenter, write_scores

TIMEOUT = 300

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def page_model(tmp_path_factory):
    return save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("segment_page") / "default")


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmenters")
    return {"all": save_tiny_segmenter(root / "all", threshold=0.0),
            "none": save_tiny_segmenter(root / "none", threshold=1.5)}


def upload(at: AppTest) -> AppTest:
    """Upload the test image; past the OOD gate (the untrained tiny model may find it unusual) when it shows."""
    at.file_uploader[0].set_value(("lesion.png", png(), "image/png")).run()
    assert not at.exception, at.exception
    gate = [t.key for t in at.toggle if t.key and t.key.startswith("predict_show_anyway")]
    if gate:
        at.toggle(key=gate[0]).set_value(True).run()
        assert not at.exception, at.exception
    return at


start = partial(start_page, timeout=TIMEOUT)


def test_predict_shows_the_outline_measurements_and_saliency_inside_the_lesion(monkeypatch, predict_env, segmenters):
    monkeypatch.setenv("HAM_SEGMENTER", str(segmenters["all"]))
    at = upload(start("predict.py"))
    captions = [str(image.captions) for image in at.get("image")]
    assert any("predicted in yellow" in c for c in captions)
    table = next(t.value for t in at.table if t.value.index.name == "measurement")
    assert list(table.index) == ["Area share", "Asymmetry (major / minor axis)", "Border compactness", "Colours"]
    assert table.loc["Area share", "value"] == "100.0%"  # threshold 0: every pixel is lesion
    page = texts(at)
    assert "ABCD rule" in page and "Not a medical device" in page
    assert "of the map's mass lies inside the predicted lesion" in page
    assert any("Original · white line: predicted lesion border" in c for c in captions)  # over the maps too
    at.toggle(key="predict_segment_outline").set_value(False).run()
    assert not at.exception, at.exception
    captions = [str(image.captions) for image in at.get("image")]
    assert any("Lesion outline hidden" in c for c in captions)
    assert not any("white line" in c for c in captions)  # hidden there, hidden on the maps


def test_predict_says_when_no_lesion_is_found(monkeypatch, predict_env, segmenters):
    monkeypatch.setenv("HAM_SEGMENTER", str(segmenters["none"]))
    at = upload(start("predict.py"))
    assert any("found no lesion" in w.value for w in at.warning)
    assert "inside the predicted lesion" not in texts(at)


def test_predict_without_a_segmenter_explains_and_keeps_working(predict_env):
    at = upload(start("predict.py"))
    assert any("No lesion segmenter is installed" in i.value for i in at.info)
    assert len(at.get("image")) == 4  # the saliency section is unchanged: original, two maps, legend


@pytest.fixture
def evaluate_env(tmp_path, monkeypatch, segmenters):
    dataset = write_tiny_dataset(tmp_path / "ham10000", lesions_per_class=3)
    table = pd.read_csv(dataset / "HAM10000_metadata.csv")
    models = write_fixture_models(tmp_path / "models", table)
    folder = tmp_path / "segmenter"
    folder.mkdir()
    for name in ("model.keras", "model.json"):
        (folder / name).write_bytes((segmenters["all"] / name).read_bytes())
    dice = np.linspace(0.3, 0.98, len(table))
    write_scores(folder, "test", table["image_id"], table["dx"], dice)
    write_scores(folder, "val", table["image_id"][:5], table["dx"][:5], dice[:5])
    for key, value in (("HAM10000_DIR", dataset), ("HAM_DEFAULT_MODEL", models["default"]),
                       ("HAM_RUNS_DIR", tmp_path / "models" / "runs"), ("HAM_SEGMENTER", folder)):
        monkeypatch.setenv(key, str(value))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield table, dice
    st.cache_data.clear()
    st.cache_resource.clear()


def test_evaluate_segmentation_tab_tables_histogram_and_worst_cases(evaluate_env):
    table, dice = evaluate_env
    at = start("evaluate.py")
    assert at.radio(key="evaluate_segmentation_split").value == "test"
    assert f"n = {len(table)} images" in texts(at)
    summary = next(df.value for df in at.dataframe if "mean [95 % CI]" in df.value.columns)
    assert summary.loc[0, "metric"] == "Dice" and summary.loc[0, "mean [95 % CI]"].startswith(f"{dice.mean():.3f} [")
    per_class = next(df.value for df in at.dataframe if "dice_low" in df.value.columns)
    assert sorted(per_class["dx"]) == sorted(table["dx"].unique()) and per_class["n"].sum() == len(table)
    assert any(chart.proto.spec and "Dice per image" in chart.proto.spec for chart in at.get("plotly_chart"))
    at.slider(key="evaluate_segmentation_n_worst").set_value(3).run()
    at.toggle(key="evaluate_segmentation_worst").set_value(True).run()
    assert not at.exception, at.exception
    worst = table["image_id"][np.argsort(dice)[:3]]
    page = texts(at)
    assert all(f"`{image_id}`" in page for image_id in worst)
    captions = [str(image.captions) for image in at.get("image")]
    assert sum("Predicted mask" in c for c in captions) == 3 and sum("Dataset mask" in c for c in captions) == 3


def test_evaluate_segmentation_tab_on_validation(evaluate_env):
    at = start("evaluate.py")
    at.radio(key="evaluate_segmentation_split").set_value("val").run()
    assert not at.exception, at.exception
    assert "validation** · n = 5 images" in texts(at)
