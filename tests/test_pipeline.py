"""The decode-once image cache and the tf.data pipeline fed from it."""

import numpy as np
import pytest
from PIL import Image

from core.dataset.images import decode_image, read_model_pixels, to_model_input
from core.training.pipeline import epoch_indices, load_or_build_cache, make_augmenter, make_dataset


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for i in range(5):
        pixels = np.full((30, 40, 3), i * 50, dtype=np.uint8)
        pixels[:, :20, 0] = 255  # left half red: lets flips be seen
        path = tmp_path / f"img{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_cache_holds_every_image_resized_and_is_reused(tmp_path, image_files):
    cache = load_or_build_cache(image_files, 16, tmp_path / "cache")
    assert cache.shape == (5, 16, 16, 3) and cache.dtype == np.uint8
    assert np.array_equal(cache[2], read_model_pixels(image_files[2], 16))
    files = list((tmp_path / "cache").glob("*.npy"))
    mtime = files[0].stat().st_mtime_ns
    again = load_or_build_cache(image_files, 16, tmp_path / "cache")
    assert np.array_equal(np.asarray(again), np.asarray(cache)) and files[0].stat().st_mtime_ns == mtime


def test_cache_pixels_are_exactly_what_serving_feeds_the_model(tmp_path):
    """One decoder: a 600x450 JPEG cached for training equals the Predict page's model input."""
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)).resize((600, 450)))
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(smooth).save(path, quality=90)
    cache = load_or_build_cache([str(path)], (144, 192), tmp_path / "cache")
    served = to_model_input(decode_image(path.read_bytes()), (144, 192))
    assert cache.shape == (1, 144, 192, 3)
    assert np.array_equal(cache[0].astype(np.float32), served)


def test_real_originals_cache_like_serving(real_dataset_dir, tmp_path):
    originals = sorted((real_dataset_dir.parent / "ham10000_originals").rglob("ISIC_*.jpg"))[:5]
    if not originals:
        pytest.skip("the 600x450 originals are not beside the dataset")
    cache = load_or_build_cache([str(p) for p in originals], (144, 192), tmp_path / "cache")
    for cached, path in zip(cache, originals):
        assert np.array_equal(cached.astype(np.float32), to_model_input(decode_image(path.read_bytes()), (144, 192)))


def test_a_killed_build_leaves_no_complete_looking_cache(tmp_path, image_files):
    image_files[3] = str(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError):
        load_or_build_cache(image_files, 16, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a cache nor its temporary file


def test_oversampling_draws_classes_equally():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    order = epoch_indices(labels, np.random.default_rng(0), oversample=True)
    shares = np.bincount(labels[order], minlength=3) / len(order)
    assert len(order) == len(labels) and np.allclose(shares, 1 / 3, atol=0.05)
    plain = epoch_indices(labels, np.random.default_rng(0), oversample=False)
    assert sorted(plain) == list(range(len(labels)))


def test_dataset_yields_batches_in_the_given_order(tmp_path, image_files):
    cache = load_or_build_cache(image_files, 16, tmp_path / "cache")
    onehot = np.eye(5, dtype=np.float32)
    batches = list(make_dataset(cache, [4, 0, 2], onehot, sample_weights=np.arange(5, dtype=np.float32), batch_size=2))
    x, y, w = (np.concatenate([b[i].numpy() for b in batches]) for i in range(3))
    assert x.shape == (3, 16, 16, 3) and x.dtype == np.float32
    assert np.array_equal(y.argmax(1), [4, 0, 2]) and np.array_equal(w, [4, 0, 2])
    assert np.array_equal(x[0], cache[4].astype(np.float32))


@pytest.mark.parametrize("level", ["light", "strong"])
def test_augmentation_keeps_shape_and_range_and_varies_per_image(level):
    import tensorflow as tf

    x = np.zeros((8, 16, 16, 3), np.float32)
    x[:, :, :8, 0] = 255
    out = make_augmenter(level, seed=1)(tf.constant(x), tf.constant(0, tf.int64)).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert len({out[i].tobytes() for i in range(8)}) > 1
    again = make_augmenter("light", seed=1)(tf.constant(x), tf.constant(0, tf.int64)).numpy()
    if level == "light":
        assert np.array_equal(out, again)


@pytest.mark.parametrize("level", ["light", "strong"])
def test_a_4_by_3_input_keeps_its_frame_under_augmentation(level):
    import tensorflow as tf

    x = np.zeros((16, 12, 16, 3), np.float32)
    x[:, :, :8, 0] = 255  # left half red
    out = make_augmenter(level, seed=3, square=False)(tf.constant(x), tf.constant(0, tf.int64)).numpy()
    assert out.shape == x.shape
    if level == "light":  # only flips: every output is one of the four flips of the input
        flips = [x[0], x[0][:, ::-1], x[0][::-1], x[0][::-1, ::-1]]
        assert all(any(np.array_equal(o, f) for f in flips) for o in out)
        assert len({o.tobytes() for o in out}) == 2  # red left or red right
