"""Input pipeline: decode every image once into a cache, then feed tf.data from it.

Decoding and resizing JPEGs dominates a CPU epoch. The cache holds all images of
a dataset at one size as a memory-mapped ``.npy`` (uint8, N×H×W×3) keyed by the
image list and the size, so later epochs and later runs only copy bytes.

Files are decoded by ``core.dataset.images``, the Predict page's own decoder, so the
temperature and the OOD thresholds fitted on cached pixels hold for uploads.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from core.contracts.runfolder import write_atomic, write_text_atomic
from core.dataset.images import as_hw, read_model_pixels

DECODER = "core.dataset.images.read_model_pixels v1"  # part of the cache key: a decoder change rebuilds caches


def cache_key(paths: list[str], size) -> str:
    """A name for the cache of these files at this size (a side, or ``(height, width)``)."""
    height, width = as_hw(size)
    digest = hashlib.sha256(f"{height}x{width}\n{DECODER}\n".encode())
    for p in paths:
        stat = os.stat(p)
        digest.update(f"{p}\t{stat.st_size}\t{int(stat.st_mtime)}\n".encode())
    return f"images_{width}x{height}px_{len(paths)}_{digest.hexdigest()[:16]}"


def load_or_build_cache(
    paths: list[str], size, cache_root: Path, *, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Return all images at ``size`` (a side, or ``(height, width)``) as a read-only memory map, building it if needed.

    The cache is written under a temporary name and renamed when complete, so a
    killed build never leaves a cache that looks finished.
    """
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root / f"{cache_key(paths, size)}.npy"
    if not final.is_file():
        height, width = as_hw(size)
        write_atomic(final, lambda tmp: _decode_into(tmp, paths, (height, width), progress))
        write_text_atomic(final.with_suffix(".json"), json.dumps({"size": [height, width], "paths": paths}))
    return np.load(final, mmap_mode="r")


def _decode_into(tmp: Path, paths: list[str], size: tuple, progress) -> None:
    """Decode every image into a new ``.npy`` memory map at ``tmp``, one at a time."""
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), *size, 3))
    for i, path in enumerate(paths):
        array[i] = read_model_pixels(path, size)
        if progress and (i % 200 == 0 or i == len(paths) - 1):
            progress(i + 1, len(paths))
    array.flush()
    del array  # closes the memory map before the file is renamed


def epoch_indices(labels: np.ndarray, rng: np.random.Generator, oversample: bool) -> np.ndarray:
    """The order of training examples for one epoch.

    With ``oversample``, every class is drawn equally often (with replacement)
    for as many draws as there are examples; otherwise a plain permutation.
    """
    if not oversample:
        return rng.permutation(len(labels))
    classes = np.unique(labels)
    per_class = [np.flatnonzero(labels == c) for c in classes]
    picks = rng.integers(0, len(classes), size=len(labels))
    return np.array([rng.choice(per_class[c]) for c in picks])


def make_dataset(images, order, labels_onehot, *, sample_weights, batch_size, augment="none", seed=0):
    """A batched tf.data pipeline over ``images[order]`` yielding (x, y, w).

    Args:
        images: the cache array (N×H×W×3 uint8), indexed by ``order``.
        order: example indices in the order to feed them.
        labels_onehot: N×K float32 one-hot labels.
        sample_weights: N float32 weights (class weights), or None for ones.
        batch_size: examples per batch.
        augment: ``none``, ``light`` (flips, 90° rotations) or ``strong``
            (plus free rotation, zoom and colour jitter).
        seed: seed for the augmentation ops.
    """
    import tensorflow as tf

    weights = np.ones(len(labels_onehot), np.float32) if sample_weights is None else sample_weights
    height, width = images.shape[1:3]

    def gather(idx):
        return images[idx].astype(np.float32), labels_onehot[idx], weights[idx]

    def load(batch_idx):
        x, y, w = tf.numpy_function(gather, [batch_idx], (tf.float32, tf.float32, tf.float32))
        x.set_shape([None, height, width, 3])
        y.set_shape([None, labels_onehot.shape[1]])
        w.set_shape([None])
        return x, y, w

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(order, dtype=np.int64)).batch(batch_size)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if augment != "none":
        augmenter = make_augmenter(augment, seed, square=height == width)
        ds = ds.enumerate().map(lambda i, b: (augmenter(b[0], i), b[1], b[2]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_augmenter(level: str, seed: int = 0, square: bool = True):
    """A batch augmentation function ``f(x, batch_index)``: each image gets its own transform.

    ``light``: the 8 flips/90-degree rotations of a square input; a 4:3 input
    keeps its frame, so it gets the 4 flips (180-degree turn included). ``strong``: those, plus a random
    resized crop (70-100 % of the area, aspect 3:4 to 4:3) and brightness,
    contrast and saturation jitter. Exact 90-degree turns and one
    ``crop_and_resize`` per batch keep ``strong`` nearly as cheap as ``light``.
    All draws are stateless, seeded by (seed, batch index): the same seed gives
    the same augmented epoch.
    """
    import tensorflow as tf

    def augment(x, batch_index):
        n = tf.shape(x)[0]
        key = tf.stack([tf.cast(seed, tf.int64), batch_index])
        draws = tf.random.stateless_uniform([3, n, 1, 1, 1], seed=key)
        x = tf.where(draws[0] < 0.5, tf.reverse(x, axis=[2]), x)
        x = tf.where(draws[1] < 0.5, tf.reverse(x, axis=[1]), x)
        if square:
            x = tf.where(draws[2] < 0.5, tf.transpose(x, [0, 2, 1, 3]), x)
        if level == "strong":
            x = _random_resized_crop(x, key + [0, 1 << 20])
            x = _colour_jitter(x, key + [0, 2 << 20])
        return x

    return augment


def _random_resized_crop(x, seed):
    """Crop a random box of 70-100 % of each image's area and resize it back."""
    import tensorflow as tf

    n, size = tf.shape(x)[0], tf.shape(x)[1:3]
    draws = tf.random.stateless_uniform([4, n], seed=seed)
    area = 0.7 + 0.3 * draws[0]
    aspect = tf.exp(tf.math.log(0.75) + (tf.math.log(4 / 3) - tf.math.log(0.75)) * draws[1])
    h = tf.minimum(tf.sqrt(area / aspect), 1.0)
    w = tf.minimum(tf.sqrt(area * aspect), 1.0)
    top = (1.0 - h) * draws[2]
    left = (1.0 - w) * draws[3]
    boxes = tf.stack([top, left, top + h, left + w], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(n), size)


def _colour_jitter(x, seed):
    """Per-image brightness, contrast and saturation jitter on 0..255 images."""
    import tensorflow as tf

    draws = tf.random.stateless_uniform([3, tf.shape(x)[0], 1, 1, 1], seed=seed)
    brightness = draws[0] * 40.0 - 20.0
    contrast = 0.8 + 0.4 * draws[1]
    saturation = 0.8 + 0.4 * draws[2]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * contrast + mean + brightness
    gray = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - gray) * saturation + gray
    return tf.clip_by_value(x, 0.0, 255.0)
