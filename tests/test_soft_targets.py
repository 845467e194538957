"""The soft-targets file: every image of the split, every teacher after its temperature, every flip."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import class_colour
from core.training import soft_targets
from core.serving.calibration import apply_temperature
from core.dataset.data import load_dataset
from core.dataset.images import read_model_pixels
from core.contracts.labels import CLASSES
from core.dataset.splits import load_splits, make_splits, save_splits, split_hash
from tiny_models import build_nearest_colour_model, build_tiny_model, save_model_folder

HW = (30, 40)


@pytest.fixture
def split_file(tmp_path, tiny_dataset):
    path = tmp_path / "splits.csv"
    save_splits(make_splits(load_dataset(tiny_dataset), seed=42), path)
    return path


def _teacher(folder, model, split_file, temperature):
    return save_model_folder(model, folder, temperature=temperature, extra={"split_sha256": split_hash(split_file)})


def _position_model(seed: int = 3):
    """A teacher that looks at where colours are (flattened pixels), so each flip gets its own answer."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*HW, 3), name="image")
    x = keras.layers.Rescaling(scale=1.0 / 255.0)(inputs)
    # A 1x1 convolution named as model.json's last_conv_layer requires; the Dense layer still sees every pixel.
    x = keras.layers.Conv2D(filters=3, kernel_size=1, name="last_conv")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(units=len(CLASSES), activation="softmax",
                                 kernel_initializer=keras.initializers.RandomNormal(stddev=0.05))(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def _flipped(path, how):
    """The model pixels of a file, flipped by PIL (not by the code under test)."""
    image = Image.fromarray(read_model_pixels(path, HW))
    ops = {"none": [], "horizontal": [Image.Transpose.FLIP_LEFT_RIGHT], "vertical": [Image.Transpose.FLIP_TOP_BOTTOM],
           "both": [Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM]}[how]
    for op in ops:
        image = image.transpose(op)
    return np.asarray(image, np.float32)


def test_every_image_of_the_split_gets_each_teachers_calibrated_probabilities_on_each_flip(
        tmp_path, tiny_dataset, split_file, monkeypatch):
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    conv = _position_model()
    colour = build_nearest_colour_model(np.stack([class_colour(k) for k in range(len(CLASSES))]), *HW)
    teachers = [_teacher(tmp_path / "conv", conv, split_file, 1.5), _teacher(tmp_path / "colour", colour, split_file, 0.8)]
    out = tmp_path / "soft.npz"
    assert soft_targets.main(["--out", str(out), "--split-file", str(split_file), "--data-dir", str(tiny_dataset),
                              "--teacher", str(teachers[0]), "--teacher", str(teachers[1])]) == 0

    found = soft_targets.read(out)
    splits = load_splits(split_file).set_index("image_id")
    assert sorted(found.image_id) == sorted(splits.index) and set(found.split) == {"train", "val", "test"}
    assert (found.split == splits.loc[found.image_id, "split"].to_numpy()).all()
    assert found.teachers == ["conv", "colour"] and found.probs.shape == (2, len(splits), 4, len(CLASSES))
    assert [t["temperature"] for t in found.meta["teachers"]] == [1.5, 0.8]
    assert found.meta["split_sha256"] == split_hash(split_file) and found.meta["flips"] == list(soft_targets.FLIPS)
    paths = load_dataset(tiny_dataset).set_index("image_id").loc[found.image_id[:6], "path"]
    for f, how in enumerate(soft_targets.FLIPS):
        x = np.stack([_flipped(p, how) for p in paths])
        expected = apply_temperature(conv(x, training=False).numpy(), 1.5)
        np.testing.assert_allclose(found.probs[0, :6, f], expected, atol=1e-5)
    assert not np.allclose(found.probs[0, :, 0], found.probs[0, :, 1], atol=0.02), "the teacher answers each flip differently"
    np.testing.assert_allclose(found.ensemble, found.probs.mean(axis=(0, 2)), atol=1e-6)
    # the nearest-colour teacher knows every class of the generated images
    assert (found.probs[1].mean(axis=1).argmax(axis=1) == [CLASSES.index(d) for d in found.dx]).all()


def test_a_teacher_added_later_is_the_only_one_predicted(tmp_path, tiny_dataset, split_file, monkeypatch):
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    first = _teacher(tmp_path / "first", build_tiny_model(HW, seed=1), split_file, 1.2)
    later = _teacher(tmp_path / "later", build_tiny_model(HW, seed=2), split_file, 1.0)
    predicted = []
    real = soft_targets.predict_teacher
    monkeypatch.setattr(soft_targets, "predict_teacher",
                        lambda d, *a, **k: predicted.append(d.name) or real(d, *a, **k))
    out = tmp_path / "soft.npz"
    alone = soft_targets.build(out, [first], split_file, data_dir=tiny_dataset)
    both = soft_targets.build(out, [first, later], split_file, data_dir=tiny_dataset)
    assert predicted == ["first", "later"]
    np.testing.assert_array_equal(both.probs[0], alone.probs[0])
    assert soft_targets.read(out).teachers == ["first", "later"]
    # a changed temperature is a different teacher: predicted again
    save_model_folder(build_tiny_model(HW, seed=1), first, temperature=2.0,
                      extra={"split_sha256": split_hash(split_file)})
    soft_targets.build(out, [first, later], split_file, data_dir=tiny_dataset)
    assert predicted == ["first", "later", "first"]


def test_a_teacher_of_another_split_or_without_temperature_is_refused(tmp_path, tiny_dataset, split_file, capsys):
    other = save_model_folder(build_tiny_model(HW), tmp_path / "other", temperature=1.0)  # split hash 000…
    raw = _teacher(tmp_path / "raw", build_tiny_model(HW), split_file, None)
    for teacher, words in ((other, "trained on split 000000000000"), (raw, "no temperature")):
        code = soft_targets.main(["--out", str(tmp_path / "soft.npz"), "--split-file", str(split_file),
                                  "--data-dir", str(tiny_dataset), "--teacher", str(teacher)])
        assert code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "soft.npz").exists()


def test_training_targets_follow_the_run_order_at_the_distillation_temperature(tmp_path, tiny_dataset, split_file,
                                                                              monkeypatch):
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    teacher = _teacher(tmp_path / "t", build_tiny_model(HW, seed=5), split_file, 1.3)
    out = tmp_path / "soft.npz"
    found = soft_targets.build(out, [teacher], split_file, data_dir=tiny_dataset)
    ids = list(found.image_id[::-1][:10])
    targets, summary = soft_targets.training_targets(out, ids, split_sha256=found.meta["split_sha256"], temperature=3.0)
    np.testing.assert_allclose(targets, apply_temperature(found.ensemble[::-1][:10], 3.0), atol=1e-6)
    assert summary["teachers"] == [{"name": "t", "arch": "tiny_cnn", "temperature": 1.3}]
    json.dumps(summary)  # goes into the run's config.json
    with pytest.raises(soft_targets.SoftTargetsError, match="made on split"):
        soft_targets.training_targets(out, ids, split_sha256="f" * 64, temperature=3.0)
    with pytest.raises(soft_targets.SoftTargetsError, match="1 images have no soft targets"):
        soft_targets.training_targets(out, ids + ["ISIC_missing"], split_sha256=found.meta["split_sha256"],
                                      temperature=3.0)
