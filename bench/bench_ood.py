"""How often the out-of-distribution score flags images, by kind of image.

In-distribution: HAM10000 test images (the threshold was set on validation, so
about 1 % should be flagged). Out-of-distribution: crops of scikit-learn's two
sample photographs (a temple, a flower), uniform noise, flat colours, and
checkerboards. Prints the share flagged per set and the score quantiles.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_ood.py [--model models/default] [--n 300]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core import paths  # noqa: E402


def photo_crops(n: int, rng) -> list:
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    crops = []
    for i in range(n):
        photo = photos[i % 2]
        side = int(rng.integers(120, 400))
        top, left = rng.integers(0, photo.shape[0] - side // 4 * 3), rng.integers(0, photo.shape[1] - side)
        crops.append(photo[top : top + side // 4 * 3, left : left + side])
    return crops


def synthetic(n: int, rng) -> dict:
    yy, xx = np.mgrid[:150, :200]
    boards = [(((yy // s + xx // s) % 2) * 255).astype(np.uint8) for s in rng.integers(4, 40, n)]
    return {
        "uniform noise": [rng.integers(0, 256, (150, 200, 3), dtype=np.uint8) for _ in range(n)],
        "flat colour": [np.full((150, 200, 3), rng.integers(0, 256, 3), dtype=np.uint8) for _ in range(n)],
        "checkerboard": [np.stack([b] * 3, axis=-1) for b in boards],
    }


def dataset_images(n: int, model_dir: Path, rng) -> list:
    import pandas as pd

    from core.data import load_dataset
    from core.images import decode_image

    test_ids = pd.read_csv(model_dir / "predictions_test.csv")["image_id"]
    frame = load_dataset(paths.dataset_dir()).set_index("image_id").loc[test_ids]
    chosen = frame.iloc[rng.permutation(len(frame))[:n]]
    return [decode_image(Path(p).read_bytes()) for p in chosen["path"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", type=int, default=300, help="images per set")
    args = parser.parse_args()
    from core.predict import Predictor

    model_dir = args.model or paths.default_model_dir()
    predictor = Predictor(model_dir)
    rng = np.random.default_rng(0)
    sets = {"HAM10000 test (in distribution)": dataset_images(args.n, model_dir, rng),
            "photo crops (temple, flower)": photo_crops(args.n, rng), **synthetic(args.n // 3, rng)}
    print(f"model {model_dir}: OOD method {predictor.ood_method}, threshold {predictor.ood_threshold:.2f} "
          f"({predictor.meta.get('ood', {}).get('percentile')}th percentile of val)")
    print(f"{'set':<34}{'n':>5}{'flagged':>9}{'score p5':>10}{'p50':>8}{'p95':>8}")
    for name, images in sets.items():
        predictions = predictor.predict_batch(images)
        scores = np.array([p.ood.score for p in predictions])
        flagged = np.mean([p.ood.flagged for p in predictions])
        print(f"{name:<34}{len(images):>5}{flagged:>9.1%}{np.percentile(scores, 5):>10.1f}"
              f"{np.median(scores):>8.1f}{np.percentile(scores, 95):>8.1f}")


if __name__ == "__main__":
    main()
