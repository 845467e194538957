"""Every CSV the project writes is a plain CSV: pandas' and the csv module's defaults read it, no comment line,
cells a spreadsheet would run as formulas neutralised, numbers left as numbers (one writer, core.contracts.predictions)."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny_models import build_tiny_model, save_model_folder

from core.evaluation import evaluate

from core.explaining import explain

from core.contracts import predictions
from core.serving import predict as predict_cli
from core.contracts.labels import CLASSES

pytestmark = pytest.mark.timeout(300)

# File names a visitor controls; "/" cannot be in a file name, so the pipe payload is tested in test_predictions.
HOSTILE = {"=1+2": "'=1+2", "@SUM(1+1)": "'@SUM(1+1)", "-2+3": "'-2+3", "+1": "'+1", "plain": "plain"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("csv_files") / "model", temperature=1.5)


@pytest.fixture
def hostile_images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, name in enumerate(HOSTILE):
        pixels = np.random.default_rng(seed).integers(0, 256, (45, 60, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return folder


def read_plain(path: Path, numeric=()) -> pd.DataFrame:
    """The file read with pandas' and the csv module's defaults, checked to agree; numeric columns are numbers."""
    frame = pd.read_csv(path)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert not rows[0][0].startswith("#"), f"{path.name} starts with a comment line"
    assert rows[0] == list(frame.columns) and len(rows) == len(frame) + 1
    assert {len(r) for r in rows} == {len(rows[0])}
    for column in numeric:
        assert pd.api.types.is_numeric_dtype(frame[column]), f"{path.name}: {column} is not numeric"
    return frame


def test_core_predict_writes_a_plain_csv_with_its_calibration_and_neutralised_names(model_dir, hostile_images,
                                                                                  tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert predict_cli.main(["--model", str(model_dir), "--out", str(out), str(hostile_images)]) == 0
    frame = read_plain(out, numeric=("ood_flag", "ood_score", *CLASSES, "temperature", "temperature_n"))
    assert sorted(frame["image_id"]) == sorted(HOSTILE.values())
    assert set(frame["calibration"]) == {"calibrated"} and set(frame["temperature"]) == {1.5}
    assert "T = 1.500" in capsys.readouterr().out
    back = predictions.read(out, CLASSES, truth=False)  # the project's reader gives the names back
    assert sorted(back["image_id"]) == sorted(HOSTILE)


def test_core_evaluate_writes_every_output_as_a_plain_csv(model_dir, hostile_images, tmp_path):
    truth = tmp_path / "truth.csv"
    pd.DataFrame({"image_id": list(HOSTILE), "dx": ["mel", "nv", "bcc", "nv", "bkl"]}).to_csv(truth, index=False)
    written = evaluate.evaluate_external(model_dir, hostile_images, truth, out_dir=tmp_path / "out")
    preds = read_plain(written["predictions"], numeric=("ood_score", *CLASSES))
    assert sorted(preds["image_id"]) == sorted(HOSTILE.values()) and set(preds["calibration"]) == {"raw"}
    table = read_plain(written["truth"])
    assert sorted(table["image_id"]) == sorted(HOSTILE.values())
    metrics = read_plain(written["metrics"], numeric=("n", "value"))
    assert set(metrics["split"]) == {"external"}
    submission = read_plain(written["submission"], numeric=evaluate.ISIC_ORDER)
    assert sorted(submission["image"]) == sorted(HOSTILE.values())
    np.testing.assert_allclose(submission[list(evaluate.ISIC_ORDER)].sum(axis=1), 1, atol=1e-4)


def test_core_explain_writes_a_plain_csv(model_dir, hostile_images, tmp_path):
    out = tmp_path / "maps"
    assert explain.main(["--model", str(model_dir), "--out", str(out), str(hostile_images)]) == 0
    frame = read_plain(out / "explain.csv")
    assert sorted(frame["image_id"]) == sorted(HOSTILE.values())


def test_core_segment_writes_a_plain_measurements_csv(hostile_images, tmp_path):
    from tiny_segmenter import save_tiny_segmenter

    from core.serving import segment
    folder = save_tiny_segmenter(tmp_path / "segmenter", threshold=0.0)  # every pixel lesion: measurements exist
    assert segment.main(["--model", str(folder), "--out", str(tmp_path / "out"), str(hostile_images)]) == 0
    frame = read_plain(tmp_path / "out" / segment.MEASUREMENTS_FILE, numeric=("area_share",))
    assert sorted(frame["image_id"]) == sorted(HOSTILE.values())


def test_the_explore_download_neutralises_ids_and_keeps_ages(tmp_path):
    from ui.explore import table_csv

    rows = pd.DataFrame({"lesion_id": ["=HYPERLINK(\"http://x\")", "HAM_1"], "image_id": ["@a", "ISIC_1"],
                         "dx": ["nv", "mel"], "dx_type": ["histo", "histo"], "age": [-1.0, 45.0],
                         "sex": ["male", "female"], "localization": ["back", "-face"], "path": ["/p", "/q"]})
    path = tmp_path / "explore.csv"
    path.write_bytes(table_csv(rows))
    frame = read_plain(path, numeric=("age",))
    assert list(frame["lesion_id"]) == ["'=HYPERLINK(\"http://x\")", "HAM_1"]
    assert list(frame["image_id"]) == ["'@a", "ISIC_1"] and list(frame["localization"]) == ["back", "'-face"]
    assert list(frame["age"]) == [-1.0, 45.0] and "path" not in frame.columns
