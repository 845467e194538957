"""How often the out-of-distribution check flags images, by named set.

Sets (each printed with n, share flagged and score quantiles; the score is
"× the threshold", flagged above 1):

* **HAM10000 test**: the model's test split (from its ``splits.csv``, else its
  ``predictions_test.csv``); target ≤ 2 % flagged.
* **HAM10000 originals 600×450** (``--originals DIR`` with ``labels.csv``): the
  same kind of images at another resolution; they should stay unflagged. Most
  of them are in the training split, which the table says.
* **natural photos**: scikit-learn's ``flower.jpg``, whole (with flips and
  rescales) and as random crops. ``china.jpg`` is used to fit the detector
  (``core.serving.ood_negatives.FIT_PHOTOS``), so it is not benchmarked; target ≥ 98 %.
* **photos of DIR/** (``--photos DIR``): a folder of further held-out photos,
  whole and cropped (e.g. the sample images in scikit-image's wheel, extracted
  with ``pip download scikit-image --no-deps`` and ``unzip``: never committed).
* **trivial images**: black, white, flat colours, uniform noise, 1×1 images;
  target 100 %.

No set of skin photographed without a dermatoscope is included: none ships
with a package, and none could be made honestly here.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_ood.py \\
        [--model models/default] [--n 500] [--originals ../shared/data/ham10000_originals] [--photos DIR]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from core.contracts import paths  # noqa: E402
from core.dataset.images import decode_image  # noqa: E402
from core.serving.ood_negatives import HELD_OUT_PHOTOS, photo_crop, sample_photo  # noqa: E402

TARGETS = {"HAM10000 test": "≤ 2 %", "natural photos": "≥ 98 %", "trivial images": "100 %",
           "HAM10000 originals 600×450": "≈ 0 %"}


def whole_views(photo: np.ndarray) -> list:
    """A photo whole, flipped, turned, and at a quarter of its size."""
    from PIL import Image

    small = np.asarray(Image.fromarray(photo).resize((photo.shape[1] // 4, photo.shape[0] // 4)))
    return [photo, photo[:, ::-1], photo[::-1], np.rot90(photo).copy(), small]


def natural_photos(n: int, rng, folder: Path | None = None) -> list:
    """Held-out photos whole and as ``n`` random crops: the flower, or the photos of ``folder``."""
    if folder is None:
        photos = [sample_photo(name) for name in HELD_OUT_PHOTOS]
    else:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        photos = [decode_image(p.read_bytes()) for p in files]
    images = [view for photo in photos for view in whole_views(photo)]
    return images + [photo_crop(photos[i % len(photos)], rng) for i in range(n)]


def trivial(n: int, rng) -> list:
    """Black, white, flat colours, uniform noise and 1×1 images."""
    flat = [np.full((150, 200, 3), rng.integers(0, 256, 3), dtype=np.uint8) for _ in range(n)]
    noise = [rng.integers(0, 256, (150, 200, 3), dtype=np.uint8) for _ in range(n)]
    single = [rng.integers(0, 256, (1, 1, 3), dtype=np.uint8) for _ in range(n)]
    return [np.zeros((150, 200, 3), np.uint8), np.full((150, 200, 3), 255, np.uint8), *flat, *noise, *single]


def test_images(n: int, model_dir: Path, rng) -> list:
    """``n`` images of the model's test split."""
    from core.contracts import predictions
    from core.dataset.data import load_dataset
    from core.dataset.leakage import find_model_split
    from core.serving.modelio import read_metadata

    split = find_model_split(model_dir, read_metadata(model_dir))
    if split is not None:
        ids = split.loc[split["split"] == "test", "image_id"]
    else:
        ids = predictions.read_frame(model_dir / predictions.FILES["test"])["image_id"]
    frame = load_dataset(paths.dataset_dir()).set_index("image_id").loc[ids]
    chosen = frame.iloc[np.sort(rng.permutation(len(frame))[:n])]
    return [decode_image(Path(p).read_bytes()) for p in chosen["path"]]


def originals(folder: Path, model_dir: Path) -> tuple:
    """The 600×450 originals and a note on which splits of the model they belong to."""
    import pandas as pd

    from core.dataset.leakage import find_model_split
    from core.serving.modelio import read_metadata

    labels = pd.read_csv(Path(folder) / "labels.csv", dtype=str)
    images = [decode_image((Path(folder) / f).read_bytes()) for f in labels["file"]]
    split = find_model_split(model_dir, read_metadata(model_dir))
    note = "" if split is None else str(labels.merge(split, on="image_id")["split"].value_counts().to_dict())
    return images, note


def row(name: str, predictor, images: list) -> str:
    """One table line: n, share flagged, score p5 / p50 / p95."""
    predictions = []
    for start in range(0, len(images), 64):
        predictions += predictor.predict_batch(images[start : start + 64])
    scores = np.array([p.ood.score for p in predictions])
    flagged = np.mean([p.ood.flagged for p in predictions])
    target = TARGETS.get(name, "")
    return (f"{name:<30}{len(images):>6}{flagged:>9.1%}{target:>9}{np.percentile(scores, 5):>9.2f}"
            f"{np.median(scores):>7.2f}{np.percentile(scores, 95):>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n", type=int, default=500, help="images per set (test images, crops, each trivial kind)")
    parser.add_argument("--originals", type=Path, default=None, help="folder of the 600×450 originals (labels.csv)")
    parser.add_argument("--photos", type=Path, default=None, help="a folder of further held-out photos")
    args = parser.parse_args()
    from core.serving.predict import Predictor

    model_dir = args.model or paths.default_model_dir()
    predictor = Predictor(model_dir)
    rng = np.random.default_rng(0)
    entry = predictor.meta.get("ood") or {}
    print(f"model {model_dir}: OOD method {predictor.ood.method}, thresholds {entry.get('thresholds')}, "
          f"val flagged {entry.get('val_flagged', float('nan')):.2%} (n = {entry.get('n')})")
    print(f"{'set':<30}{'n':>6}{'flagged':>9}{'target':>9}{'p5':>9}{'p50':>7}{'p95':>7}")
    print(row("HAM10000 test", predictor, test_images(args.n, model_dir, rng)))
    if args.originals:
        images, note = originals(args.originals, model_dir)
        print(row("HAM10000 originals 600×450", predictor, images) + f"   splits {note}")
    print(row("natural photos", predictor, natural_photos(args.n, rng)))
    if args.photos:
        print(row(f"photos of {args.photos.name}/", predictor, natural_photos(args.n, rng, args.photos)))
    print(row("trivial images", predictor, trivial(max(1, args.n // 3), rng)))


if __name__ == "__main__":
    main()
