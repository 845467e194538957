"""Quality and speed of the lesion segmenter: the figures of its model card.

Prints, for one split, Dice, Jaccard and the ISIC 2018 Task 1 thresholded Jaccard
with bootstrap 95 % intervals and n, and the per-class table — from the per-image
scores saved with the model, or, with ``--rescore``, from a fresh prediction of
the split (which must be the split the model was trained with: its hash is checked).
Then the latency of segmenting one upload (decode excluded, resize to the
model and back included), p50 and p90 after warm-up.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_segmentation.py \
        [--model models/segmenter] [--split test] [--rescore --split-file FILE] [--latency-images DIR]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from core.contracts import paths  # noqa: E402

from core.evaluation import segmentation_metrics

PROJECT = Path(__file__).resolve().parent.parent


def rescore(model_dir: Path, split: str, split_file: Path) -> pd.DataFrame:
    """Predict the split from the dataset and score every image at its own size."""
    from core.serving import segment
    from core.dataset.data import load_dataset
    from core.dataset.images import read_model_pixels
    from core.training.segment_train import score_split
    from core.dataset.splits import load_splits, split_hash

    segmenter = segment.Segmenter(model_dir)
    if split_hash(split_file) != segmenter.meta["split_sha256"]:
        raise SystemExit(f"{split_file}: not the split this model was trained with (hash differs)")
    frame = load_dataset(paths.dataset_dir()).merge(load_splits(split_file)[["image_id", "split"]], on="image_id")
    frame = frame[(frame["split"] == split) & (frame["mask_path"] != "")].reset_index(drop=True)
    batches = [np.stack([read_model_pixels(p, segmenter.input_size) for p in frame["path"][i : i + 64]])
               for i in range(0, len(frame), 64)]
    probs = np.concatenate([segmenter.probabilities(b) for b in batches])
    return score_split(frame, probs, segmenter.threshold)


def latency(model_dir: Path, folder: Path | None, n: int = 60) -> tuple[float, float, str]:
    """``(p50 ms, p90 ms, what)`` of ``Segmenter.segment`` on decoded images, after 5 warm-up calls."""
    from core.serving import segment
    from core.dataset.images import decode_image

    files = sorted(p for p in (folder or paths.dataset_dir() / "images").rglob("*.jpg"))[:n]
    if not files:
        raise SystemExit("no images to time: pass --latency-images DIR")
    images = [decode_image(p.read_bytes()) for p in files]
    segmenter = segment.Segmenter(model_dir)
    for rgb in images[:5]:
        segmenter.segment(rgb)
    times = []
    for rgb in images:
        started = time.perf_counter()
        segmenter.segment(rgb)
        times.append((time.perf_counter() - started) * 1000)
    what = f"{len(images)} images of {images[0].shape[1]}×{images[0].shape[0]} from {files[0].parent}"
    return float(np.percentile(times, 50)), float(np.percentile(times, 90)), what


def print_tables(scores: pd.DataFrame, split: str, source: str) -> None:
    """The summary with intervals and the per-class table."""
    print(f"split {split}, n = {len(scores)} images ({source})")
    summary = segmentation_metrics.summary(scores, n_boot=2000, seed=0)
    for row in summary.itertuples():
        print(f"  {row.metric:<22} {row.mean:.3f}  [95 % CI {row.low:.3f}, {row.high:.3f}]  n={row.n}")
    print("\nper class (Dice 95 % CI by bootstrap over images):")
    print(segmentation_metrics.per_class(scores).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=PROJECT / "models" / "segmenter", help="segmenter folder")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--rescore", action="store_true", help="predict the split again instead of reading saved scores")
    parser.add_argument("--split-file", type=Path, default=None, help="the split CSV (needed with --rescore)")
    parser.add_argument("--latency-images", type=Path, default=None,
                        help="folder of images to time (default: the dataset's images)")
    parser.add_argument("--latency-n", type=int, default=60, help="images to time")
    args = parser.parse_args(argv)
    if args.rescore:
        if not args.split_file:
            parser.error("--rescore needs --split-file")
        print_tables(rescore(args.model, args.split, args.split_file), args.split, "predicted now")
    else:
        print_tables(segmentation_metrics.load_scores(args.model, args.split), args.split,
                     f"saved scores in {args.model}")
    p50, p90, what = latency(args.model, args.latency_images, args.latency_n)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\nsegment latency after warm-up: p50 {p50:.1f} ms, p90 {p90:.1f} ms ({what}; "
          f"load average {load} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
