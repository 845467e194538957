"""Predictions CSV validation, model listing, exports and the external-test-set CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.evaluation import evaluate
from core.contracts.labels import CLASSES

PROJECT = Path(__file__).resolve().parent.parent


def fake_predictions(n=70, seed=0, classes=CLASSES) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(classes)
    alpha = np.ones((n, len(classes)))
    alpha[np.arange(n), y] += 5
    probs = np.vstack([rng.dirichlet(a) for a in alpha])
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "dx", [classes[k] for k in y])
    frame.insert(0, "image_id", [f"ISIC_{i:07d}" for i in range(n)])
    return frame


def write_model_folder(folder: Path, splits=("val", "test"), seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"classes": list(CLASSES), "image_size": 16, "last_conv_layer": "last_conv", "temperature": None}
    (folder / "model.json").write_text(json.dumps(meta))
    for i, split in enumerate(splits):
        fake_predictions(seed=seed + i).to_csv(folder / evaluate.SPLIT_FILES[split], index=False)
    return folder


def test_valid_predictions_are_reordered_to_model_classes():
    frame = fake_predictions()
    shuffled = frame[["dx", "image_id", *reversed(CLASSES)]]
    clean = evaluate.validate_predictions(shuffled, CLASSES)
    assert list(clean.columns) == ["image_id", "dx", *CLASSES]
    np.testing.assert_allclose(clean[list(CLASSES)].to_numpy(), frame[list(CLASSES)].to_numpy())


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda f: f.drop(columns=["dx"]), r"missing \['dx'\]"),
        (lambda f: f.rename(columns={"mel": "MEL"}), r"missing \['mel'\], unexpected \['MEL'\]"),
        (lambda f: f.assign(mel=f["mel"] + 0.2), "do not sum to 1"),
        (lambda f: f.assign(dx=["melanoma"] + f["dx"].tolist()[1:]), r"unknown labels in dx \['melanoma'\]"),
        (lambda f: f.assign(image_id="same"), "duplicate image_id"),
        (lambda f: f.assign(nv=["x"] + f["nv"].tolist()[1:]), "non-numeric"),
        (lambda f: f.iloc[0:0], "no rows"),
    ],
)
def test_invalid_predictions_raise_clear_errors(corrupt, message):
    with pytest.raises(evaluate.PredictionsError, match=message):
        evaluate.validate_predictions(corrupt(fake_predictions()), CLASSES, source="p.csv")


def test_read_predictions_names_the_file(tmp_path):
    with pytest.raises(evaluate.PredictionsError, match="not found"):
        evaluate.read_predictions(tmp_path / "nope.csv", CLASSES)
    bad = tmp_path / "bad.csv"
    fake_predictions().drop(columns=["vasc"]).to_csv(bad, index=False)
    with pytest.raises(evaluate.PredictionsError, match=str(bad)):
        evaluate.read_predictions(bad, CLASSES)


def test_list_evaluable_puts_the_default_first(tmp_path, monkeypatch):
    default = write_model_folder(tmp_path / "default")
    runs = tmp_path / "runs"
    write_model_folder(runs / "run_a", splits=("val",))
    (runs / "empty_run").mkdir(parents=True)
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(default))
    monkeypatch.setenv("HAM_RUNS_DIR", str(runs))
    found = evaluate.list_evaluable()
    assert [e.name for e in found] == ["default (shipped)", "run_a"]
    assert found[0].splits == ("val", "test") and found[1].splits == ("val",)
    loaded = evaluate.load_predictions(found[1].path, "val")
    assert len(loaded) == 70


def test_list_evaluable_orders_runs_newest_first_and_ties_by_name(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    folders = {name: write_model_folder(runs / name) for name in ("run_c", "run_a", "run_b")}
    same = 1_700_000_000
    for name, when in (("run_a", same), ("run_b", same), ("run_c", same - 60)):
        os.utime(folders[name] / "model.json", (when, when))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "missing"))
    monkeypatch.setenv("HAM_RUNS_DIR", str(runs))
    assert [e.name for e in evaluate.list_evaluable()] == ["run_b", "run_a", "run_c"]


def test_list_evaluable_without_models_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tmp_path / "missing"))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "no_runs"))
    assert evaluate.list_evaluable() == []


def test_metrics_frame_and_submission():
    preds = fake_predictions()
    tidy = evaluate.metrics_frame(preds, CLASSES, "test", n_boot=50)
    assert set(tidy.columns) == {"split", "n", "scope", "metric", "value", "ci_low", "ci_high"}
    assert (tidy["split"] == "test").all() and (tidy["n"] == 70).all()
    overall = tidy[tidy["scope"] == "overall"].set_index("metric")
    assert overall.loc["balanced_accuracy", "ci_low"] <= overall.loc["balanced_accuracy", "value"]
    assert set(tidy["scope"]) == {"overall", "macro", *CLASSES}
    submission = evaluate.submission_frame(preds, CLASSES)
    assert list(submission.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    np.testing.assert_allclose(submission["MEL"], preds["mel"])
    with pytest.raises(evaluate.PredictionsError, match="lack the ISIC categories"):
        evaluate.submission_frame(preds, [c for c in CLASSES if c != "df"])


def write_external_set(root: Path, n_per_class=2) -> tuple:
    """Generated images and an ISIC one-hot truth CSV."""
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for k, dx in enumerate(CLASSES):
        for j in range(n_per_class):
            image_id = f"ISIC_{k * 10 + j:07d}"
            pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{image_id}.jpg")
            rows.append({"image": image_id, **{c.upper(): float(c == dx) for c in CLASSES}})
    truth = root / "truth.csv"
    pd.DataFrame(rows).to_csv(truth, index=False)
    return images, truth


def test_read_truth_accepts_isic_one_hot(tmp_path):
    images, truth = write_external_set(tmp_path)
    table = evaluate.read_truth(truth, images)
    assert len(table) == 14
    assert table.set_index("image_id").loc["ISIC_0000040", "dx"] == "mel"
    assert all(Path(p).is_file() for p in table["path"])
    (images / "ISIC_0000040.jpg").unlink()
    with pytest.raises(ValueError, match="not found"):
        evaluate.read_truth(truth, images)


def build_tiny_model(folder: Path) -> Path:
    """A few-layer functional Keras model saved as a model folder."""
    import keras

    inputs = keras.Input(shape=(16, 16, 3))
    x = keras.layers.Rescaling(scale=1 / 255.0)(inputs)
    x = keras.layers.Conv2D(filters=4, kernel_size=3, activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units=len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs=inputs, outputs=outputs)
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    meta = {"classes": list(CLASSES), "image_size": 16, "arch": "tiny", "last_conv_layer": "last_conv",
            "preprocessing": "rescale 1/255", "temperature": None}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.timeout(180)
def test_cli_predicts_an_external_set_end_to_end(tmp_path):
    images, truth = write_external_set(tmp_path / "external")
    model_dir = build_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    result = subprocess.run(
        [sys.executable, "-m", "core", "evaluate", "--model", str(model_dir), "--images", str(images),
         "--truth", str(truth), "--out", str(out), "--batch-size", "4"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 0, result.stderr
    assert "balanced_accuracy" in result.stdout
    assert "predicted 14/14" in result.stderr
    preds = evaluate.read_predictions(out / "predictions_external.csv", CLASSES)
    assert len(preds) == 14
    submission = pd.read_csv(out / "isic_submission.csv")
    assert list(submission.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert set(pd.read_csv(out / "metrics_external.csv")["split"]) == {"external"}

    # The CLI's probabilities equal an in-process forward pass on the images decoded as Predict does.
    from core.serving import modelio
    from core.dataset.images import decode_image, to_model_input

    model = modelio.load_model(model_dir)
    batch = np.stack([to_model_input(decode_image(p.read_bytes()), 16) for p in sorted(images.glob("*.jpg"))])
    expected = model.predict_on_batch(batch)
    np.testing.assert_allclose(preds[list(CLASSES)].to_numpy(), expected, atol=2e-6)


def test_cli_reports_bad_inputs(tmp_path, capsys):
    images, truth = write_external_set(tmp_path / "external")
    code = evaluate.main(["--model", str(tmp_path / "nomodel"), "--images", str(images),
                          "--truth", str(truth), "--out", str(tmp_path / "out")])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --model nomodel: no such folder"


def test_read_truth_accepts_an_image_id_dx_table(tmp_path):
    images, truth = write_external_set(tmp_path)
    isic = pd.read_csv(truth)
    labelled = pd.DataFrame({"image_id": isic["image"], "dx": isic.drop(columns="image").idxmax(axis=1).str.lower()})
    labelled.to_csv(tmp_path / "labels.csv", index=False)
    table = evaluate.read_truth(tmp_path / "labels.csv", images)
    assert table.set_index("image_id").loc["ISIC_0000040", "dx"] == "mel"
    with pytest.raises(ValueError, match="needs an 'image' column"):
        pd.DataFrame({"name": ["a"]}).to_csv(tmp_path / "odd.csv", index=False)
        evaluate.read_truth(tmp_path / "odd.csv", images)


def test_cli_names_an_undecodable_image(tmp_path, capsys):
    images, truth = write_external_set(tmp_path / "external")
    first = sorted(images.glob("*.jpg"))[0]
    first.write_bytes(b"not an image at all")
    model_dir = build_tiny_model(tmp_path / "model")
    code = evaluate.main(["--model", str(model_dir), "--images", str(images), "--truth", str(truth),
                          "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"error: {first}" in err and not (tmp_path / "out" / "predictions_external.csv").exists()


@pytest.mark.timeout(180)
def test_external_set_reports_overlap_and_metrics_on_the_clean_part(tmp_path, monkeypatch):
    from core.dataset.splits import SPLIT_FILE, save_splits

    images, truth = write_external_set(tmp_path / "external")
    model_dir = build_tiny_model(tmp_path / "model")
    ids = pd.read_csv(truth)["image"].tolist()
    split = pd.DataFrame({"image_id": ids[:5], "lesion_id": [f"L{i}" for i in range(5)], "dx": "nv",
                          "split": ["train", "train", "train", "val", "test"]})
    meta = json.loads((model_dir / "model.json").read_text())
    meta["split_sha256"] = save_splits(split, model_dir / SPLIT_FILE)
    (model_dir / "model.json").write_text(json.dumps(meta))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "no_dataset"))  # ids only: no near-duplicate search
    written = evaluate.evaluate_external(model_dir, images, truth, out_dir=tmp_path / "out")
    report = pd.read_csv(written["overlap"], dtype=str).fillna("")
    assert report.loc[report["match"] != "", "split"].tolist() == ["train", "train", "train", "val", "test"]
    tidy = pd.read_csv(written["metrics"])
    assert tidy.groupby("split")["n"].first().to_dict() == {"external": 14, "external_clean": 10}
    source = json.loads((tmp_path / "out" / evaluate.SOURCE_FILE).read_text())
    assert source["overlap"]["by_split"] == {"train": 3, "val": 1, "test": 1} and source["overlap"]["clean"] == 10
    preds = pd.read_csv(written["predictions"])  # a plain CSV: pandas' defaults read it
    assert list(preds.columns[:5]) == ["image_id", "dx", "dx_pred", "ood_flag", "ood_score"]
    assert set(preds["calibration"]) == {"raw"}  # metrics are computed on the model's own softmax
    assert "4 of 14 images were used to train or tune the model" in evaluate.overlap_sentence(written["overlap"])


def test_external_set_without_a_model_split_says_it_was_not_checked(tmp_path):
    assert "not checked" in evaluate.overlap_sentence(None)


def count_opens(monkeypatch, name: str) -> list:
    """Record every opening of a file called ``name`` (``open``, ``Path.open``, ``Path.read_text``)."""
    import builtins
    import io

    opened, real_open = [], io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == name:
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    return opened


@pytest.mark.timeout(180)
def test_an_external_evaluation_reads_model_json_once(tmp_path, monkeypatch):
    from core.dataset.splits import SPLIT_FILE, save_splits

    images, truth = write_external_set(tmp_path / "external", n_per_class=1)
    model_dir = build_tiny_model(tmp_path / "model")
    ids = pd.read_csv(truth)["image"].tolist()
    split = pd.DataFrame({"image_id": ids[:2], "lesion_id": ["L0", "L1"], "dx": "nv", "split": ["train", "val"]})
    meta = json.loads((model_dir / "model.json").read_text())
    meta["split_sha256"] = save_splits(split, model_dir / SPLIT_FILE)
    (model_dir / "model.json").write_text(json.dumps(meta))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "no_dataset"))
    opened = count_opens(monkeypatch, "model.json")
    written = evaluate.evaluate_external(model_dir, images, truth,
                                         out_dir=tmp_path / "out")  # predicts, checks overlap, scores
    assert opened == [str(model_dir / "model.json")]
    assert len(evaluate.read_predictions(written["predictions"], CLASSES)) == 7 and written["overlap"] is not None


def test_prediction_evaluation_and_saliency_share_one_opened_folder(tmp_path, monkeypatch):
    from core.serving.folder import ModelFolder
    from core.serving.predict import Predictor
    from core.explaining.saliency import Explainer

    model_dir = write_model_folder(build_tiny_model(tmp_path / "model"))
    opened = count_opens(monkeypatch, "model.json")
    folder = ModelFolder(model_dir)
    predictor = Predictor(folder)
    explainer = Explainer.of(folder)
    assert len(evaluate.load_predictions(folder, "val")) == 70
    assert len(opened) == 1
    assert predictor.folder is folder and predictor.model is folder.model is explainer.model
    assert predictor.classes == folder.classes and explainer.last_conv_layer == "last_conv"
    assert Predictor(model_dir).classes == folder.classes  # a path still works


def test_the_app_decodes_external_images_with_its_own_lower_pixel_limit(tmp_path):
    from PIL import Image

    from core.dataset.images import INTERACTIVE_MAX_PIXELS, ImageError, decode_upload

    side = int(INTERACTIVE_MAX_PIXELS ** 0.5) + 10  # above the app's limit, below the command line's
    path = tmp_path / "big.png"
    Image.new("L", (side, side)).save(path)

    class Recorder:
        def __init__(self):
            self.shapes = []

        def predict_batch(self, images):
            from types import SimpleNamespace

            self.shapes += [np.shape(i) for i in images]
            ood = SimpleNamespace(score=0.0, flagged=False)
            return [SimpleNamespace(raw=np.full(7, 1 / 7), ood=ood) for _ in images]

    recorder = Recorder()
    evaluate.predict_files(recorder, [path])
    assert recorder.shapes == [(side, side, 3)]
    with pytest.raises(ImageError, match="megapixels"):
        evaluate.predict_files(Recorder(), [path], decode=decode_upload)
