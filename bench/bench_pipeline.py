"""Epoch throughput: the decode-once cache against a plain per-epoch JPEG-decode pipeline.

For each model (the compact CNN and MobileNetV2, fully trainable), both pipelines feed
the same images with the same augmentation and batch size, measured in this one run
after a warm-up epoch each. The cache pays off where decoding, not the model, limits
an epoch: the ratio is large for the compact CNN and near 1 for MobileNetV2 on 2 cores.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_pipeline.py [--n 640] [--size 128]
    .venv/bin/python bench/bench_pipeline.py --folder ../shared/data/ham10000_originals   # 600x450 JPEGs

``--folder`` takes the JPEGs of any folder (cycled up to ``--n``) instead of the dataset's images:
the publisher's HAM10000 images are 600x450, three times the side of the downscaled copy.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def jpeg_dataset(paths, onehot, size, batch_size):
    """The baseline: read, decode and resize every JPEG again in every epoch."""
    import tensorflow as tf

    from core.training.pipeline import make_augmenter

    augment = make_augmenter("light", seed=0)

    def load(path, y):
        img = tf.image.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(img, (size, size)), y, 1.0

    ds = tf.data.Dataset.from_tensor_slices((paths, onehot))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    ds = ds.enumerate().map(lambda i, b: (augment(b[0], i), b[1], b[2]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def timed_epochs(model, ds, n_images, epochs=2):
    model.fit(ds, epochs=1, verbose=0)  # warm-up: tracing and first-epoch costs
    start = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0)
    return n_images * epochs / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=640, help="images per epoch")
    parser.add_argument("--size", type=int, default=128, help="input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--folder", type=Path, default=None, help="use the JPEGs of this folder instead")
    args = parser.parse_args()

    import keras

    from core.contracts import paths
    from core.dataset.data import load_dataset
    from core.contracts.labels import CLASSES
    from core.training.models import build_model
    from core.training.pipeline import load_or_build_cache, make_dataset

    if args.folder:
        files = sorted(str(p) for p in args.folder.rglob("*.jpg"))
        image_paths = [files[i % len(files)] for i in range(args.n)]
        labels = np.arange(args.n) % len(CLASSES)
    else:
        frame = load_dataset(paths.dataset_dir()).sample(n=args.n, random_state=0)
        image_paths = frame["path"].tolist()
        labels = frame["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    onehot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    with Image.open(image_paths[0]) as first:
        source_size = "x".join(map(str, first.size))
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        images = load_or_build_cache(image_paths, args.size, Path(cache))
        build_seconds = time.perf_counter() - t0
        results = {}
        for arch, weights in (("small_cnn", "none"), ("mobilenet_v2", "offline-imagenet")):
            for name in ("jpeg-per-epoch", "cache"):
                keras.utils.set_random_seed(0)
                model = build_model(arch, args.size, len(CLASSES), weights=weights)
                model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4), loss="categorical_crossentropy")
                if name == "cache":
                    ds = make_dataset(images, np.arange(args.n), onehot, sample_weights=None,
                                      batch_size=args.batch_size, augment="light")
                else:
                    ds = jpeg_dataset(image_paths, onehot, args.size, args.batch_size)
                results[arch, name] = timed_epochs(model, ds, args.n)
    print(f"images={args.n} source={source_size} input={args.size}px batch={args.batch_size} cores={os.cpu_count()} augment=light")
    print(f"cache build (one-off decode): {build_seconds:.1f} s ({args.n / build_seconds:.0f} img/s)")
    for arch in ("small_cnn", "mobilenet_v2"):
        jpeg, cache = results[arch, "jpeg-per-epoch"], results[arch, "cache"]
        print(f"{arch:>13}: jpeg-per-epoch {jpeg:6.1f} img/s | cache {cache:6.1f} img/s | ratio {cache / jpeg:.2f}")


if __name__ == "__main__":
    main()
