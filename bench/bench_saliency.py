"""Do saliency maps look at the lesion? Pointing game and energy-in-mask per method.

Over a fixed, seeded sample of HAM10000 images with lesion masks (the test split
of the model, from its ``splits.csv`` or ``predictions_test.csv``, else its val split, else any images), each
method explains the model's predicted class; a centred Gaussian is the
baseline every method should beat. With ``--curves``, deletion (lower is
better) and insertion (higher is better) AUCs are added.

    HAM10000_DIR=... .venv/bin/python bench/bench_saliency.py [--model DIR] [--n 20] [--curves]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from standin import model_folder  # noqa: E402

BASELINE = "Centred Gaussian (baseline)"


def sample_images(model_dir: Path, data_dir: Path, n: int, seed: int) -> tuple:
    """``(rows, source)``: ``n`` seeded dataset rows that have a mask."""
    from core.data import load_dataset

    table = load_dataset(data_dir)
    table = table[(table["mask_path"] != "") & (table["path"] != "")]
    source = "any images"
    for split in ("test", "val"):  # images the model did not train on
        held_out = table[table["image_id"].isin(held_out_ids(Path(model_dir), split))]
        if len(held_out):
            table, source = held_out, f"{split} split"
            break
    return table.sample(n=min(n, len(table)), random_state=seed), source


def held_out_ids(model_dir: Path, split: str) -> set:
    """Image ids of a held-out split, from ``splits.csv`` or the split's predictions file."""
    if (model_dir / "splits.csv").is_file():
        splits = pd.read_csv(model_dir / "splits.csv", dtype=str)
        return set(splits.loc[splits["split"] == split, "image_id"])
    predictions = model_dir / f"predictions_{split}.csv"
    return set(pd.read_csv(predictions, dtype=str)["image_id"]) if predictions.is_file() else set()


def score_image(row, predictor, explainer, methods, curves: bool) -> list:
    """One record per method for one image."""
    from core import faithfulness as ff
    from core.images import decode_image, read_mask, to_model_input
    from core.saliency import explain

    x = to_model_input(decode_image(Path(row.path).read_bytes()), predictor.input_size)
    mask = read_mask(row.mask_path)
    target = int(np.argmax(predictor.raw_probabilities(x[None])[0]))
    records = []
    for method in [BASELINE, *methods]:
        start = time.perf_counter()
        if method == BASELINE:
            saliency = ff.gaussian_baseline(x.shape[:2])
        else:
            saliency = explain(explainer, x, method, target)
        record = {"method": method, "ms": (time.perf_counter() - start) * 1000,
                  "pointing": ff.pointing_game(saliency, mask), "energy": ff.energy_in_mask(saliency, mask)}
        if curves:
            record["deletion_auc"] = ff.deletion_curve(predictor.predict_fn, x, saliency, target, steps=10).auc
            record["insertion_auc"] = ff.insertion_curve(predictor.predict_fn, x, saliency, target, steps=10).auc
        records.append(record)
    return records


def main(argv=None) -> None:
    from core.paths import dataset_dir
    from core.saliency import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: models/default)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: HAM10000_DIR)")
    parser.add_argument("--n", type=int, default=20, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="saliency methods (names as in the UI)")
    parser.add_argument("--curves", action="store_true", help="also deletion/insertion AUCs (slower)")
    args = parser.parse_args(argv)
    folder, note = model_folder(args.model)

    from core.predict import Predictor
    from core.saliency import Explainer

    predictor = Predictor(folder)
    explainer = Explainer(predictor.model, predictor.meta["last_conv_layer"])
    rows, source = sample_images(folder, args.data or dataset_dir(), args.n, args.seed)
    records = [r for row in rows.itertuples() for r in score_image(row, predictor, explainer, args.methods, args.curves)]
    table = pd.DataFrame(records).groupby("method", sort=False).mean()
    table = table.rename(columns={"pointing": "pointing hit rate", "energy": "energy in mask", "ms": "ms/map"})
    print(f"{note}; {len(rows)} images ({source}, seed {args.seed}); target = predicted class")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
