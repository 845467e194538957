"""Hostile input, case by case: every finding of the hardening review is a test asserting its message.

Inputs are generated here (no downloads). Memory cases use small members and
tracemalloc peaks instead of wall-clock or RSS limits, so they run in CI.
"""

import contextlib
import gc
import io
import json
import os
import tomllib
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from conftest import open_page, write_tiny_dataset
from PIL import Image
from streamlit.testing.v1 import AppTest
from test_page_evaluate import write_predictions
from tiny_models import build_tiny_model, save_model_folder

from core.dataset import commands, images, uploads

from core.evaluation import evaluate

from core.serving import modelio, predict
from core.serving.folder import ModelFolder

from core.contracts import validation
from core.contracts.labels import CLASSES

PROJECT = Path(__file__).resolve().parent.parent
TIMEOUT = 180
pytestmark = pytest.mark.usefixtures("clear_streamlit_caches")


# --- shared inputs ---------------------------------------------------------------------------------------------

def write_images(folder: Path, ids, size=(40, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
    return folder


def labelled_csv(path: Path, rows) -> Path:
    pd.DataFrame(rows, columns=["image_id", "dx"]).to_csv(path, index=False)
    return path


def one_hot_csv(path: Path, rows) -> Path:
    """``rows``: (image, {CODE: value}) pairs; unspecified classes are 0."""
    table = [{"image": image, **{c.upper(): 0 for c in CLASSES}, **cells} for image, cells in rows]
    pd.DataFrame(table).to_csv(path, index=False)
    return path


def stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real (tiny) Keras model folder with val/test predictions, as the Evaluate page lists it."""
    folder = save_model_folder(build_tiny_model(), tmp_path_factory.mktemp("hostile") / "default")
    ids = [f"ISIC_{i:07d}" for i in range(14)]
    for seed, split in enumerate(("val", "test")):
        write_predictions(folder / f"predictions_{split}.csv", ids, [CLASSES[i % 7] for i in range(14)], seed, 3.0)
    return folder


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for f in source.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


# --- 1. arbitrary file reads ------------------------------------------------------------------------------------

def test_typed_paths_outside_the_roots_are_refused_without_naming_them(tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    (root / "set").mkdir(parents=True)
    secret = tmp_path / "private" / "private_photo.jpg"
    secret.parent.mkdir()
    secret.write_bytes(b"x")
    (root / "link").symlink_to(secret.parent)
    monkeypatch.setenv(uploads.ROOTS_ENV, str(root))
    assert uploads.resolve_external("set", "image folder") == (root / "set").resolve()
    assert uploads.resolve_external(str(root / "set")) == (root / "set").resolve()
    for typed in (str(secret.parent), "/etc", "../private", "set/../../private", "link", str(root / "link")):
        with pytest.raises(uploads.OutsideRootsError, match="not inside a folder this server allows") as err:
            uploads.resolve_external(typed, "image folder")
        assert "private" not in str(err.value) and "/etc" not in str(err.value)


def test_roots_default_to_the_dataset_and_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.delenv(uploads.ROOTS_ENV, raising=False)
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "ham"))
    assert uploads.external_roots() == [(tmp_path / "ham").resolve()]
    monkeypatch.setenv(uploads.ROOTS_ENV, "")
    assert uploads.external_roots() == []
    with pytest.raises(uploads.OutsideRootsError, match="upload the files instead"):
        uploads.resolve_external(str(tmp_path))


def test_session_workspace_keeps_upload_names_inside_and_disappears_with_the_session():
    ws = uploads.Workspace()
    folder = ws.fresh("upload")
    saved = ws.save_upload(folder, "../../etc/passwd", b"x")
    assert saved.parent == folder and saved.name == "passwd"
    assert ws.save_upload(folder, "..", b"y").name == "upload"
    path = ws.path
    del ws, folder, saved
    gc.collect()
    assert not path.exists()


def test_redaction_keeps_the_message_and_drops_server_paths():
    text = "/srv/data/truth.csv: 2 row(s), e.g. 0.6/0.4 (see https://doi.org/10.7910/DVN/DBW86T)."
    assert uploads.redact_paths(text) == "truth.csv: 2 row(s), e.g. 0.6/0.4 (see https://doi.org/10.7910/DVN/DBW86T)."
    assert uploads.redact_paths("/tmp/ws/images: no", {"/tmp/ws": "upload"}) == "upload/images: no"


@pytest.fixture
def evaluate_env(tmp_path, monkeypatch, tiny_model_dir):
    """The Evaluate page on the tiny model, with an allowed root holding an external set."""
    root = tmp_path / "allowed"
    write_images(root / "images", [f"ISIC_{i:07d}" for i in range(7)])
    labelled_csv(root / "truth.csv", [(f"ISIC_{i:07d}", CLASSES[i]) for i in range(7)])
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "no_dataset"))
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(uploads.ROOTS_ENV, str(root))
    return root


def external_form(typed_images: str, typed_truth: str) -> AppTest:
    at = open_page("evaluate.py", TIMEOUT).run()
    at.radio(key="evaluate_split").set_value("external").run()
    at.radio(key="evaluate_external_mode").set_value("Folder on the server").run()
    at.text_input(key="evaluate_external_images").input(typed_images)
    at.text_input(key="evaluate_external_truth").input(typed_truth).run()
    return at


def page_text(at: AppTest) -> str:
    kinds = ("markdown", "caption", "warning", "error", "info", "success", "subheader")
    return "\n".join(str(e.value) for kind in kinds for e in at.get(kind))


@pytest.mark.timeout(600)
def test_evaluate_page_refuses_a_server_folder_outside_the_roots(evaluate_env, tmp_path):
    outside = tmp_path / "elsewhere"
    write_images(outside, ["private_photo"])
    labelled_csv(tmp_path / "steal.csv", [("private_photo", "nv")])
    at = external_form(str(outside), str(tmp_path / "steal.csv"))
    assert not at.exception
    assert "not inside a folder this server allows" in at.error[0].value
    assert not any(b.key == "evaluate_external_run" for b in at.button)
    assert all(str(tmp_path) not in e.value for e in [*at.main.error, *at.main.info, *at.main.caption])


@pytest.mark.timeout(600)
def test_external_results_are_per_session_and_removed_with_it(evaluate_env):
    first = external_form("images", "truth.csv")
    first.button(key="evaluate_external_run").click().run()
    assert not first.exception, first.exception
    assert "external test set" in page_text(first) and "n = 7" in page_text(first)
    workspace = first.session_state["evaluate_workspace"].path
    assert workspace.is_dir() and not (Path(os.environ["HAM_CACHE_DIR"]) / "external").exists()
    second = open_page("evaluate.py", TIMEOUT).run()
    second.radio(key="evaluate_split").set_value("external").run()
    assert "No external predictions for this model in this session yet." in page_text(second)
    del first
    gc.collect()
    assert not workspace.exists()


@pytest.mark.timeout(600)
def test_evaluate_page_names_an_empty_dx_without_a_traceback_or_path(evaluate_env):
    labelled_csv(evaluate_env / "bad.csv", [("ISIC_0000000", "mel"), ("ISIC_0000001", "")])
    at = external_form("images", "bad.csv")
    at.button(key="evaluate_external_run").click().run()
    assert not at.exception
    message = at.error[0].value
    assert "bad.csv: 1 row(s) with an empty dx" in message and str(evaluate_env) not in message


# --- 2. bounded memory ------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def zip_of_zeros(members: int, member_bytes: int, head: bytes = b"") -> bytes:
    """A zip of ``members`` files named .png: ``head`` then zeros (tiny once compressed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for k in range(members):
            archive.writestr(f"zeros_{k:02d}.png", head + bytes(member_bytes - len(head)))
    return buffer.getvalue()


@contextlib.contextmanager
def traced_peak():
    """Yields a dict whose ``peak`` is the traced Python memory peak (bytes) of the block."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


class Upload:
    """What ``st.file_uploader`` returns, as far as the batch helpers use it."""

    def __init__(self, name: str, data: bytes):
        self.name, self._data = name, data

    def getvalue(self) -> bytes:
        return self._data


def batch_peak(members: int, member_bytes: int) -> int:
    """Peak Python-traced memory of the Batch tab's source loop over a zip of zeros (decoding included)."""
    from ui import predict as view

    files = [Upload("bomb.zip", zip_of_zeros(members, member_bytes, head=PNG_SIGNATURE))]
    assert view.count_sources(files) == members
    seen = 0
    with traced_peak() as traced:
        for _, content in view.upload_sources(files):
            seen += 1
            assert len(content) == member_bytes  # extracted: it starts like a PNG
            with pytest.raises(images.ImageError, match="not an image in a supported format"):
                images.decode_upload(content)
            del content
    assert seen == members
    return traced["peak"]


def test_zip_members_are_extracted_one_at_a_time():
    member = 4 * 1024 * 1024
    one, twenty = batch_peak(1, member), batch_peak(20, member)
    assert twenty < one + member // 2, f"20 members peak at {twenty / 1e6:.1f} MB, one at {one / 1e6:.1f} MB"


def test_zip_members_of_zeros_are_named_and_never_extracted():
    from ui import predict as view

    files = [Upload("zeros.zip", zip_of_zeros(20, 60 * 1024 * 1024))]
    assert len(files[0].getvalue()) < 1_300_000
    with traced_peak() as traced:
        found = list(view.upload_sources(files))
    peak = traced["peak"]
    assert [name for name, _ in found] == [f"zeros.zip!zeros_{k:02d}.png" for k in range(20)]
    assert all(str(err) == f"{name.split('!')[1]}: not an image in a supported format (JPEG, PNG, BMP, TIFF, WebP)."
               for name, err in found)
    assert peak < 5_000_000, f"peak {peak / 1e6:.0f} MB"


def test_a_huge_png_is_refused_from_its_header_in_the_app():
    buffer = io.BytesIO()
    Image.new("L", (6300, 6300)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 200_000
    with pytest.raises(images.ImageError, match=r"6300×6300 = 39\.7 megapixels \(the limit is 25 megapixels\)"):
        images.decode_upload(buffer.getvalue())


def test_large_images_are_reduced_right_after_decoding_and_stay_upright():
    pixels = np.zeros((3000, 4000, 3), np.uint8)
    pixels[:, :2000, 0] = 255  # red left half
    photo = Image.fromarray(pixels)
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, exif=exif)
        rgb = images.decode_upload(buffer.getvalue())
        assert rgb.shape == (images.DISPLAY_MAX_SIDE, 768, 3), fmt
        assert rgb[10, 384, 0] > 200 and rgb[-10, 384, 0] < 50, fmt  # red on top once upright


# --- 3. input validation: core.evaluation.evaluate, core.serving.predict, core.dataset.data, model loading --------------------------------

TRUTH_CASES = {
    "duplicate rows": (lambda p: labelled_csv(p, [("ISIC_0000000", "mel"), ("ISIC_0000000", "mel")]),
                       "1 image(s) listed more than once, e.g. ['ISIC_0000000']"),
    "conflicting rows": (lambda p: labelled_csv(p, [("ISIC_0000000", "mel"), ("ISIC_0000000", "nv")]),
                         "1 image(s) with conflicting labels, e.g. ISIC_0000000 is both mel and nv"),
    "0.6/0.4 one-hot": (lambda p: one_hot_csv(p, [("ISIC_0000000", {"MEL": 0.6, "NV": 0.4})]),
                        "1 row(s) are not one-hot (every class cell 0 or 1, exactly one 1), e.g. ISIC_0000000: "),
    "-1 one-hot": (lambda p: one_hot_csv(p, [("ISIC_0000000", {"MEL": 1, "NV": -1})]),
                   "are not one-hot"),
    "duplicate one-hot": (lambda p: one_hot_csv(p, [("ISIC_0000000", {"MEL": 1}), ("ISIC_0000000", {"MEL": 1})]),
                          "listed more than once"),
    "empty file": (lambda p: p.write_bytes(b""), "is empty"),
    "header only": (lambda p: p.write_text("image_id,dx\n"), "has a header but no rows"),
    "empty dx": (lambda p: labelled_csv(p, [("ISIC_0000000", "mel"), ("ISIC_0000001", "")]),
                 "1 row(s) with an empty dx, e.g. ['ISIC_0000001']"),
    "latin-1": (lambda p: p.write_bytes("image_id,dx,note\nISIC_0000000,mel,naevus café\n".encode("latin-1")),
                "is not UTF-8 text"),
    "unknown format": (lambda p: p.write_text("name,label\na,mel\n"), "needs an 'image' column"),
}


@pytest.mark.parametrize("case", sorted(TRUTH_CASES))
def test_evaluate_cli_answers_bad_truth_with_one_line_and_exit_2(case, tiny_model_dir, tmp_path, capsys):
    write_images(tmp_path / "images", ["ISIC_0000000", "ISIC_0000001"])
    make, expected = TRUTH_CASES[case]
    make(tmp_path / "truth.csv")
    code = evaluate.main(["--model", str(tiny_model_dir), "--images", str(tmp_path / "images"),
                          "--truth", str(tmp_path / "truth.csv"), "--out", str(tmp_path / "out")])
    assert code == 2
    line = stderr_line(capsys)
    assert expected in line and str(tmp_path) not in line
    assert not (tmp_path / "out").exists()


def test_evaluate_and_predict_cli_refuse_batch_size_zero(tmp_path, capsys):
    assert evaluate.main(["--model", "m", "--images", "i", "--truth", "t.csv", "--out", "o", "--batch-size", "0"]) == 2
    assert stderr_line(capsys) == "error: --batch-size must be a positive whole number, got 0"
    assert predict.main(["--model", "m", "--out", str(tmp_path / "p.csv"), "--batch-size", "0", "x.jpg"]) == 2
    assert stderr_line(capsys) == "error: --batch-size must be a positive whole number, got 0"


def tamper(folder: Path, **changes) -> Path:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


MODEL_CASES = {
    "one class missing": (dict(classes=list(CLASSES[:-1])), "lists 6 classes but the model has 7 outputs"),
    "one class missing, order recorded": (dict(classes=list(CLASSES[:-1])), "but predictions_val.csv recorded"),
    "unknown class": (dict(classes=[*CLASSES[:-1], "melanoma"]), "lists unknown classes ['melanoma']"),
    "duplicated class": (dict(classes=[*CLASSES[:-1], "mel"]), "lists classes more than once: ['mel']"),
    "swapped order": (dict(classes=["akiec", "bcc", "bkl", "df", "nv", "mel", "vasc"]),
                      "but predictions_val.csv recorded ['akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc']"),
    "not a list": (dict(classes="akiec,bcc"), "'classes' must be a non-empty list"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_tampered_model_json_is_a_one_line_error_in_the_predict_cli(case, tiny_model_dir, tmp_path, capsys):
    changes, expected = MODEL_CASES[case]
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), **changes)
    if "recorded" not in expected:  # without recorded orders, the model's own outputs decide
        for split in ("val", "test"):
            (folder / f"predictions_{split}.csv").unlink()
    write_images(tmp_path / "in", ["ISIC_0000000"])
    assert predict.main(["--model", str(folder), "--out", str(tmp_path / "p.csv"), str(tmp_path / "in")]) == 2
    line = stderr_line(capsys)
    assert line.startswith("error: model model: model.json") and expected in line


def test_order_is_checked_against_the_runs_config(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "run")
    (folder / "predictions_val.csv").unlink()
    (folder / "config.json").write_text(json.dumps({"classes": list(reversed(CLASSES))}))
    with pytest.raises(modelio.ModelFolderError, match="but config.json recorded"):
        modelio.read_metadata(folder)


@pytest.mark.parametrize("content, expected", [(b"", "the metadata file is empty"),
                                                (b"lesion_id,image_id,dx\n", "missing column(s)")])
def test_data_validate_answers_an_empty_metadata_file(content, expected, tmp_path, capsys):
    root = write_tiny_dataset(tmp_path / "ham", lesions_per_class=1)
    (root / "HAM10000_metadata.csv").write_bytes(content)
    assert commands.main(["validate", str(root)]) == 2
    line = stderr_line(capsys)
    assert line.startswith("error: ") and expected in line


# --- tracebacks never reach the browser --------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_tampered_model_json_on_predict_and_evaluate_pages(tiny_model_dir, tmp_path, monkeypatch):
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "default"), classes=list(CLASSES[:-1]))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(folder))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "none"))
    predict_page = open_page("predict.py", TIMEOUT).run()
    assert not predict_page.exception
    assert "This model cannot be used: model default: model.json lists classes" in predict_page.error[0].value
    assert "but predictions_val.csv recorded" in predict_page.error[0].value
    tamper(folder, classes=[*CLASSES[:-1], "mel"])
    evaluate_page = open_page("evaluate.py", TIMEOUT).run()
    assert not evaluate_page.exception
    message = evaluate_page.error[0].value
    assert "lists classes more than once: ['mel']" in message and str(tmp_path) not in message


@pytest.mark.timeout(600)
def test_empty_metadata_file_on_explore_and_predict(tiny_model_dir, tmp_path, monkeypatch):
    root = write_tiny_dataset(tmp_path / "ham", lesions_per_class=1)
    (root / "HAM10000_metadata.csv").write_bytes(b"")
    monkeypatch.setenv("HAM10000_DIR", str(root))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    explore = open_page("explore.py", TIMEOUT).run()
    assert not explore.exception
    assert "the metadata file is empty" in explore.error[0].value
    predict_page = open_page("predict.py", TIMEOUT).run()
    assert not predict_page.exception
    options = predict_page.radio(key="predict_source").options
    assert "Upload" in options and "Dataset sample" not in options


def test_corrupt_mask_keeps_the_gallery(tmp_path, monkeypatch):
    root = write_tiny_dataset(tmp_path / "ham", lesions_per_class=1)
    first = sorted((root / "masks").iterdir())[0]
    first.write_bytes(b"\x89PNG broken")
    sorted((root / "images").iterdir())[1].write_bytes(b"not a jpeg")
    monkeypatch.setenv("HAM10000_DIR", str(root))
    at = open_page("explore.py", TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("image")) == 7


GUARDED_SCRIPT = '''
import streamlit as st
from ui.guard import guarded

@guarded("The demo section")
def section():
    raise KeyError("/srv/secret/file.csv")

section()
st.write("the page goes on")
'''


def test_guard_turns_an_unexpected_exception_into_a_message_and_a_log_entry(caplog):
    at = AppTest.from_string(GUARDED_SCRIPT, default_timeout=30).run()
    assert not at.exception
    message = at.error[0].value
    assert message.startswith("The demo section failed unexpectedly (KeyError).") and "/srv" not in message
    reference = message.split("reference ")[1].rstrip(".")
    assert any(reference in r.getMessage() and r.exc_info for r in caplog.records)
    assert at.markdown[0].value == "the page goes on"


def test_server_config_is_deliberate():
    config = tomllib.loads((PROJECT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert config["runner"]["postScriptGC"] is False  # ~0.3 s of every run with TensorFlow loaded
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["fileWatcherType"] == "none"  # the watcher held a core while TensorFlow loaded
    assert config["server"]["maxUploadSize"] * 1024 * 1024 == images.MAX_ZIP_MEMBER_BYTES


# --- 5. read-only mode ------------------------------------------------------------------------------------------

@pytest.mark.timeout(600)
def test_read_only_mode_hides_saving_the_temperature_and_the_download(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "none"))
    at = open_page("evaluate.py", TIMEOUT).run()
    assert not at.exception
    assert not any(b.key == "evaluate_save_temperature" for b in at.button)
    assert "read-only demo: it cannot be saved into model.json here" in page_text(at)
    explore = open_page("explore.py", TIMEOUT).run()
    assert not any("Download HAM10000" in b.label for b in explore.button)
    assert "read-only demo: the dataset cannot be downloaded" in page_text(explore)


# --- 6. small ones -----------------------------------------------------------------------------------------------

def test_float_tiff_in_zero_to_one_is_scaled_not_black():
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(ramp, mode="F").save(buffer, format="TIFF")
    rgb = images.decode_image(buffer.getvalue())
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and rgb[4, 0, 0] == round(32 / 63 * 255)


def test_a_numbered_repeat_never_takes_a_real_files_id():
    assert images.distinct_ids(["x.jpg", "x.jpg", "x#2.jpg"]) == ["x", "x#3", "x#2"]
    assert images.distinct_ids(["x.jpg", "x.jpg", "x.jpg"]) == ["x", "x#2", "x#3"]


def test_same_stem_in_different_folders_gets_distinct_ids():
    names = ["/in/a/ISIC_1.jpg", "/in/b/ISIC_1.png", "/in/a/ISIC_2.jpg", "set.zip!x/ISIC_1.jpg", "up.jpg", "up.jpg"]
    assert images.distinct_ids(names) == ["in/a/ISIC_1", "in/b/ISIC_1", "ISIC_2", "set.zip/x/ISIC_1", "up", "up#2"]


def test_ids_never_climb_out_of_an_output_folder(tmp_path):
    names = ["../x.jpg", "x.jpg", "/abs/./x.png", "set.zip!../../x.jpg", "../../y.jpg"]
    ids = images.distinct_ids(names)
    assert ids == ["x", "x#2", "abs/x", "set.zip/x", "y"]
    for image_id in ids:
        path = images.output_path(tmp_path, image_id, ".npy").resolve()
        assert path.is_relative_to(tmp_path.resolve())


def test_cli_names_the_files_it_skips(tiny_model_dir, tmp_path, capsys):
    folder = write_images(tmp_path / "in" / "a", ["ISIC_1"])
    write_images(tmp_path / "in" / "b", ["ISIC_1"])
    for name in ("anim.gif", "logo.svg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    out = tmp_path / "p.csv"
    assert predict.main(["--model", str(tiny_model_dir), "--out", str(out), str(tmp_path / "in")]) == 0
    err = capsys.readouterr().err
    for name, kind in (("anim.gif", ".gif"), ("logo.svg", ".svg"), ("notes.txt", ".txt")):
        assert f"skipped {folder / name}: not an image type this reads ({kind};" in err
    assert sorted(pd.read_csv(out)["image_id"]) == ["a/ISIC_1", "b/ISIC_1"]


def test_validation_helpers_read_utf8_with_bom(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffimage_id,dx\nISIC_1,mel\n".encode("utf-8"))
    assert list(validation.read_truth_csv(path).columns) == ["image_id", "dx"]



# === hardening round two: command lines and core input (issue 28, findings 5, 6, 7 and the core side of 8) ======

import subprocess  # noqa: E402
import sys  # noqa: E402

from tiny_segmenter import save_tiny_segmenter  # noqa: E402

from core.explaining import explain as explain_cli  # noqa: E402
from core.serving import export, segment  # noqa: E402
from core.contracts import predictions

CLI_TIMEOUT = 900  # generous: a loaded machine has taken minutes to import TensorFlow


def run_cli(command: str, *args) -> subprocess.CompletedProcess:
    """``python -m core <command> ARGS`` (``lesionlab <command> ARGS``) in a real process, from the project root."""
    return subprocess.run([sys.executable, "-m", "core", command, *map(str, args)], cwd=PROJECT,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The process's single ``error:`` line; exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_segmenter_dir(tmp_path_factory) -> Path:
    return save_tiny_segmenter(tmp_path_factory.mktemp("hostile_seg") / "segmenter")


# --- 5. no command overwrites what it did not create -----------------------------------------------------------

def test_export_refuses_an_out_inside_a_model_folder_and_the_folder_still_loads(tiny_model_dir, tmp_path, capsys):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    before = (folder / "model.json").read_bytes()
    assert export.main(["--model", str(folder), "--out", str(folder / "model.tflite"), "--parity", "0"]) == 2
    line = stderr_line(capsys)
    assert line == ("error: --out model.tflite is inside the model folder model, whose files it could replace: "
                    "choose another --out or pass --force")
    assert (folder / "model.json").read_bytes() == before and not (folder / "model.tflite").exists()
    assert ModelFolder(folder).classes == tuple(CLASSES)
    for inside in (folder / "export" / "m.tflite", folder / "sub" / "deeper" / "m.tflite"):
        with pytest.raises(export.ExportError, match="is inside the model folder model"):
            export.check_out(inside)


def test_export_replaces_only_an_earlier_export_unless_forced(tiny_model_dir, tmp_path):
    mine = tmp_path / "mine.tflite"
    mine.write_bytes(b"not a model")
    with pytest.raises(export.ExportError, match="--out mine.tflite exists and was not written by this command"):
        export.check_out(mine)
    export.card_path(mine).write_text(json.dumps({"format": "tflite", "sha256": "0" * 64}))
    export.check_out(mine)  # an earlier export, recognised by its card
    notes = tmp_path / "notes.tflite"
    export.card_path(notes).write_text(json.dumps({"my": "notes"}))
    with pytest.raises(export.ExportError, match="--out notes.json exists and was not written by this command"):
        export.check_out(notes)
    export.check_out(notes, force=True)
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    forced = folder / "export" / "forced.tflite"
    assert export.main(["--model", str(folder), "--out", str(forced), "--parity", "0", "--force"]) == 0
    assert export.is_card(export.card_path(forced)) and json.loads((folder / "model.json").read_text())["classes"]


def test_predict_never_writes_into_a_model_folder_or_over_a_foreign_file(tiny_model_dir, tmp_path, capsys):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    write_images(tmp_path / "in", ["ISIC_0000000"])
    target = folder / "predictions_val.csv"
    before = target.read_bytes()
    assert predict.main(["--model", str(folder), "--out", str(target), str(tmp_path / "in")]) == 2
    assert "--out predictions_val.csv is inside the model folder model" in stderr_line(capsys)
    assert target.read_bytes() == before
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\n1,2\n")
    assert predict.main(["--model", str(folder), "--out", str(notes), str(tmp_path / "in")]) == 2
    assert stderr_line(capsys) == ("error: --out notes.csv exists and was not written by this command: "
                                   "choose another --out or pass --force")
    assert notes.read_text() == "my,own\n1,2\n"
    out = tmp_path / "p.csv"
    for _ in range(2):  # the second run replaces the file the first one wrote
        assert predict.main(["--model", str(folder), "--out", str(out), str(tmp_path / "in")]) == 0
    assert predictions.read_info(out)["probabilities"] in (predictions.RAW, predictions.CALIBRATED)
    assert predict.main(["--model", str(folder), "--out", str(notes), "--force", str(tmp_path / "in")]) == 0


@pytest.mark.parametrize("command", ["explain", "segment", "evaluate"])
def test_output_folders_with_foreign_files_or_in_a_model_folder_are_refused(command, tmp_path, capsys):
    marker = {"explain": explain_cli.TABLE_FILE, "segment": segment.MEASUREMENTS_FILE,
              "evaluate": evaluate.SOURCE_FILE}[command]
    photos = write_images(tmp_path / "photos", ["ISIC_0000000"])  # --out = the input folder: its images at risk
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    main = {"explain": explain_cli.main, "segment": segment.main, "evaluate": evaluate.main}[command]

    def call(out, *extra):
        if command == "evaluate":
            return main(["--model", "m", "--images", str(photos), "--truth", "t.csv", "--out", str(out), *extra])
        return main(["--model", "m", "--out", str(out), *extra, str(photos)])

    assert call(photos) == 2
    assert stderr_line(capsys) == (f"error: --out photos holds files this command did not write (no {marker}): "
                                   "choose another --out or pass --force")
    assert call(model / "maps") == 2
    assert "--out maps is inside the model folder model" in stderr_line(capsys)
    assert call(photos / "ISIC_0000000.jpg") == 2
    assert stderr_line(capsys) == "error: --out ISIC_0000000.jpg is a file, not a folder"
    assert sorted(p.name for p in photos.iterdir()) == ["ISIC_0000000.jpg"] and not (model / "maps").exists()
    (photos / marker).write_text("")  # a folder this command wrote before: accepted, the next check fails
    assert call(photos) == 2
    assert "holds files" not in stderr_line(capsys)


# --- 6. model metadata is bounded before any tensor is built ---------------------------------------------------

SIZE_CASES = {
    "huge height": (dict(image_height=100000, image_width=100000), "'image_height' is 100000"),
    "zero": (dict(image_size=0), "'image_size' is 0"),
    "negative width": (dict(image_height=32, image_width=-5), "'image_width' is -5"),
    "fraction": (dict(image_size=32.5), "'image_size' is 32.5"),
    "text": (dict(image_size="32"), "'image_size' is '32'"),
    "boolean": (dict(image_size=True), "'image_size' is True"),
    "infinite": (dict(image_size=float("inf")), "'image_size' is inf"),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_input_sizes_out_of_bounds_are_refused_from_model_json(case, tiny_model_dir, tmp_path, capsys):
    changes, expected = SIZE_CASES[case]
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), **changes)
    with pytest.raises(modelio.ModelFolderError) as err:
        ModelFolder(folder)  # what the Predict page opens a run folder with
    assert str(err.value) == (f"model model: model.json {expected}: a model input side must be a whole number "
                              f"of pixels from {modelio.MIN_INPUT_SIDE} to {modelio.MAX_INPUT_SIDE}")
    write_images(tmp_path / "in", ["ISIC_0000000"])
    assert predict.main(["--model", str(folder), "--out", str(tmp_path / "p.csv"), str(tmp_path / "in")]) == 2
    assert stderr_line(capsys) == f"error: {err.value}"


def test_a_100000_pixel_model_json_stops_predict_at_once_in_a_real_process(tiny_model_dir, tmp_path):
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), image_height=100000, image_width=100000)
    write_images(tmp_path / "in", ["ISIC_0000000"], size=(600, 450))
    line = one_error_line(run_cli("predict", "--model", folder, "--out", tmp_path / "p.csv", tmp_path / "in"))
    assert "'image_height' is 100000: a model input side must be a whole number of pixels from 8 to 1024" in line
    assert not (tmp_path / "p.csv").exists()


LAYER_CASES = {
    "size not the model's": (dict(image_size=64), "gives the input as 64x64 (height x width) but the model takes 32x32"),
    "unknown layer": (dict(last_conv_layer="block_99"), "'last_conv_layer' 'block_99' is not a layer of the model"),
    "layer without a map": (dict(last_conv_layer="gap"), "'last_conv_layer' 'gap' has no feature map"),
    "not a name": (dict(last_conv_layer=5), "'last_conv_layer' must be a layer name"),
    "unknown OOD layer": (dict(ood={"method": "feature_statistics", "layers": ["gap", "nope"]}),
                          "'ood' layer 'nope' is not a layer of the model"),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_model_json_must_agree_with_the_model(case, tiny_model_dir, tmp_path):
    changes, expected = LAYER_CASES[case]
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), **changes)
    with pytest.raises(modelio.ModelFolderError, match="^model model: model.json ") as err:
        ModelFolder(folder).model
    assert expected in str(err.value)


@pytest.mark.parametrize("temperature", ["abc", -1.0, 0, float("inf"), True])
def test_a_temperature_that_is_not_a_positive_number_is_refused(temperature, tiny_model_dir, tmp_path):
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), temperature=temperature)
    with pytest.raises(modelio.ModelFolderError) as err:
        modelio.read_metadata(folder)
    assert str(err.value) == (f"model model: model.json 'temperature' is {temperature!r}: it must be a positive "
                              "number, or null for none")


def test_segmenter_metadata_is_bounded(tiny_segmenter_dir, tmp_path):
    for changes, expected in ((dict(image_height=100000), "'image_height' is 100000: a model input side"),
                              (dict(threshold="half"), "'threshold' is 'half': it must be a number (0 to 1; above 1 finds none)")):
        folder = tamper(copy_model(tiny_segmenter_dir, tmp_path / str(len(expected))), **changes)
        with pytest.raises(modelio.ModelFolderError, match=f"^segmenter {folder.name}: model.json ") as err:
            segment.Segmenter(folder)
        assert expected in str(err.value)


# --- 7. one line on stderr and exit 2, in real processes --------------------------------------------------------

def test_explain_answers_a_tampered_model_json_and_a_bad_layer_with_one_line(tiny_model_dir, tmp_path):
    write_images(tmp_path / "in", ["ISIC_0000000"])
    duplicated = tamper(copy_model(tiny_model_dir, tmp_path / "dup"), classes=[*CLASSES[:-1], "mel"])
    line = one_error_line(run_cli("explain", "--model", duplicated, "--out", tmp_path / "o1", tmp_path / "in"))
    assert line == "error: model dup: model.json lists classes more than once: ['mel']"
    bad_layer = tamper(copy_model(tiny_model_dir, tmp_path / "layer"), last_conv_layer="nope")
    line = one_error_line(run_cli("explain", "--model", bad_layer, "--out", tmp_path / "o2", tmp_path / "in"))
    assert line == "error: model layer: model.json 'last_conv_layer' 'nope' is not a layer of the model"


def test_explain_and_segment_with_no_readable_image_say_so_in_one_line(tiny_model_dir, tiny_segmenter_dir, tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 broken")
    for command, model in (("explain", tiny_model_dir), ("segment", tiny_segmenter_dir)):
        proc = run_cli(command, "--model", model, "--out", tmp_path / command, tmp_path / "junk.jpg")
        assert one_error_line(proc) == "error: no readable image among the paths given (skipped 1)"
        assert "skipped " in proc.stderr and "junk.jpg" in proc.stderr


def test_segment_answers_a_tampered_model_json_with_one_line(tiny_segmenter_dir, tmp_path):
    write_images(tmp_path / "in", ["ISIC_0000000"])
    folder = tamper(copy_model(tiny_segmenter_dir, tmp_path / "seg"), image_height=100000)
    line = one_error_line(run_cli("segment", "--model", folder, "--out", tmp_path / "out", tmp_path / "in"))
    assert line.startswith("error: segmenter seg: model.json 'image_height' is 100000: a model input side")


def test_predict_answers_an_unwritable_out_with_one_line(tiny_model_dir, tmp_path):
    write_images(tmp_path / "in", ["ISIC_0000000"])
    (tmp_path / "a_file").write_text("x")
    for out, expected in ((tmp_path / "in", "error: --out in is a folder: give the file to write"),
                          (tmp_path / "a_file" / "p.csv", "error: --out p.csv: a_file is a file, not a folder")):
        proc = run_cli("predict", "--model", tiny_model_dir, "--out", out, tmp_path / "in")
        assert one_error_line(proc) == expected


# --- 8. core input: NUL bytes, FIFOs, linked files, non-finite pixels, nested zips, reordered classes ------------

def test_a_nul_byte_in_a_typed_path_is_refused_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv(uploads.ROOTS_ENV, str(tmp_path))
    with pytest.raises(uploads.OutsideRootsError) as err:
        uploads.resolve_external("images\x00/../x", "image folder")
    assert str(err.value) == "The image folder contains a NUL character, which no file name can hold."


@pytest.mark.timeout(CLI_TIMEOUT)
def test_a_fifo_is_refused_unopened_by_predict_and_evaluate(tiny_model_dir, tmp_path, capsys):
    folder = write_images(tmp_path / "in", ["ISIC_0000000"])
    os.mkfifo(folder / "ISIC_0000001.jpg")  # nobody ever writes: opening it to read would block forever
    found = dict(images.iter_sources([folder, folder / "ISIC_0000001.jpg"]))
    assert isinstance(found[str(folder / "ISIC_0000000.jpg")], bytes)
    fifo = found[str(folder / "ISIC_0000001.jpg")]
    assert str(fifo) == "ISIC_0000001.jpg is not a regular file (a pipe, device or socket); refused without reading it."
    out = tmp_path / "p.csv"
    assert predict.main(["--model", str(tiny_model_dir), "--out", str(out), str(folder)]) == 0
    assert f"skipped {folder / 'ISIC_0000001.jpg'}: ISIC_0000001.jpg is not a regular file" in capsys.readouterr().err
    assert list(pd.read_csv(out)["image_id"]) == ["ISIC_0000000"]
    labelled_csv(tmp_path / "truth.csv", [("ISIC_0000000", "mel"), ("ISIC_0000001", "nv")])
    assert evaluate.main(["--model", str(tiny_model_dir), "--images", str(folder), "--truth",
                          str(tmp_path / "truth.csv"), "--out", str(tmp_path / "ev")]) == 2
    assert "ISIC_0000001.jpg is not a regular file" in stderr_line(capsys)
    with pytest.raises(images.ImageError, match="is not a regular file"):
        images.read_model_pixels(folder / "ISIC_0000001.jpg", 32)


def test_a_linked_image_pointing_outside_the_roots_is_refused_file_by_file(tiny_model_dir, tmp_path, monkeypatch):
    root = tmp_path / "allowed"
    folder = write_images(root / "images", ["ISIC_0000000"])
    secret = write_images(tmp_path / "private", ["private_photo"]) / "private_photo.jpg"
    (folder / "ISIC_0000001.jpg").symlink_to(secret)
    (folder / "ISIC_0000002.jpg").symlink_to(folder / "ISIC_0000000.jpg")  # a link inside the roots is fine
    truth = labelled_csv(root / "truth.csv", [(f"ISIC_000000{i}", "nv") for i in range(3)])
    monkeypatch.setenv(uploads.ROOTS_ENV, str(root))
    images_dir, truth_csv = uploads.resolve_external("images"), uploads.resolve_external("truth.csv")
    with pytest.raises(uploads.OutsideRootsError) as err:
        evaluate.evaluate_external(tiny_model_dir, images_dir, truth_csv, out_dir=tmp_path / "out",
                                   roots=uploads.external_roots())
    assert str(err.value) == ("ISIC_0000001.jpg links to a file outside the folders this server allows "
                              "(HAM_EXTERNAL_ROOTS); refused.")
    assert not (tmp_path / "out").exists()
    (folder / "ISIC_0000001.jpg").unlink()
    labelled_csv(truth, [("ISIC_0000000", "nv"), ("ISIC_0000002", "nv")])
    written = evaluate.evaluate_external(tiny_model_dir, images_dir, truth_csv, out_dir=tmp_path / "out",
                                         roots=uploads.external_roots())
    assert len(predictions.read_frame(written["predictions"])) == 2


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), float("-inf")])
def test_a_float_tiff_with_a_non_finite_pixel_keeps_its_picture(bad):
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    clean = io.BytesIO()
    Image.fromarray(ramp, mode="F").save(clean, format="TIFF")
    spoiled = ramp.copy()
    spoiled[3, 3] = bad
    buffer = io.BytesIO()
    Image.fromarray(spoiled, mode="F").save(buffer, format="TIFF")
    rgb, expected = images.decode_image(buffer.getvalue()), images.decode_image(clean.getvalue())
    assert rgb[-1, -1, 0] == 255 and rgb[4, 0, 0] == round(32 / 63 * 255)  # not black: scaled as the clean ramp
    keep = np.ones((8, 8), bool)
    keep[3, 3] = False
    assert np.array_equal(rgb[keep], expected[keep])
    assert rgb[3, 3, 0] == (255 if bad == float("inf") else 0)


def test_a_zip_inside_a_zip_is_named_as_skipped(tiny_model_dir, tmp_path, capsys):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("hidden.png", b"\x89PNG")
    outer = tmp_path / "set.zip"
    photo = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 120, 100)).save(photo, format="PNG")
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("ISIC_0000000.png", photo.getvalue())
        archive.writestr("more/inner.zip", inner.getvalue())
    data = outer.read_bytes()
    assert images.count_zip_members(data) == 2
    found = dict(images.zip_members(data))
    assert str(found["more/inner.zip"]) == ("more/inner.zip: a zip inside the zip is not opened; "
                                            "unzip it and add its images instead.")
    assert predict.main(["--model", str(tiny_model_dir), "--out", str(tmp_path / "p.csv"), str(outer)]) == 0
    assert f"skipped {outer}!more/inner.zip: more/inner.zip: a zip inside the zip is not opened" in capsys.readouterr().err


def test_reordered_classes_without_any_recorded_order_are_refused(tiny_model_dir, tmp_path):
    swapped = ["akiec", "bcc", "bkl", "df", "nv", "mel", "vasc"]
    folder = tamper(copy_model(tiny_model_dir, tmp_path / "model"), classes=swapped)
    (folder / "predictions_val.csv").unlink()
    with pytest.raises(modelio.ModelFolderError, match="but predictions_test.csv recorded"):
        modelio.read_metadata(folder)
    (folder / "predictions_test.csv").unlink()
    with pytest.raises(modelio.ModelFolderError) as err:
        modelio.read_metadata(folder)
    assert str(err.value) == (f"model model: model.json lists classes {swapped}, not in the order training writes "
                              f"({list(CLASSES)}), and no config.json or predictions file records the order: "
                              "the labels cannot be trusted")
    (folder / "config.json").write_text(json.dumps({"classes": swapped}))  # recorded by the run: trusted
    assert modelio.read_metadata(folder)["classes"] == swapped


def test_the_order_is_read_from_a_predictions_file_with_its_header_line(tiny_model_dir, tmp_path):
    folder = copy_model(tiny_model_dir, tmp_path / "model")
    table = predictions.read_frame(folder / "predictions_val.csv")
    predictions.write(folder / "predictions_val.csv", table, predictions.RAW)  # as runs write it: header first
    (folder / "predictions_test.csv").unlink()
    tamper(folder, classes=list(reversed(CLASSES)))
    with pytest.raises(modelio.ModelFolderError, match=r"but predictions_val.csv recorded \['akiec'"):
        modelio.read_metadata(folder)



@pytest.mark.timeout(600)
def test_evaluate_page_answers_a_nul_byte_a_fifo_and_a_linked_file_with_messages(evaluate_env, tmp_path):
    at = external_form("images\x00", "truth.csv")
    assert not at.exception
    assert at.error[0].value == "A typed path contains a NUL character, which no file name can hold: type the path again."
    os.mkfifo(evaluate_env / "images" / "ISIC_0000007.jpg")
    labelled_csv(evaluate_env / "fifo.csv", [("ISIC_0000000", "akiec"), ("ISIC_0000007", "nv")])
    at = external_form("images", "fifo.csv")
    at.button(key="evaluate_external_run").click().run()
    assert not at.exception
    shown = at.error[0].value.replace("\\", "")  # file names are Markdown-escaped, shown literally
    assert "ISIC_0000007.jpg is not a regular file (a pipe, device or socket)" in shown
    secret = write_images(tmp_path / "private", ["private_photo"]) / "private_photo.jpg"
    (evaluate_env / "images" / "ISIC_0000008.jpg").symlink_to(secret)
    labelled_csv(evaluate_env / "link.csv", [("ISIC_0000000", "akiec"), ("ISIC_0000008", "nv")])
    at = external_form("images", "link.csv")
    at.button(key="evaluate_external_run").click().run()
    assert not at.exception
    message = at.error[0].value.replace("\\", "")
    assert "ISIC_0000008.jpg links to a file outside the folders this server allows" in message
    assert str(tmp_path) not in message and "private" not in message
# === Round two, server side (issue 28: 1-3, the page half of 6; issue 24: cold paths) ==========================
# Memory and latency figures are in bench/bench_memory.py and bench/bench_browser.py, not here.

import sys  # noqa: E402

from ui import guard as page_guard  # noqa: E402
from ui.evaluate import sources as external  # noqa: E402
from ui.text import plain  # noqa: E402

HOSTILE_MARKDOWN = "![x](http://host/x.png)"


def test_plain_shows_markdown_links_images_html_and_directives_literally():
    assert plain(HOSTILE_MARKDOWN) == r"\!\[x\](http\://host/x.png)"
    assert plain("[click](javascript:alert(1))") == r"\[click\](javascript\:alert(1))"
    assert plain("<img src=x onerror=alert(1)>") == r"\<img src=x onerror=alert(1)\>"
    assert plain(":red[big] $x^2$ **b** _i_ `c`") == r"\:red\[big\] \$x^2\$ \*\*b\*\* \_i\_ \`c\`"
    assert plain(":material/home:") == "\\:\u2060material/home:"  # no icon: the word joiner breaks the code
    assert plain("# title") == r"\# title" and plain("- item") == r"\- item" and plain("1. x") == r"1\. x"
    assert plain("www.host.org or me@host.org") == r"www\.host.org or me\@host.org"
    assert plain("a\x00b\nc\x1b[31m") == "a b c [31m".replace("[", "\\[")
    assert plain("bad.csv: 2 row(s) of 3.") == "bad.csv: 2 row(s) of 3."  # prose stays readable
    assert len(plain("x" * 1000)) == 200


@pytest.mark.timeout(600)
def test_a_shared_explore_link_with_markdown_shows_it_as_text(tiny_dataset_env):
    at = open_page("explore.py", TIMEOUT)
    at.query_params["image"] = HOSTILE_MARKDOWN
    at.run()
    assert not at.exception, at.exception
    shown = [w.value for w in at.warning if "in the dataset" in w.value]
    assert shown == [r"No image \!\[x\](http\://host/x.png) in the dataset."]


def test_upload_and_member_names_are_shown_as_text_on_predict():
    def script():
        from ui.predict import decode_upload

        decode_upload(b"not an image", "![x](http://host/x.png)")

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.error[0].value.startswith(r"Cannot use **\!\[x\](http\://host/x.png)**: ")


@pytest.mark.timeout(600)
def test_a_zip_member_name_with_markdown_is_shown_as_text_in_batch(predict_env):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("[a](http://host/).png", b"nope")
    at = open_page("predict.py", TIMEOUT).run()
    at.file_uploader(key="predict_batch_files").set_value([("set.zip", archive.getvalue(), "application/zip")]).run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    skipped = [e.value for e in at.error if e.value.startswith("Skipped")]
    assert len(skipped) == 1 and r"\[a\](http\://host/).png" in skipped[0] and "[a](http" not in skipped[0]


@pytest.fixture
def page_model(tiny_model_dir):
    """The Predict page's model for ``predict_env`` (conftest)."""
    return tiny_model_dir


@pytest.mark.timeout(600)
def test_a_nul_byte_in_a_typed_path_is_a_message(evaluate_env):
    at = external_form("images\x00/../x", "truth.csv")
    assert not at.exception, at.exception
    assert "contains a NUL character" in at.error[0].value
    assert not any(b.key == "evaluate_external_run" for b in at.button)


def test_truth_csv_size_is_refused_from_bytes_and_lines_before_parsing():
    big = external.truth_size_problem(42 * 2**20, lambda: pytest.fail("read a file refused by its size"))
    assert big == ("the ground-truth CSV has 42.0 MB, more than the 2 MB this page reads; use "
                   "`lesionlab evaluate` for large sets.")
    rows = b"image_id,dx\n" + b"I,nv\n" * 1_000_000
    assert "1,000,000 rows in the ground-truth CSV, more than the 2,000" in external.truth_size_problem(
        external.MAX_TRUTH_BYTES, lambda: rows)
    ok = b"image_id,dx\n" + b"I,nv\n" * (external.MAX_EXTERNAL_IMAGES - 1) + b"I,nv"  # no final newline
    assert external.truth_size_problem(len(ok), lambda: ok) is None


@pytest.mark.timeout(600)
def test_a_large_server_truth_csv_is_refused_before_pandas_reads_it(evaluate_env, monkeypatch):
    rows = [(f"ISIC_{i:07d}", "nv") for i in range(external.MAX_EXTERNAL_IMAGES + 1)]
    labelled_csv(evaluate_env / "many.csv", rows)
    parse = pd.read_csv

    def read_csv(source, *args, **kwargs):
        assert "many.csv" not in str(source), "pandas parsed a refused CSV"
        return parse(source, *args, **kwargs)

    monkeypatch.setattr(pd, "read_csv", read_csv)
    at = external_form("images", "many.csv")
    assert not at.exception, at.exception
    assert "Refused: 2,001 rows in the ground-truth CSV, more than the 2,000" in at.error[0].value
    assert not any(b.key == "evaluate_external_run" for b in at.button)


@pytest.mark.timeout(600)
def test_a_fifo_as_truth_csv_is_refused_without_reading_it(evaluate_env):
    os.mkfifo(evaluate_env / "pipe.csv")
    at = external_form("images", "pipe.csv")
    assert not at.exception, at.exception
    assert "Refused: the ground-truth CSV is not a regular file." in at.error[0].value


@pytest.mark.timeout(600)
def test_read_only_mode_offers_no_server_folder_and_no_conversion(evaluate_env, monkeypatch):
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    at = open_page("evaluate.py", TIMEOUT).run()
    assert not at.exception, at.exception
    assert not any(b.key == "evaluate_export_convert" for b in at.button)
    assert any("read-only demo converts no model" in i.value for i in at.info)
    at.radio(key="evaluate_split").set_value("external").run()
    assert at.radio(key="evaluate_external_mode").options == ["Upload files"]


def test_one_heavy_job_per_session_and_a_bounded_number_on_the_server(monkeypatch):
    def script():
        from ui.guard import heavy_job

        with heavy_job("The first job") as first:
            with heavy_job("A second job") as second:
                import streamlit as st

                st.write(f"first {first}, second {second}")

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert "first True, second False" in at.markdown[0].value
    assert at.warning[0].value == ("A second job did not start: this session is still running the first job; "
                                   "wait for it or stop it first.")
    assert not page_guard._running  # released once the job ends
    monkeypatch.setattr(page_guard, "_running", {f"s{k}": "x" for k in range(page_guard.HEAVY_JOBS_AT_ONCE)})
    with page_guard.heavy_job("A third job") as allowed:
        assert allowed is False


def test_run_logs_and_configurations_show_no_server_path_or_traceback(tmp_path, monkeypatch):
    runs_root = tmp_path / "srv" / "runs"
    monkeypatch.setenv("HAM_RUNS_DIR", str(runs_root))
    log = "\n".join([
        f"launch: {sys.executable} -m core.training.train --run-dir {runs_root}/r1 --data {tmp_path}/ham",
        "Traceback (most recent call last):",
        f'  File "{PROJECT}/core/train.py", line 3, in <module>',
        "    main()",
        "OSError: first",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        f'  File "{PROJECT}/core/data.py", line 9, in load',
        f"ValueError: {tmp_path}/ham/meta.csv: no dx column",
        "stopped",
    ])
    shown = page_guard.public_text(log)
    assert shown == ("launch: python -m core.training.train --run-dir runs/r1 --data ham\n"
                     "(traceback kept on the server) ValueError: meta.csv: no dx column\nstopped")
    config = page_guard.public_config({"run_dir": f"{runs_root}/r1", "data": {"dir": str(tmp_path)}, "epochs": 3})
    assert config == {"run_dir": "runs/r1", "data": {"dir": tmp_path.name}, "epochs": 3}


@pytest.mark.timeout(600)
def test_train_page_shows_a_failed_run_without_paths_or_traceback(tmp_path, monkeypatch, dead_pid):
    runs_root = tmp_path / "srv" / "runs"
    run = runs_root / "20250101-120000-mobilenet-v2"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "failed", "pid": dead_pid, "best": None,
                                                 "message": f"OSError: {run}/model.keras: gone"}))
    (run / "config.json").write_text(json.dumps({"arch": "mobilenet_v2", "run_dir": str(run)}))
    (run / "train.log").write_text(f"{sys.executable} -m core.training.train --run-dir {run}\nTraceback (most recent call "
                                   f'last):\n  File "{PROJECT}/core/train.py", line 1\nOSError: {run}/x: gone\n')
    monkeypatch.setenv("HAM_RUNS_DIR", str(runs_root))
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    at = open_page("train.py", TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.get("json")[0].proto.body == json.dumps({"arch": "mobilenet_v2", "run_dir": f"runs/{run.name}"})
    log_shown = at.code[0].value
    assert log_shown == (f"python -m core.training.train --run-dir runs/{run.name}\n"
                         f"(traceback kept on the server) OSError: runs/{run.name}/x: gone")
    assert any(e.value == f"OSError: runs/{run.name}/model.keras: gone" for e in at.error)


@pytest.mark.timeout(600)
def test_missing_dataset_and_model_name_the_variable_not_the_path_in_read_only_mode(tmp_path, monkeypatch):
    secret = tmp_path / "secret-location"
    monkeypatch.setenv("HAM_READ_ONLY", "1")
    monkeypatch.setenv("HAM10000_DIR", str(secret / "ham"))
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(secret / "model"))
    monkeypatch.setenv("HAM_RUNS_DIR", str(secret / "runs"))
    for page, needed in (("explore.py", "`HAM10000_DIR`"), ("predict.py", "`HAM_DEFAULT_MODEL`"),
                         ("evaluate.py", "`HAM_RUNS_DIR`")):
        at = open_page(page, TIMEOUT).run()
        assert not at.exception, at.exception
        text = page_text(at)
        assert needed in text and "secret-location" not in text, (page, text)


def test_the_warm_start_lets_a_running_page_go_first(monkeypatch):
    """Cold path (issue 24): TensorFlow's import waits for a page run in progress, never longer than its bound."""
    import threading

    from ui import warm

    monkeypatch.setattr(warm, "_page_runs", set())
    warm.keep_kernels_between_runs()  # what every page calls first
    assert warm._page_runs == {threading.get_ident()}
    clock = iter(range(10**6))
    monkeypatch.setattr(warm.time, "monotonic", lambda: float(next(clock)))  # one second per look
    monkeypatch.setattr(warm.time, "sleep", lambda s: None)
    warm._let_pages_run_first()  # a page that never ends: the warm start goes on at the bound
    assert next(clock) == warm.PAGES_FIRST_S + 1
    warm._clean_problem_modules()  # what Streamlit calls at the end of every run
    assert warm._page_runs == set()
    warm._let_pages_run_first()
    assert next(clock) == warm.PAGES_FIRST_S + 3  # no page running: the deadline read, no wait
