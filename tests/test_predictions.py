"""The predictions-file contract: columns, calibration columns, round trip, older files, the one CSV writer."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.contracts import predictions
from core.contracts.labels import CLASSES

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def probs(n: int, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, len(CLASSES)))
    return raw / raw.sum(axis=1, keepdims=True)


def test_round_trip_keeps_every_column_and_says_what_the_probabilities_are(tmp_path):
    p = probs(5)
    table = predictions.make_table([f"img{i}" for i in range(5)], p, CLASSES, truth=["nv", "mel", "bcc", "nv", "df"],
                                   ood_scores=[0.2, 3.1, 0.9, 1.0, 0.1], ood_flags=[False, True, False, False, False])
    path = tmp_path / "p.csv"
    predictions.write(path, table, predictions.CALIBRATED, temperature=1.3834, n=1432)
    plain = pd.read_csv(path)  # pandas' defaults, as a user would read it
    assert list(plain.columns) == ["image_id", "dx", "dx_pred", "ood_flag", "ood_score", *CLASSES,
                                   "calibration", "temperature", "temperature_n"]
    assert set(plain["calibration"]) == {"calibrated"} and set(plain["temperature_n"]) == {1432}
    np.testing.assert_allclose(plain["temperature"], 1.3834)
    assert predictions.read_info(path) == {"probabilities": "calibrated", "temperature": 1.3834, "n": 1432}
    back = predictions.read(path, CLASSES)
    assert list(back.columns) == ["image_id", "dx", "dx_pred", "ood_flag", "ood_score", *CLASSES]
    assert list(back["dx"]) == ["nv", "mel", "bcc", "nv", "df"]
    assert list(back["dx_pred"]) == [CLASSES[i] for i in p.argmax(axis=1)]
    assert list(back["ood_flag"]) == [0, 1, 0, 0, 0]
    np.testing.assert_allclose(back["ood_score"], [0.2, 3.1, 0.9, 1.0, 0.1])
    np.testing.assert_allclose(back[list(CLASSES)].to_numpy(), p, atol=1e-6)


def test_prediction_without_truth_never_writes_dx(tmp_path):
    table = predictions.make_table(["a", "b"], probs(2), CLASSES, ood_scores=[0.5, 2.0], ood_flags=[False, True])
    assert "dx" not in table.columns and list(table.columns[:4]) == ["image_id", "dx_pred", "ood_flag", "ood_score"]
    path = tmp_path / "p.csv"
    predictions.write(path, table, predictions.RAW)
    assert predictions.read_info(path)["probabilities"] == "raw"
    with pytest.raises(predictions.PredictionsError, match=r"missing \['dx'\]"):
        predictions.read(path, CLASSES)
    assert list(predictions.read(path, CLASSES, truth=False)["dx_pred"]) == list(table["dx_pred"])


def test_files_with_the_older_comment_line_still_read(tmp_path):
    table = predictions.make_table(["a", "b"], probs(2), CLASSES, truth=["nv", "mel"])
    path = tmp_path / "old.csv"
    path.write_text("# probabilities: calibrated, temperature 1.4394\n" + table.to_csv(index=False))
    assert predictions.read_info(path) == {"probabilities": "calibrated", "temperature": 1.4394, "n": None}
    assert list(predictions.read(path, CLASSES)["image_id"]) == ["a", "b"]


def test_older_files_without_header_or_optional_columns_still_read(tmp_path):
    old = pd.DataFrame(probs(3), columns=CLASSES)
    old.insert(0, "dx", ["nv", "mel", "nv"])
    old.insert(0, "image_id", ["x1", "x2", "x3"])
    path = tmp_path / "old.csv"
    old.to_csv(path, index=False)
    assert predictions.read_info(path)["probabilities"] == "unknown"
    back = predictions.read(path, CLASSES)
    assert list(back.columns) == ["image_id", "dx", *CLASSES] and len(back) == 3


@pytest.mark.skipif(not (DEFAULT_MODEL / "predictions_test.csv").is_file(), reason="no shipped model predictions")
def test_the_shipped_model_predictions_read():
    import json

    classes = json.loads((DEFAULT_MODEL / "model.json").read_text())["classes"]
    for split in ("val", "test"):
        table = predictions.read(DEFAULT_MODEL / predictions.FILES[split], classes)
        assert len(table) > 1000 and set(table["dx"]) <= set(classes)


def test_unknown_columns_and_bad_probabilities_are_refused(tmp_path):
    table = predictions.make_table(["a"], probs(1), CLASSES, truth=["nv"])
    with pytest.raises(predictions.PredictionsError, match="unexpected"):
        predictions.validate(table.assign(extra=1), CLASSES)
    with pytest.raises(predictions.PredictionsError, match="sum to 1"):
        predictions.validate(table.assign(nv=table["nv"] + 0.5), CLASSES)
    with pytest.raises(ValueError, match="raw"):
        predictions.to_csv(table, "smoothed")
    with pytest.raises(ValueError, match="temperature"):
        predictions.to_csv(table, predictions.CALIBRATED)


HOSTILE = ["=1+2", "=cmd|' /C calc'!A0", "@SUM(1+1)", "+1", "-2+3", "\tx", "\rx", "plain", "'quoted"]


def hostile_table() -> pd.DataFrame:
    n = len(HOSTILE)
    table = predictions.make_table(HOSTILE, probs(n), CLASSES, ood_scores=np.linspace(-1.5, 2, n),
                                   ood_flags=[False] * n)
    return table


def test_cells_a_spreadsheet_would_run_are_neutralised_and_numbers_stay_numbers(tmp_path):
    path = tmp_path / "p.csv"
    predictions.write(path, hostile_table(), predictions.RAW)
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))  # the csv module's defaults
    header, body = rows[0], rows[1:]
    ids = [r[header.index("image_id")] for r in body]
    assert ids == ["'=1+2", "'=cmd|' /C calc'!A0", "'@SUM(1+1)", "'+1", "'-2+3", "'\tx", "'\rx", "plain", "'quoted"]
    for r in body:
        for name in ("ood_score", *CLASSES):
            float(r[header.index(name)])  # a number, never quoted
    scores = [r[header.index("ood_score")] for r in body]
    assert scores[0] == "-1.500000" and not any(c.startswith("'") for c in scores)
    # the project's own reader gives the ids back as they were
    back = predictions.read(path, CLASSES, truth=False)
    assert list(back["image_id"]) == HOSTILE
    np.testing.assert_allclose(back["ood_score"], np.linspace(-1.5, 2, len(HOSTILE)), atol=1e-6)


def test_the_one_writer_keeps_negative_numbers_and_neutralises_text_and_names():
    frame = pd.DataFrame({"name": ["-x", "ok"], "value": [-0.25, 3.0], "count": [-3, 4], "flag": [True, False]})
    text = predictions.csv_text(frame.rename(columns={"name": "=name"}))
    rows = list(csv.reader(text.splitlines()))
    assert rows == [["'=name", "value", "count", "flag"], ["'-x", "-0.25", "-3", "True"], ["ok", "3.0", "4", "False"]]
    indexed = predictions.csv_text(frame.set_index("name"), index=True)
    assert indexed.splitlines()[1].startswith("'-x,-0.25")


def test_every_shipped_predictions_file_is_a_plain_csv():
    folders = [p for p in (DEFAULT_MODEL.parent / "default", DEFAULT_MODEL.parent / "v1") if p.is_dir()]
    files = [f / predictions.FILES[s] for f in folders for s in ("val", "test") if (f / predictions.FILES[s]).is_file()]
    if not files:
        pytest.skip("no shipped predictions files in this checkout")
    for path in files:
        plain = pd.read_csv(path)
        assert list(plain.columns[:3]) == ["image_id", "dx", "dx_pred"] and len(plain) > 1000
        assert set(plain["calibration"]) == {"raw"} and plain["temperature"].isna().all()
        np.testing.assert_allclose(plain[list(CLASSES)].sum(axis=1), 1, atol=predictions.SUM_TOLERANCE)
        with open(path, newline="", encoding="utf-8") as handle:
            assert next(csv.reader(handle))[0] == "image_id"
