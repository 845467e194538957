"""The segmenter model, serving and the ``python -m core.serving.segment`` command line, on a tiny untrained U-Net."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny_segmenter import SIZE, save_tiny_segmenter

from core.serving import segment
from core.training import segmenter
from core.serving.modelio import ModelFolderError

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_segmenter(tmp_path_factory.mktemp("segmenter"))


def test_segmenter_is_a_flat_graph_with_a_sigmoid_mask_at_the_input_size():
    import keras

    model = segmenter.build_segmenter((64, 96), weights="none")
    assert model.output_shape == (None, 64, 96, 1)
    assert model.layers[-1].name == segment.OUTPUT_LAYER
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested backbone
    out = model.predict(np.random.default_rng(0).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32), verbose=0)
    assert out.min() >= 0 and out.max() <= 1


def test_input_sides_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        segmenter.build_segmenter((100, 128), weights="none")


def test_encoder_gets_the_offline_imagenet_weights_of_the_classifier():
    from core.training.models import build_model
    from core.training.torch_weights import offline_checkpoint_path

    try:
        offline_checkpoint_path()
    except (FileNotFoundError, ImportError, OSError) as err:
        pytest.skip(f"offline MobileNetV2 checkpoint not installed: {err}")
    seg = segmenter.build_segmenter(SIZE, weights="offline-imagenet")
    clf = build_model("mobilenet_v2", SIZE, n_classes=2, weights="offline-imagenet")
    for name in ("Conv1", "block_6_expand", "block_16_project"):
        np.testing.assert_array_equal(seg.get_layer(name).get_weights()[0], clf.get_layer(name).get_weights()[0])


def test_freezing_keeps_early_blocks_and_encoder_batchnorm_fixed():
    model = segmenter.build_segmenter(SIZE, weights="none")
    segmenter.set_encoder_trainable(model, "block_3")
    assert not model.get_layer("Conv1").trainable and not model.get_layer("block_2_expand").trainable
    assert model.get_layer("block_3_expand").trainable and model.get_layer("block_16_project").trainable
    assert not model.get_layer("block_5_expand_BN").trainable
    assert model.get_layer("up0_bn0").trainable and model.get_layer(segment.OUTPUT_LAYER).trainable
    segmenter.set_encoder_trainable(model, "all")
    assert not model.get_layer("block_16_project").trainable and model.get_layer("up4_conv1").trainable
    with pytest.raises(ValueError, match="freeze point"):
        segmenter.set_encoder_trainable(model, "block_99")


def test_mask_at_resizes_the_probability_to_the_image_and_thresholds():
    prob = np.zeros((4, 4), np.float32)
    prob[:, 2:] = 1.0
    mask = segment.mask_at(prob, (30, 40), threshold=0.5)
    assert mask.shape == (30, 40) and mask.dtype == bool
    assert mask[:, :15].sum() == 0 and mask[:, 25:].all()


def test_metadata_is_checked(tmp_path, tiny_folder):
    meta = segment.read_segmenter_metadata(tiny_folder)
    assert meta["task"] == "segmentation" and (meta["image_height"], meta["image_width"]) == SIZE
    assert meta["encoder"].startswith("mobilenet_v2") and "split_sha256" in meta
    (tmp_path / "model.json").write_text('{"classes": ["nv"], "image_size": 32}')
    with pytest.raises(ModelFolderError, match="not a segmenter"):
        segment.read_segmenter_metadata(tmp_path)
    with pytest.raises(ModelFolderError, match="not found"):
        segment.read_segmenter_metadata(tmp_path / "missing")
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelFolderError, match="not a JSON object"):
        segment.read_segmenter_metadata(tmp_path)


def test_segmenter_returns_a_mask_at_the_image_size(tiny_folder):
    segmenter = segment.Segmenter(tiny_folder)
    rgb = np.random.default_rng(1).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    mask = segmenter.segment(rgb)
    assert mask.shape == (45, 61) and mask.dtype == bool
    prob = segmenter.probabilities(np.zeros((2, *SIZE, 3), np.float32))
    assert prob.shape == (2, *SIZE)


def write_image(path, size, seed, fmt="JPEG"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def test_cli_writes_masks_at_each_image_size_and_a_measurements_csv(tmp_path, tiny_folder, capsys):
    images = tmp_path / "in"
    images.mkdir()
    write_image(images / "ISIC_0000001.jpg", (60, 45), 0)
    write_image(images / "lesion two.png", (33, 50), 1, fmt="PNG")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert segment.main(["--model", str(tiny_folder), "--out", str(out), str(images)]) == 0
    for name, size in (("ISIC_0000001", (60, 45)), ("lesion two", (33, 50))):
        with Image.open(out / f"{name}.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    table = pd.read_csv(out / segment.MEASUREMENTS_FILE)
    assert sorted(table["image_id"]) == ["ISIC_0000001", "lesion two"]
    assert {"area_share", "asymmetry_major", "asymmetry_minor", "compactness", "colours"} <= set(table.columns)
    assert "skipped" in capsys.readouterr().err


def test_cli_fails_when_no_image_is_readable(tmp_path, tiny_folder):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    assert segment.main(["--model", str(tiny_folder), "--out", str(tmp_path / "out"), str(tmp_path / "bad.png")]) == 2


def test_a_full_threshold_segments_everything_and_the_mask_matches_the_png(tmp_path):
    folder = save_tiny_segmenter(tmp_path / "all", threshold=0.0)
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(buffer, format="PNG")
    table = segment.segment_sources(segment.Segmenter(folder), [("x/a.png", buffer.getvalue())], tmp_path / "o")
    assert table.loc[0, "area_share"] == 1.0 and (table.loc[0, "height"], table.loc[0, "width"]) == (20, 30)
    assert (np.asarray(Image.open(tmp_path / "o" / "a.png")) == 255).all()


def test_same_stem_in_two_folders_keeps_both_masks(tmp_path, tiny_folder):
    for folder, size in (("a", (60, 45)), ("b", (33, 50))):
        (tmp_path / "in" / folder).mkdir(parents=True)
        write_image(tmp_path / "in" / folder / "ISIC_1.jpg", size, 0)
    out = tmp_path / "out"
    assert segment.main(["--model", str(tiny_folder), "--out", str(out), str(tmp_path / "in")]) == 0
    table = pd.read_csv(out / segment.MEASUREMENTS_FILE)
    assert list(table["image_id"]) == ["a/ISIC_1", "b/ISIC_1"] and list(table["width"]) == [60, 33]
    for folder, size in (("a", (60, 45)), ("b", (33, 50))):
        with Image.open(out / folder / "ISIC_1.png") as mask:
            assert mask.size == size
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", segment.MEASUREMENTS_FILE]
