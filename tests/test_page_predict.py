"""The Predict page driven by AppTest with a tiny model and a tiny generated dataset."""

import io
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import start_page, write_tiny_dataset
from PIL import Image
from tiny_models import build_tiny_model, save_model_folder

from core.explaining import explain as explain_cli
from core.explaining.saliency import DEFAULT_METHOD
from ui import saliency_view

PAGE = str(Path(__file__).resolve().parent.parent / "app_pages" / "predict.py")
TIMEOUT = 180

pytestmark = pytest.mark.timeout(600)


PASS_ALL = {"method": "max_softmax", "threshold": 0.0, "percentile": 0.0, "fitted_on": "val", "n": 100}
FLAG_ALL = {**PASS_ALL, "threshold": 1.0}


@pytest.fixture(scope="module")
def page_model(tmp_path_factory):
    return save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("predict_page") / "default", temperature=1.5,
                             extra={"ood": PASS_ALL})


@pytest.fixture(scope="module")
def flagging_model_dir(tmp_path_factory):
    """A model folder whose out-of-distribution check flags every image."""
    return save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("predict_gate") / "default", temperature=1.5,
                             extra={"ood": FLAG_ALL})


def png(seed: int = 0, size=(60, 45)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def texts(at) -> str:
    parts = [e.value for kind in ("markdown", "caption", "warning", "error", "info", "subheader") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


run_page = partial(start_page, PAGE, timeout=TIMEOUT)


def test_no_model_explains_where_it_is_expected(monkeypatch, predict_env):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(predict_env / "missing_model"))
    at = run_page()
    assert "No model yet" in at.info[0].value
    assert "Not a medical device" in texts(at)


def test_upload_shows_probabilities_saliency_and_curves(predict_env):
    at = run_page()
    assert [r.value for r in at.radio][:1] == ["Upload"]
    assert at.radio[0].options == ["Upload", "Camera", "Example images"]  # no dataset, no sample source
    at.file_uploader[0].set_value(("lesion.png", png(), "image/png")).run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "Not a medical device" in page
    assert "Calibrated with temperature scaling, T = 1.500, fitted on an unknown number of images" in page
    assert "Out-of-distribution check passed. Confidence check only" in page
    assert "Malignant (mel + bcc + akiec)" == at.metric[0].label
    assert len(at.get("plotly_chart")) == 1  # probabilities; the curves are drawn on request
    assert len(at.get("image")) == 4  # original, two maps side by side, colour-scale legend
    at.toggle(key="predict_curves_on").set_value(True).run()
    assert len(at.get("plotly_chart")) == 2  # + deletion/insertion curves
    assert "deletion" in at.get("plotly_chart")[1].proto.spec and "AUC" in at.get("plotly_chart")[1].proto.spec
    at.file_uploader[0].set_value(("second.png", png(2), "image/png")).run()
    assert len(at.get("plotly_chart")) == 2  # the toggle keeps its state for the next image
    assert at.selectbox(key="predict_method").value == DEFAULT_METHOD
    assert at.selectbox(key="predict_method_b").value != DEFAULT_METHOD
    assert at.radio(key="predict_style").value == "blend" and at.radio(key="predict_cmap").value == "viridis"
    assert "Colour scale" in page and "Each pixel is tinted" in page
    assert at.selectbox(key="predict_method").format_func(DEFAULT_METHOD) == "Where the model looked (recommended)"
    assert DEFAULT_METHOD in at.selectbox(key="predict_method").help  # the technical name, in the help
    at.selectbox(key="predict_method").set_value("Grad-CAM++ (tf-keras-vis)").run()
    at.radio(key="predict_style").set_value("contours").run()
    assert not at.exception, at.exception
    assert "second-order weighting" in " ".join(str(image.captions) for image in at.get("image"))
    assert "Lines at 0.2, 0.4, 0.6, 0.8 of the map's maximum" in texts(at)
    at.toggle(key="predict_tta").set_value(True).run()  # the tiny model's input is square: 8 views
    assert "Averaged over 8 flips/rotations (TTA)." in texts(at)


def test_example_images_work_without_a_dataset(predict_env):
    at = run_page()
    at.radio(key="predict_source").set_value("Example images").run()
    assert not at.exception, at.exception
    examples = at.selectbox(key="predict_example")
    # this model folder carries no saved test predictions: no image is marked as a miss
    assert [o.split(" · ")[0] for o in examples.options] == ["akiec", "bcc", "bkl", "df", "mel", "mel", "nv", "vasc"]
    assert not any("wrong" in o for o in examples.options)
    examples.set_value("ISIC_0024481").run()  # a melanoma
    assert not at.exception, at.exception
    assert "CC BY-NC 4.0" in texts(at) and "Tschandl" in texts(at)
    assert at.metric[0].label == "Malignant (mel + bcc + akiec)" or any("dermatoscopic" in e.value for e in at.error)


def test_example_images_are_test_split_images_one_right_per_class_and_one_labelled_miss():
    from ui.predict import example_images, example_label, example_verdicts

    examples = example_images()
    assert sorted(dx for dx, _ in examples.values()) == ["akiec", "bcc", "bkl", "df", "mel", "mel", "nv", "vasc"]
    for image_id, (dx, path) in examples.items():
        rgb = np.asarray(Image.open(path))
        assert rgb.ndim == 3 and rgb.shape[2] == 3 and path.stat().st_size < 20_000
    from core.contracts.paths import default_model_dir

    from core.contracts import predictions
    test_split = predictions.read_frame(default_model_dir() / predictions.FILES["test"]).set_index("image_id")["dx"]
    assert all(test_split.get(i) == dx for i, (dx, _) in examples.items())  # unseen by the shipped model
    verdicts = example_verdicts(default_model_dir())
    right = sorted(dx for i, (dx, _) in examples.items() if verdicts[i] == dx)
    missed = [i for i, (dx, _) in examples.items() if verdicts[i] != dx]
    assert right == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"] and missed == ["ISIC_0024481"]
    assert example_label("mel", "ISIC_0024481", verdicts["ISIC_0024481"]) == (
        "mel · Melanoma · ISIC_0024481 · the model gets this one wrong (it says bkl)")
    assert "wrong" not in example_label("mel", "ISIC_0024701", verdicts["ISIC_0024701"])


def test_page_and_cli_give_the_same_map(predict_env, media, page_model):
    at = run_page()
    at.file_uploader[0].set_value(("lesion.png", png(5), "image/png")).run()
    assert not at.exception, at.exception
    page_map = np.load(io.BytesIO(media[f"lesion_{saliency_view.method_slug(DEFAULT_METHOD)}.npy"]))
    second = f"lesion_{saliency_view.method_slug(saliency_view.COMPARE_METHOD)}"
    assert {f"{second}.npy", f"{second}.png"} <= set(media)  # both maps download, as array and as picture
    source = predict_env / "in" / "lesion.png"
    source.parent.mkdir()
    source.write_bytes(png(5))
    assert explain_cli.main(["--model", str(page_model), "--out", str(predict_env / "out"), str(source)]) == 0
    cli_map = np.load(predict_env / "out" / "lesion.npy")
    assert page_map.shape == cli_map.shape == (45, 60) and cli_map.dtype == np.float32
    np.testing.assert_allclose(page_map, cli_map, atol=1e-6)
    assert cli_map.max() > 0


def test_bad_upload_shows_error_and_page_keeps_working(predict_env):
    at = run_page()
    at.file_uploader[0].set_value(("broken.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg", "image/jpeg")).run()
    assert not at.exception, at.exception
    assert any("Cannot use **broken.jpg**" in e.value for e in at.error)
    at.file_uploader[0].set_value(("fine.png", png(1), "image/png")).run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1 and len(at.get("image")) == 4  # the verdict and the maps


def test_dataset_sample_shows_true_label_and_mask_scores(monkeypatch, predict_env):
    monkeypatch.setenv("HAM10000_DIR", str(write_tiny_dataset(predict_env / "ham10000")))
    at = run_page()
    at.radio(key="predict_source").set_value("Dataset sample").run()
    assert not at.exception, at.exception
    at.selectbox(key="predict_sample_class").set_value("mel").run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "True label (dataset): **mel · Melanoma**" in page
    assert "carries no split file" in page
    assert "Against the lesion mask" in page
    assert "lesion border" in str(at.get("image")[0].captions)


def test_batch_mode_table_and_skipped_files(predict_env, media):
    at = run_page()
    batch = at.file_uploader(key="predict_batch_files")
    batch.set_value([("a.png", png(2), "image/png"), ("b.png", png(3), "image/png"),
                     ("junk.png", b"nope", "image/png")]).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["image_id"]) == ["a", "b"]
    assert list(table.columns) == ["image_id", "dx_pred", "ood_flag", "ood_score",
                                   "akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert any("Skipped **junk.png**" in e.value for e in at.error)
    assert "0 flagged as not looking dermatoscopic" in texts(at)
    assert "Calibrated with temperature scaling, T = 1.500" in texts(at)  # Predict's own words
    data = media["predictions.csv"]
    download = pd.read_csv(io.BytesIO(data.encode() if isinstance(data, str) else data))  # pandas' defaults
    assert list(download.columns) == [*table.columns, "calibration", "temperature", "temperature_n"]
    assert set(download["calibration"]) == {"calibrated"} and set(download["temperature"]) == {1.5}
    np.testing.assert_allclose(download[list(table.columns[4:])].to_numpy(), table.iloc[:, 4:].to_numpy(), atol=1e-6)


def test_flagged_image_is_gated_before_any_verdict(monkeypatch, predict_env, flagging_model_dir):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(flagging_model_dir))
    at = run_page()
    at.file_uploader[0].set_value(("flower.png", png(4), "image/png")).run()
    assert not at.exception, at.exception
    assert "This does not look like a dermatoscopic image" in at.error[0].value
    assert not at.metric and not at.get("plotly_chart") and not at.get("image")  # no verdict, no maps
    assert "Where did the model look?" not in texts(at)
    at.toggle(key=[t.key for t in at.toggle if t.key.startswith("predict_show_anyway")][0]).set_value(True).run()
    assert not at.exception, at.exception
    assert "Shown on request" in texts(at) and at.metric[0].label == "Malignant (mel + bcc + akiec)"
    assert len(at.get("plotly_chart")) == 1 and len(at.get("image")) == 4  # original, two maps, colour-scale legend


def test_flagged_batch_rows_carry_the_flag(monkeypatch, predict_env, flagging_model_dir):
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(flagging_model_dir))
    at = run_page()
    at.file_uploader(key="predict_batch_files").set_value([("a.png", png(2), "image/png")]).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table["ood_flag"].tolist() == [True] and table["ood_score"].iloc[0] > 0
    assert "1 flagged as not looking dermatoscopic" in texts(at)


def test_dataset_sample_says_its_split_and_warns_on_training_images(monkeypatch, predict_env, tmp_path):
    import pandas as pd

    from core.dataset.splits import SPLIT_FILE, save_splits

    data = write_tiny_dataset(predict_env / "ham10000")
    monkeypatch.setenv("HAM10000_DIR", str(data))
    meta = pd.read_csv(data / "HAM10000_metadata.csv")
    folder = save_model_folder(build_tiny_model(), tmp_path / "with_split", extra={"ood": PASS_ALL})
    split = meta[["image_id", "lesion_id", "dx"]].assign(split="train")
    digest = save_splits(split, folder / SPLIT_FILE)
    save_model_folder(build_tiny_model(), folder, extra={"ood": PASS_ALL, "split_sha256": digest})
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(folder))
    at = run_page()
    at.radio(key="predict_source").set_value("Dataset sample").run()
    assert not at.exception, at.exception
    assert "an image of the model's **training** split" in texts(at)
    assert any("The model was trained on this image" in w.value for w in at.warning)


@pytest.fixture
def branch_model(tmp_path):
    """A model folder with a metadata branch: a face pushes bkl up by e² in odds."""
    from core.contracts.labels import CLASSES
    from core.serving import metadata_branch as mb

    folder = save_model_folder(build_tiny_model(), tmp_path / "with_branch", temperature=1.5, extra={"ood": PASS_ALL})
    weights = np.zeros((len(mb.feature_names()), len(CLASSES)))
    weights[mb.feature_names().index("site face"), CLASSES.index("bkl")] = 8.0
    mb.write(folder, mb.MetadataBranch(weights, tuple(CLASSES), {}))
    return folder


def test_metadata_fields_appear_only_with_a_branch_and_move_only_when_given(monkeypatch, predict_env, branch_model):
    at = run_page()
    at.file_uploader[0].set_value(("lesion.png", png(), "image/png")).run()
    assert not at.exception and not [e for e in at.expander if "Age, sex" in e.label]  # no branch, no fields
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(branch_model))
    at = run_page()
    at.file_uploader[0].set_value(("lesion.png", png(), "image/png")).run()
    assert not at.exception, at.exception
    assert [e.label for e in at.expander if "Age, sex" in e.label] == ["Age, sex and body site (optional)"]
    alone = at.subheader[0].value
    assert "the grey bars show the image alone" not in texts(at)
    at.selectbox(key="predict_site").set_value("face").run()
    assert not at.exception, at.exception
    assert at.subheader[0].value == "bkl · Benign keratosis-like lesion"  # odds × e⁸: bkl wins
    assert f"With site face. The image alone says **{alone}**" in texts(at)
    assert len(at.get("plotly_chart")[0].proto.spec) > 0 and '"image alone"' in at.get("plotly_chart")[0].proto.spec
    at.selectbox(key="predict_site").set_value(None).run()
    assert at.subheader[0].value == alone and "The image alone says" not in texts(at)


def test_a_dataset_sample_fills_the_fields_with_its_record(monkeypatch, predict_env, branch_model):
    data = write_tiny_dataset(predict_env / "ham10000")
    monkeypatch.setenv("HAM10000_DIR", str(data))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(branch_model))
    at = run_page()
    at.radio(key="predict_source").set_value("Dataset sample").run()
    at.selectbox(key="predict_sample_class").set_value("mel").run()
    image_id = at.selectbox(key="predict_sample_id").value
    row = pd.read_csv(data / "HAM10000_metadata.csv").set_index("image_id").loc[image_id]
    at.button(key="predict_use_recorded").click().run()
    assert not at.exception, at.exception
    assert at.number_input(key="predict_age").value == (None if pd.isna(row["age"]) else int(row["age"]))
    assert at.selectbox(key="predict_sex").value == (None if row["sex"] == "unknown" else row["sex"])
    assert at.selectbox(key="predict_site").value == (None if row["localization"] == "unknown" else row["localization"])


def test_a_corrupt_metadata_branch_says_so_and_the_image_alone_still_predicts(monkeypatch, predict_env, branch_model):
    from core.serving import metadata_branch as mb

    mb.path_in(branch_model).write_bytes(b"not an npz")
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(branch_model))
    at = run_page()
    at.file_uploader[0].set_value(("lesion.png", png(), "image/png")).run()
    assert not at.exception, at.exception
    assert any("age/sex/site branch cannot be used" in w.value and "image alone" in w.value for w in at.warning)
    assert at.metric[0].label == "Malignant (mel + bcc + akiec)"  # the verdict is there
