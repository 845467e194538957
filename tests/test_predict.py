"""Predictor, calibration, TTA, OOD threshold, the no-disk guarantee and the CLI, on tiny models."""

import builtins
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import build_colour_model, build_tiny_model, red_left_green_right, save_model_folder

from core.contracts import predictions
from core.dataset.images import decode_image
from core.contracts.labels import CLASSES
from core.serving.ood import DEFAULT_MSP_THRESHOLD, fit_msp_threshold
from core.serving.predict import Predictor, available_models, calibrate, main, tta_count, tta_views

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def predictor(model_dir):
    predictor = Predictor(model_dir)
    predictor.warmup()
    return predictor


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(seed: int, shape=(45, 60, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_probabilities_shape_order_and_sum(predictor):
    predictions = predictor.predict_batch([random_image(i) for i in range(3)])
    assert len(predictions) == 3
    for p in predictions:
        assert p.classes == CLASSES and p.probabilities.shape == (7,)
        assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
        assert p.predicted == CLASSES[int(np.argmax(p.probabilities))]
        top = p.top_k(3)
        assert [c for c, _ in top][0] == p.predicted and top[0][1] >= top[1][1] >= top[2][1]
        assert p.malignant == pytest.approx(sum(p.as_dict()[c] for c in ("mel", "bcc", "akiec")))
        assert not p.calibrated


def test_batch_equals_single_predictions(predictor):
    images = [random_image(i) for i in range(4)]
    batch = predictor.predict_batch(images)
    for image, p in zip(images, batch):
        np.testing.assert_allclose(predictor.predict(image).probabilities, p.probabilities, atol=1e-5)


def test_temperature_softens_and_keeps_ranking():
    probs = np.array([[0.7, 0.2, 0.1]])
    soft = calibrate(probs, 2.0)
    assert soft.sum() == pytest.approx(1.0)
    assert soft[0, 0] < 0.7 and soft[0, 2] > 0.1
    assert np.argsort(soft[0]).tolist() == np.argsort(probs[0]).tolist()
    np.testing.assert_allclose(calibrate(probs, 1.0), probs)
    np.testing.assert_allclose(calibrate(probs, None), probs)


def test_predictor_applies_model_temperature(tmp_path):
    model = build_colour_model()
    plain = Predictor(save_model_folder(model, tmp_path / "plain"), model=model)
    warm = Predictor(save_model_folder(model, tmp_path / "warm", temperature=3.0), model=model)
    image = red_left_green_right().astype(np.uint8)
    a, b = plain.predict(image), warm.predict(image)
    np.testing.assert_allclose(a.raw, b.raw, atol=1e-6)
    assert b.calibrated and not a.calibrated
    assert b.probabilities.max() < a.probabilities.max()
    np.testing.assert_allclose(b.probabilities, calibrate(a.raw, 3.0), atol=1e-9)


def test_tta_views_are_the_eight_symmetries():
    batch = np.arange(2 * 3 * 3 * 1, dtype=np.float32).reshape(2, 3, 3, 1).repeat(3, axis=3)
    views = tta_views(batch)
    assert views.shape == (16, 3, 3, 3)
    distinct = {views[v * 2].tobytes() for v in range(8)}
    assert len(distinct) == 8
    np.testing.assert_array_equal(views[:2], batch)


def test_a_4_by_3_input_keeps_its_frame_four_views_and_the_count_says_so():
    batch = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1).repeat(3, axis=3)
    views = tta_views(batch)
    assert views.shape == (8, 3, 4, 3) and len({views[v * 2].tobytes() for v in range(4)}) == 4
    assert tta_count((3, 4)) == 4 and tta_count((3, 3)) == 8 == len(tta_views(np.zeros((1, 3, 3, 3))))


def test_tta_averages_views(predictor):
    image = random_image(5, (32, 32, 3))
    x = image.astype(np.float32)[None]
    by_hand = np.mean([predictor.raw_probabilities(v[None]) for v in tta_views(x)], axis=0)
    np.testing.assert_allclose(predictor.predict(image, tta=True).raw, by_hand[0], atol=1e-5)
    # the tiny random model is not rotation invariant, so TTA must change something
    assert not np.allclose(predictor.predict(image).raw, by_hand[0], atol=1e-6)


def test_ood_threshold_sources(tmp_path):
    model = build_tiny_model()
    default = Predictor(save_model_folder(model, tmp_path / "a"), model=model)
    assert (default.ood.msp_threshold, default.ood.source) == (DEFAULT_MSP_THRESHOLD, "default")
    folder = save_model_folder(model, tmp_path / "b")
    val = np.full((100, 7), 0.05)
    val[:, 0] = np.linspace(0.4, 0.7, 100)
    val = val / val.sum(axis=1, keepdims=True)
    table = predictions.make_table([f"x{i}" for i in range(100)], val, CLASSES, truth=["nv"] * 100)
    predictions.write(folder / "predictions_val.csv", table, predictions.RAW)
    from_val = Predictor(folder, model=model)
    assert from_val.ood.source == "validation predictions"
    assert from_val.ood.msp_threshold == pytest.approx(np.percentile(val.max(axis=1), 5), abs=1e-6)
    entry = fit_msp_threshold(val, percentile=1)
    fitted = Predictor(save_model_folder(model, tmp_path / "c", extra={"ood": entry}), model=model)
    assert fitted.ood.source == "metadata" and fitted.ood.msp_threshold == pytest.approx(entry["threshold"])
    low = fitted.predict(random_image(1))
    assert low.ood.flagged == (low.raw.max() < entry["threshold"])
    assert low.ood.score == pytest.approx(1 - low.raw.max())


def test_temperature_fitted_on_few_images_is_not_applied(tmp_path):
    model = build_colour_model()
    few = Predictor(save_model_folder(model, tmp_path / "few", temperature=0.069, extra={"temperature_n": 12}),
                    model=model)
    assert few.temperature is None and few.calibration["stored"] == 0.069
    assert "fitted on 12 images" in few.calibration["text"] and "not applied" in few.calibration["text"]
    assert not few.predict(red_left_green_right().astype(np.uint8)).calibrated
    enough = Predictor(save_model_folder(model, tmp_path / "ok", temperature=2.0, extra={"temperature_n": 1432}),
                       model=model)
    assert enough.temperature == 2.0 and "n = 1,432 validation images" in enough.calibration["text"]


class _NoDiskWrites:
    """Make every way of creating a file fail while active."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def __enter__(self):
        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file, mode="r", *args, **kwargs):
            if any(flag in mode for flag in "wax+"):
                raise AssertionError(f"write to {file!r}")
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise AssertionError(f"write to {path!r}")
            return real_os_open(path, flags, *args, **kwargs)

        def refuse(*args, **kwargs):
            raise AssertionError("temporary file created")

        for target, name, value in [
            (builtins, "open", guarded_open),
            (io, "open", guarded_open),
            (os, "open", guarded_os_open),
            (tempfile, "mkstemp", refuse),
            (tempfile, "mkdtemp", refuse),
            (tempfile, "NamedTemporaryFile", refuse),
            (tempfile, "TemporaryFile", refuse),
            (tempfile, "SpooledTemporaryFile", refuse),
        ]:
            self.monkeypatch.setattr(target, name, value)
        return self

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def _listing(folder: Path) -> set:
    return {str(p) for p in folder.rglob("*")}


def test_upload_is_decoded_and_predicted_without_touching_disk(predictor, monkeypatch, tmp_path):
    upload = png_bytes(random_image(7, (120, 160, 3)))
    # A temporary folder of this test's own: other processes (a second test run) write to the shared /tmp.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    with _NoDiskWrites(monkeypatch):
        with pytest.raises(AssertionError):  # the guard itself works
            Image.new("RGB", (2, 2)).save(tmp_path / "probe.png")
        prediction = predictor.predict(decode_image(upload), tta=True)
    assert prediction.probabilities.sum() == pytest.approx(1.0)
    assert _listing(private_tmp) == set()
    assert not (tmp_path / "probe.png").exists()


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "inputs"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(random_image(1)).save(root / "ISIC_0000001.jpg")
    Image.fromarray(random_image(2)).save(root / "nested" / "ISIC_0000002.png")
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    single = tmp_path / "ISIC_0000003.bmp"
    Image.fromarray(random_image(3)).save(single)
    return root, single


def test_cli_writes_one_row_per_readable_image(model_dir, image_tree, tmp_path, capsys):
    root, single = image_tree
    out = tmp_path / "out" / "preds.csv"
    assert main(["--model", str(model_dir), "--out", str(out), "--tta", str(root), str(single)]) == 0
    assert predictions.read_info(out)["probabilities"] == "raw"  # the tiny model has no temperature
    table = predictions.read(out, CLASSES, truth=False)
    assert list(table.columns) == ["image_id", "dx_pred", "ood_flag", "ood_score", *CLASSES]
    assert sorted(table["image_id"]) == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
    np.testing.assert_allclose(table[list(CLASSES)].sum(axis=1), 1.0, atol=1e-4)
    assert (table["dx_pred"] == table[list(CLASSES)].idxmax(axis=1)).all()
    assert set(table["ood_flag"]) <= {0, 1} and (table["ood_score"] >= 0).all()
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.jpg" in err
    assert "broken" not in out.read_text()


def test_cli_reports_unreadable_files_and_fails_only_when_nothing_read(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    assert main(["--model", str(model_dir), "--out", str(tmp_path / "p.csv"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"skipped {bad}" in err and "not an image" in err


def test_cli_runs_as_module(model_dir, image_tree, tmp_path):
    root, _ = image_tree
    out = tmp_path / "m.csv"
    result = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--model", str(model_dir), "--out", str(out), str(root)],
        capture_output=True, text=True, timeout=150, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(predictions.read(out, CLASSES, truth=False)) == 2
    assert "broken.jpg" in result.stderr


def test_available_models_default_first_then_runs_newest_first(tmp_path, monkeypatch):
    model = build_tiny_model()
    default = save_model_folder(model, tmp_path / "default")
    old = save_model_folder(model, tmp_path / "runs" / "old")
    new = save_model_folder(model, tmp_path / "runs" / "new")
    (tmp_path / "runs" / "unfinished").mkdir()
    os.utime(old / "model.keras", (1_000_000, 1_000_000))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(default))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    assert available_models() == [default, new, old]
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "absent"))
    assert available_models() == [new, old]
