"""``python -m core.explaining.explain``: one map and one picture per image, at the image's own size."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny_models import build_colour_model, save_model_folder

from core.explaining import explain as cli
from core.explaining.saliency import DEFAULT_METHOD

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model_folder(build_colour_model(), tmp_path_factory.mktemp("explain") / "model")


def red_left(size=(60, 45)) -> bytes:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[10:35, 5:25, 0] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_writes_map_picture_and_table_and_skips_junk(tmp_path, model_dir, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "ISIC_1.png").write_bytes(red_left())
    (images / "ISIC_2.png").write_bytes(red_left((80, 60)))
    (images / "junk.png").write_bytes(b"not an image")
    out = tmp_path / "maps"
    assert cli.main(["--model", str(model_dir), "--out", str(out), str(images)]) == 0
    first = np.load(out / "ISIC_1.npy")
    assert first.shape == (45, 60) and first.dtype == np.float32 and first.min() >= 0 and first.max() <= 1
    assert first[:, :30].sum() > first[:, 30:].sum()  # red lesion on the left: class akiec looks there
    assert np.load(out / "ISIC_2.npy").shape == (60, 80)
    with Image.open(out / "ISIC_2.png") as picture:
        assert picture.size == (80, 60)
    table = pd.read_csv(out / "explain.csv")
    assert list(table["image_id"]) == ["ISIC_1", "ISIC_2"]
    assert set(table["method"]) == {DEFAULT_METHOD} and set(table["target"]) == {"akiec"}
    assert "skipped" in capsys.readouterr().err


def test_target_and_method_options(tmp_path, model_dir):
    source = tmp_path / "a.png"
    source.write_bytes(red_left())
    out = tmp_path / "out"
    args = ["--model", str(model_dir), "--out", str(out), "--method", "Grad-CAM, stride 32", "--target", "bcc"]
    assert cli.main([*args, "--style", "blend", str(source)]) == 0
    assert pd.read_csv(out / "explain.csv")["target"].tolist() == ["bcc"]
    with pytest.raises(SystemExit):
        cli.main(["--model", str(model_dir), "--out", str(out), "--target", "xyz", str(source)])
    with pytest.raises(SystemExit):
        cli.main(["--model", str(model_dir), "--out", str(out), "--method", "Occlusion", str(source)])


def test_nothing_readable_fails(tmp_path, model_dir):
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8 broken")
    assert cli.main(["--model", str(model_dir), "--out", str(tmp_path / "o"), str(tmp_path / "junk.jpg")]) == 2


def test_same_stem_in_two_folders_keeps_both_maps(tmp_path, model_dir):
    for folder, size in (("a", (60, 45)), ("b", (80, 60))):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "ISIC_1.png").write_bytes(red_left(size))
    out = tmp_path / "maps"
    assert cli.main(["--model", str(model_dir), "--out", str(out), str(tmp_path / "in")]) == 0
    assert list(pd.read_csv(out / "explain.csv")["image_id"]) == ["a/ISIC_1", "b/ISIC_1"]
    assert np.load(out / "a" / "ISIC_1.npy").shape == (45, 60) and np.load(out / "b" / "ISIC_1.npy").shape == (60, 80)
    with Image.open(out / "b" / "ISIC_1.png") as picture:
        assert picture.size == (80, 60)
    assert not (out / "ISIC_1.npy").exists()
