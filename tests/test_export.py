"""core.serving.export: TFLite round trips on tiny models, int8 calibration on the training split, bad requests."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_tiny_dataset
from tiny_models import build_tiny_model, folder_trained_on, save_model_folder

from core.serving import export

from core.contracts import predictions

from core.dataset import splits
from core.dataset.data import load_dataset
from core.contracts.labels import CLASSES

ROOT = Path(__file__).resolve().parent.parent
WIDE = (24, 32)  # height × width: a non-square input, as the 4:3 models have


@pytest.fixture(scope="module")
def wide_model():
    return build_tiny_model(WIDE, seed=3)


@pytest.fixture(scope="module")
def wide_folder(wide_model, tmp_path_factory):
    return save_model_folder(wide_model, tmp_path_factory.mktemp("export") / "wide", temperature=1.7)


@pytest.fixture(scope="module")
def float_export(wide_folder, wide_model):
    return export.build(wide_folder, quantize="none", parity_n=0, model=wide_model)


def random_pixels(n: int, size=WIDE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *size, 3)).astype(np.float32)


def test_float_round_trip_matches_keras(float_export, wide_model):
    x = random_pixels(20)
    keras_probs = wide_model(x, training=False).numpy()
    tflite_probs = export.TFLiteRunner(float_export.content).predict(x)
    np.testing.assert_allclose(tflite_probs, keras_probs, atol=1e-5)
    assert (tflite_probs.argmax(1) == keras_probs.argmax(1)).all()


def test_card_says_how_to_feed_the_file(float_export):
    card = float_export.card
    assert card["classes"] == list(CLASSES)
    assert card["input"]["shape"] == [1, 24, 32, 3]
    assert (card["input"]["height"], card["input"]["width"]) == WIDE
    assert card["input"]["dtype"] == "float32" and card["input"]["range"] == [0, 255]
    assert card["temperature"] == 1.7
    assert card["source_model"]["split_sha256"] == "0" * 64
    assert card["preprocessing_inside"]["layers"] == ["rescale"]
    assert card["bytes"] == len(float_export.content)
    assert "24" in card["how_to_feed"] and "32" in card["how_to_feed"]


@pytest.mark.parametrize("quantize", ["float16", "dynamic"])
def test_weight_quantised_variants_stay_close(quantize, wide_folder, wide_model):
    result = export.build(wide_folder, quantize=quantize, parity_n=0, model=wide_model)
    x = random_pixels(20, seed=1)
    diff = np.abs(export.TFLiteRunner(result.content).predict(x) - wide_model(x, training=False).numpy())
    assert diff.max() < 0.02
    assert result.card["quantization"] == quantize and result.card["input"]["dtype"] == "float32"


def test_parity_figures():
    reference = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    probs = np.array([[0.6, 0.4], [0.45, 0.55], [0.49, 0.51]])
    result = export.parity(reference, probs)
    assert result["n"] == 3
    assert result["top1_agreement"] == pytest.approx(2 / 3)
    assert result["max_abs_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        export.parity(reference, probs[:2])


def test_balanced_sample_is_seeded_and_spreads_over_classes():
    frame = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(130)],
                          "dx": ["nv"] * 100 + ["mel"] * 20 + ["df"] * 10})
    sample = export.balanced_sample(frame, 30, seed=5)
    assert len(sample) == 30
    assert sample["dx"].value_counts().to_dict() == {"nv": 10, "mel": 10, "df": 10}
    assert sample.equals(export.balanced_sample(frame, 30, seed=5))
    small = export.balanced_sample(frame, 60, seed=5)["dx"].value_counts().to_dict()
    assert small == {"df": 10, "mel": 20, "nv": 30}


# --- the model's own split and int8 calibration on its training images ------------------------------------------

@pytest.fixture
def tiny_data(tmp_path, monkeypatch):
    dataset = write_tiny_dataset(tmp_path / "ham10000", lesions_per_class=8, size=(32, 24))
    monkeypatch.setenv("HAM10000_DIR", str(dataset))
    return dataset


def test_split_of_model_uses_the_folder_file_then_the_dataset_by_hash(tmp_path, tiny_data, wide_model):
    frame = load_dataset(tiny_data)
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    digest = splits.split_hash(folder / splits.SPLIT_FILE)
    _, origin = splits.split_of_model(folder, frame, digest, config={})
    assert origin == str(folder / splits.SPLIT_FILE)
    (folder / splits.SPLIT_FILE).unlink()
    remade, origin = splits.split_of_model(folder, frame, digest, config={"seed": 42})
    assert "hash matches" in origin and len(remade) == len(frame)
    with pytest.raises(ValueError, match="neither"):
        splits.split_of_model(folder, frame, digest, config={"seed": 7})


def test_int8_calibrates_on_the_training_split(tmp_path, tiny_data, wide_model):
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    result = export.build(folder, quantize="int8", representative=14, parity_n=10, model=wide_model)
    calibration = result.card["calibration_images"]
    assert calibration["split"] == "train" and calibration["n"] == 14
    assert calibration["split_source"] == f"{splits.SPLIT_FILE} in the model folder"
    assert result.card["input"]["dtype"] == "float32"
    assert calibration["rounding"]["method"] == "gptq"
    parity = result.card["parity"]
    assert parity["split"] == "val" and parity["n"] == 10
    assert parity["max_abs_diff"] < 0.1


def test_int8_rounds_the_kernels_on_the_calibration_images_unless_asked_not_to(tmp_path, tiny_data, wide_model,
                                                                               monkeypatch):
    from core.serving import int8_rounding
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    seen = []
    real = int8_rounding.round_weights
    monkeypatch.setattr(int8_rounding, "round_weights", lambda model, images, **kw: seen.append(len(images)) or
                        real(model, images, **kw))
    export.build(folder, quantize="int8", representative=14, parity_n=0, model=wide_model)
    assert seen == [14]
    plain = export.build(folder, quantize="int8", representative=14, parity_n=0, model=wide_model, rounding="nearest")
    assert seen == [14] and plain.card["calibration_images"]["rounding"]["method"] == "nearest"


def test_representative_images_come_only_from_training(tmp_path, tiny_data, wide_model, monkeypatch):
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    table = splits.load_splits(folder / splits.SPLIT_FILE)
    decoded = []
    monkeypatch.setattr(export, "decode_images", lambda image_paths, size: decoded.extend(image_paths) or np.zeros(1))
    meta = export.check_request(folder, fmt="tflite", quantize="int8")
    export.representative_sample(folder, meta, n=1000)
    used = {Path(p).stem for p in decoded}
    assert used == set(table.loc[table["split"] == "train", "image_id"])


def test_float_parity_against_saved_validation_predictions(tmp_path, tiny_data, wide_model):
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    result = export.build(folder, quantize="none", parity_n=1000, model=wide_model)
    parity = result.card["parity"]
    assert parity["n"] == len(predictions.read_frame(folder / "predictions_val.csv"))
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-5


def test_parity_without_the_dataset_is_reported_not_invented(float_export, wide_folder, wide_model, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "absent"))
    (wide_folder / "predictions_val.csv").write_text("image_id,dx\n")
    result = export.build(wide_folder, quantize="none", parity_n=10, model=wide_model)
    assert "n" not in result.card["parity"]
    assert "HAM10000" in result.card["parity"]["not_measured"]
    (wide_folder / "predictions_val.csv").unlink()


# --- files on disk and the command line ---------------------------------------------------------------------------

def test_write_puts_the_card_beside_the_file(float_export, tmp_path):
    out, card = export.write(float_export, tmp_path / "out" / "lesions.tflite")
    assert out.read_bytes() == float_export.content
    assert card == tmp_path / "out" / "lesions.json"
    assert json.loads(card.read_text())["sha256"] == float_export.card["sha256"]


def test_saved_export_is_offered_only_for_its_own_model(float_export, wide_folder, tmp_path):
    saved = export.saved_path(wide_folder, "none")
    export.write(float_export, saved)
    assert export.load_saved(wide_folder, "none").content == float_export.content
    assert export.load_saved(wide_folder, "int8") is None
    other = save_model_folder(build_tiny_model(WIDE, seed=9), tmp_path / "other")
    export.write(float_export, export.saved_path(other, "none"))
    assert export.load_saved(other, "none") is None


def test_command_line_writes_file_and_card(wide_folder, tmp_path, capsys):
    out = tmp_path / "cli" / "wide.tflite"
    assert export.main(["--model", str(wide_folder), "--out", str(out), "--parity", "0"]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["quantization"] == "none"
    assert str(out) in capsys.readouterr().out


def test_command_line_int8_reports_the_rounding_on_stderr(tmp_path, tiny_data, wide_model, capsys):
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model)
    out = tmp_path / "int8.tflite"
    argv = ["--model", str(folder), "--quantize", "int8", "--representative", "14", "--parity", "0", "--out", str(out)]
    assert export.main(argv) == 0
    assert "rounding int8 kernels: 2/2 layers (last_conv)" in capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["calibration_images"]["rounding"]["method"] == "gptq"


def bad_request(argv, capsys) -> str:
    """Run the command line, check it refuses with status 2 and one line on stderr, return that line."""
    assert export.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


def test_unknown_format_is_refused(wide_folder, tmp_path, capsys):
    line = bad_request(["--model", str(wide_folder), "--format", "onnx", "--out", str(tmp_path / "x")], capsys)
    assert "unknown format 'onnx'" in line and "tflite" in line
    line = bad_request(["--model", str(wide_folder), "--quantize", "int4", "--out", str(tmp_path / "x")], capsys)
    assert "unknown quantisation 'int4'" in line
    line = bad_request(["--model", str(wide_folder), "--quantize", "int8", "--rounding", "up", "--out",
                        str(tmp_path / "x")], capsys)
    assert "unknown rounding 'up'" in line and "gptq" in line


def test_folder_that_is_not_a_model_is_refused(tmp_path, capsys):
    assert "no such folder" in bad_request(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a model folder" in bad_request(["--model", str(empty), "--out", str(tmp_path / "x")], capsys)
    (empty / "model.keras").write_bytes(b"not a zip")
    (empty / "model.json").write_text(json.dumps({"classes": list(CLASSES), "image_size": 8, "last_conv_layer": "c"}))
    assert "cannot be loaded" in bad_request(["--model", str(empty), "--out", str(tmp_path / "x")], capsys)


def test_int8_without_data_is_refused(wide_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "absent"))
    argv = ["--model", str(wide_folder), "--quantize", "int8", "--out", str(tmp_path / "x.tflite")]
    assert "HAM10000_DIR" in bad_request(argv, capsys)
    assert not (tmp_path / "x.tflite").exists()


def test_int8_with_an_unknown_split_is_refused(tmp_path, tiny_data, wide_model, capsys):
    folder = folder_trained_on(tmp_path / "m", tiny_data, wide_model, save_split=False)
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "split_sha256": "f" * 64}))
    line = bad_request(["--model", str(folder), "--quantize", "int8", "--out", str(tmp_path / "x.tflite")], capsys)
    assert "training split" in line


def test_module_entry_point_refuses_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core", "export", "--model", str(tmp_path), "--out", str(tmp_path / "x")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: --model {tmp_path.name}: not a model folder (it needs model.keras and model.json)"


def test_the_shipped_int8_file_belongs_to_the_shipped_model_and_runs():
    shipped = ROOT / "models" / "default"
    saved = export.load_saved(shipped, "int8")
    assert saved is not None, "models/default/export/model_int8.tflite is missing or was made from another model.keras"
    card = saved.card
    assert card["quantization"] == "int8" and card["calibration_images"]["rounding"]["method"] == "gptq"
    assert card["parity"]["split"] == "test" and card["parity"]["n"] == 1431
    assert card["sha256"] == hashlib.sha256(saved.content).hexdigest()
    runner = export.TFLiteRunner(saved.content)
    probs = runner.predict(random_pixels(2, size=runner.input_size))
    assert probs.shape == (2, len(card["classes"])) and np.allclose(probs.sum(1), 1, atol=0.02)
