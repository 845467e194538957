"""The predictions-file contract: columns, header line, round trip, older files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import predictions
from core.labels import CLASSES

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"


def probs(n: int, seed: int = 0) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, len(CLASSES)))
    return raw / raw.sum(axis=1, keepdims=True)


def test_round_trip_keeps_every_column_and_says_what_the_probabilities_are(tmp_path):
    p = probs(5)
    table = predictions.make_table([f"img{i}" for i in range(5)], p, CLASSES, truth=["nv", "mel", "bcc", "nv", "df"],
                                   ood_scores=[0.2, 3.1, 0.9, 1.0, 0.1], ood_flags=[False, True, False, False, False])
    path = tmp_path / "p.csv"
    predictions.write(path, table, predictions.CALIBRATED, temperature=1.3834)
    assert path.read_text().splitlines()[0] == "# probabilities: calibrated, temperature 1.3834"
    assert predictions.read_info(path)["probabilities"] == "calibrated"
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
        predictions.header("smoothed")
