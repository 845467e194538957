"""Epoch throughput: the decode-once cache against a plain per-epoch JPEG-decode pipeline.

Same model (MobileNetV2, offline ImageNet init, fully trainable), same images, same
batch size, both measured in this one run after a warm-up epoch each.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_pipeline.py [--n 640] [--size 128]
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


def jpeg_dataset(paths, onehot, size, batch_size):
    """The baseline: read and decode every JPEG again in every epoch."""
    import tensorflow as tf

    def load(path, y):
        img = tf.image.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(img, (size, size)), y

    ds = tf.data.Dataset.from_tensor_slices((paths, onehot))
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    args = parser.parse_args()

    import keras

    from core import paths
    from core.data import load_dataset
    from core.labels import CLASSES
    from core.models import build_model
    from core.pipeline import load_or_build_cache, make_dataset

    frame = load_dataset(paths.dataset_dir()).sample(n=args.n, random_state=0)
    labels = frame["dx"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    onehot = np.eye(len(CLASSES), dtype=np.float32)[labels]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        images = load_or_build_cache(frame["path"].tolist(), args.size, Path(cache))
        build_seconds = time.perf_counter() - t0
        results = {}
        for name in ("jpeg-per-epoch", "cache"):
            keras.utils.set_random_seed(0)
            model = build_model("mobilenet_v2", args.size, len(CLASSES), "offline-imagenet")
            model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-4), loss="categorical_crossentropy")
            if name == "cache":
                ds = make_dataset(images, np.arange(args.n), onehot, None, args.batch_size, augment="light")
            else:
                ds = jpeg_dataset(frame["path"].tolist(), onehot, args.size, args.batch_size)
            results[name] = timed_epochs(model, ds, args.n)
    print(f"images={args.n} size={args.size}px batch={args.batch_size} cores={os.cpu_count()}")
    print(f"cache build (one-off decode): {build_seconds:.1f} s ({args.n / build_seconds:.0f} img/s)")
    for name, rate in results.items():
        print(f"{name:>15}: {rate:6.1f} img/s")
    print(f"ratio cache / jpeg-per-epoch: {results['cache'] / results['jpeg-per-epoch']:.2f}")


if __name__ == "__main__":
    main()
