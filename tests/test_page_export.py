"""The Evaluate page's TFLite download, driven by AppTest on a tiny model folder."""

from functools import partial
from pathlib import Path

import pytest
from conftest import start_page, write_tiny_dataset
from streamlit.testing.v1 import AppTest
from tiny_models import build_tiny_model, folder_trained_on

from core.serving import export
PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "evaluate.py")
CONVERT = "evaluate_export_convert"


@pytest.fixture
def model_folder(tmp_path, monkeypatch, clear_streamlit_caches):
    dataset = write_tiny_dataset(tmp_path / "ham10000", lesions_per_class=8, size=(32, 24))
    folder = folder_trained_on(tmp_path / "default", dataset, build_tiny_model((24, 32), seed=3))
    monkeypatch.setenv("HAM10000_DIR", str(dataset))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(folder))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    return folder


run_page = partial(start_page, PAGE, timeout=180)


def parity_row(at: AppTest) -> dict:
    """The export's parity table (figure → value)."""
    tables = [d.value for d in at.dataframe if list(d.value.columns) == ["figure", "value"]]
    assert len(tables) == 1
    return dict(zip(tables[0]["figure"], tables[0]["value"]))


def downloads(at: AppTest) -> dict:
    return {d.proto.label: d for d in at.get("download_button")}


def test_convert_then_download_with_parity_on_validation(model_folder):
    at = run_page()
    assert "Download the model (.tflite)" not in downloads(at)
    at.button(key=CONVERT).click().run()
    assert not at.exception, at.exception
    assert {"Download the model (.tflite)", "Download its card (.json)"} <= set(downloads(at))
    assert not _has_button(at, CONVERT)
    row = parity_row(at)
    assert row["top-1 agreement with Keras"] == "100.0%"
    assert row["input (h × w)"] == "24 × 32"
    assert row["split"] == "validation" and int(row["n"]) > 0
    captions = " ".join(c.value for c in at.caption)
    assert "predictions_val.csv" in captions
    at.run()  # a rerun keeps the converted file on offer without a second click
    assert "Download the model (.tflite)" in downloads(at)


def test_saved_export_is_offered_with_its_own_figures(model_folder):
    result = export.build(model_folder, quantize="none", parity_n=0)
    result.card["parity"] = {"n": 1431, "split": "test", "top1_agreement": 1.0, "max_abs_diff": 3e-6,
                             "reference": "the Keras model on the same inputs"}
    export.write(result, export.saved_path(model_folder, "none"))
    at = run_page()
    assert not _has_button(at, CONVERT)
    assert "Download the model (.tflite)" in downloads(at)
    row = parity_row(at)
    assert row["split"] == "test" and row["n"] == "1,431"


def test_saved_int8_export_says_how_it_was_calibrated_and_rounded(model_folder):
    result = export.build(model_folder, quantize="int8", representative=14, parity_n=0)
    result.card["parity"] = {"n": 1431, "split": "test", "top1_agreement": 0.97, "max_abs_diff": 0.2}
    export.write(result, export.saved_path(model_folder, "int8"))
    at = run_page()
    at.radio(key="evaluate_export_quantize").set_value("int8").run()
    assert not at.exception, at.exception
    assert not _has_button(at, CONVERT) and "Download the model (.tflite)" in downloads(at)
    captions = " ".join(c.value for c in at.caption)
    assert "Calibrated on 14 images of the model's training split; kernels rounded to keep each layer's" in captions
    assert parity_row(at)["top-1 agreement with Keras"] == "97.0%"


def test_int8_converted_on_the_page_is_offered_and_its_progress_bar_is_gone(model_folder):
    at = run_page()
    at.radio(key="evaluate_export_quantize").set_value("int8").run()
    at.button(key=CONVERT).click().run()
    assert not at.exception, at.exception
    assert "Download the model (.tflite)" in downloads(at)
    assert parity_row(at)["quantisation"] == "full int8 (calibrated on training images)"
    assert not at.get("progress")


def test_int8_without_the_dataset_says_why(model_folder, monkeypatch, tmp_path):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "absent"))
    at = run_page()
    at.radio(key="evaluate_export_quantize").set_value("int8").run()
    at.button(key=CONVERT).click().run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "Cannot export: int8 calibration needs the HAM10000 images" in errors
    assert "Download the model (.tflite)" not in downloads(at)
    at.run()
    assert _has_button(at, CONVERT)  # the user can try again once the dataset is there


def _has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)
