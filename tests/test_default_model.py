"""The shipped model: complete, small, usable with no dataset present, and opened by default."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import open_page
from PIL import Image

from core.serving import calibration, modelio

from core.contracts import predictions
from core.contracts.labels import CLASSES

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT = PROJECT / "models" / "default"

pytestmark = pytest.mark.skipif(not modelio.is_model_dir(DEFAULT), reason="no shipped model under models/default")


def test_the_folder_has_everything_serving_and_evaluation_need():
    meta = modelio.read_metadata(DEFAULT)
    assert meta["classes"] == list(CLASSES) and meta["temperature"] > 0
    assert meta["ood"]["method"] == "feature_statistics" and (DEFAULT / "ood.npz").is_file()
    assert meta["temperature_n"] >= 1000 and modelio.input_size(meta) == (144, 192)
    from core.dataset import splits
    assert splits.split_hash(DEFAULT / splits.SPLIT_FILE) == meta["split_sha256"]
    for split in ("val", "test"):
        path = DEFAULT / predictions.FILES[split]
        preds = predictions.read_frame(path)
        required = [c for c in preds.columns if c not in predictions.OPTIONAL]
        assert required == ["image_id", "dx", *CLASSES] and len(preds) > 1000
        assert predictions.read_info(path)["probabilities"] == predictions.RAW
    assert (DEFAULT / "MODEL_CARD.md").is_file()
    size = sum(p.stat().st_size for p in DEFAULT.iterdir())
    assert size <= 40 * 2**20


@pytest.mark.timeout(180)
def test_cli_predicts_with_no_dataset_present(tmp_path):
    image = np.zeros((150, 200, 3), np.uint8)
    image[...] = (200, 150, 130)
    image[50:100, 70:130] = (90, 50, 40)
    Image.fromarray(image).save(tmp_path / "lesion_like.jpg")
    env = {**os.environ, "HAM10000_DIR": str(tmp_path / "no_dataset_here"), "PYTHONPATH": str(PROJECT)}
    out = tmp_path / "out.csv"
    cmd = [sys.executable, "-m", "core", "predict", "--model", str(DEFAULT), "--out", str(out), str(tmp_path / "lesion_like.jpg")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(out)  # a plain CSV: pandas' defaults read it
    assert list(table.columns) == ["image_id", "dx_pred", "ood_flag", "ood_score", *CLASSES, *predictions.PROVENANCE]
    meta = json.loads((DEFAULT / "model.json").read_text())
    assert table.loc[0, "calibration"] == "calibrated" and table.loc[0, "temperature_n"] == meta["temperature_n"]
    assert table.loc[0, "temperature"] == pytest.approx(meta["temperature"], abs=1e-6)
    status = calibration.temperature_status(meta, DEFAULT)
    assert status["text"] in done.stdout  # the same words, and T printed as the pages print it
    assert table.loc[0, "image_id"] == "lesion_like" and table.loc[0, "dx_pred"] in CLASSES
    assert np.isclose(table[list(CLASSES)].sum(axis=1), 1, atol=1e-4).all()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page", ["evaluate.py", "predict.py"])
def test_pages_open_the_shipped_model_by_default(page, monkeypatch, tmp_path):
    monkeypatch.delenv("HAM_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    at = open_page(page, timeout=120).run()
    assert not at.exception
    labels = " ".join(str(s.value) for s in at.selectbox)
    assert "default" in labels.lower()
    text = json.dumps([m.value for m in at.markdown] + [c.value for c in at.caption])
    assert "not a medical device" in text.lower()
