"""The metadata ablation: a model folder with and without its age/sex/site branch, paired.

Reads the folder's saved predictions of one split (after its temperature, single
view: what Predict shows by default), joins each image's age, sex and site from the
dataset's metadata, and scores: the image alone, the image with each field alone,
and the image with all three. For each: balanced accuracy, macro ROC AUC, log-loss,
ECE and melanoma sensitivity/specificity at the validation threshold for
specificity 0.80, with bootstrap 95 % intervals; then each variant minus the
image alone, with paired bootstrap intervals (the same resampled images).
The branch is the folder's ``metadata_branch.npz`` (``lesionlab metadata-branch
--write``). The test split is read only with ``--test``.

    .venv/bin/python bench/bench_metadata.py --model models/default [--test] [--markdown]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402
from bench_ensemble import N_BOOT, differences_table, folder_candidate, scores_table, stat_functions  # noqa: E402
from bench_model import markdown  # noqa: E402

from core.contracts import paths  # noqa: E402
from core.dataset.data import load_dataset  # noqa: E402
from core.evaluation import evaluate, metrics  # noqa: E402
from core.serving import metadata_branch as mb  # noqa: E402
from core.serving.folder import ModelFolder  # noqa: E402

IMAGE_ONLY = "image only"


def variants(folder: ModelFolder, branch: mb.MetadataBranch, split: str, dataset: pd.DataFrame) -> tuple:
    """``(y_true, {variant: probabilities}, the split's metadata table)`` of one split of the folder."""
    preds = evaluate.load_predictions(folder, split)
    classes = list(folder.classes)
    probs = folder_candidate(folder, preds["image_id"].to_numpy(), split)
    table = preds[["image_id"]].merge(dataset[["image_id", "age", "sex", "localization"]], on="image_id", how="left")
    out = {IMAGE_ONLY: probs}
    for field in mb.FIELDS:
        out[f"image + {field}"] = branch.apply_table(probs, table, keep=(field,))
    out["image + age, sex, site"] = branch.apply_table(probs, table)
    return metrics.encode_labels(preds["dx"], classes), out, table


def known_counts(table: pd.DataFrame) -> str:
    """How many images of the split have each field known."""
    encoded = {field: mb.encode_table(table, keep=(field,)).any(axis=1).sum() for field in mb.FIELDS}
    return ", ".join(f"{field} known for {n}" for field, n in encoded.items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset folder (default: $HAM10000_DIR)")
    parser.add_argument("--test", action="store_true", help="score the test split (read it once, for the final choice)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    args = parser.parse_args(argv)
    folder = ModelFolder.open(args.model or paths.default_model_dir())
    branch = mb.read(folder.path, folder.classes)
    if branch is None:
        raise SystemExit(f"{folder.path}: no {mb.path_in(folder.path).name} (lesionlab metadata-branch --write)")
    dataset = load_dataset(args.data_dir or paths.dataset_dir())
    split = "test" if args.test else "val"
    y_true, probs, table = variants(folder, branch, split, dataset)
    val_true, val_probs, _ = variants(folder, branch, "val", dataset) if args.test else (y_true, probs, table)
    classes = list(folder.classes)
    stats = {name: stat_functions(y_true, p, val_true, val_probs[name], classes) for name, p in probs.items()}
    boot = metrics.bootstrap_counts(len(y_true), N_BOOT, 0)
    show = markdown if args.markdown else (lambda t: t.to_string(index=False))
    print(f"{folder.path}: split {split}, n={len(y_true)} ({known_counts(table)}); single view, after T="
          f"{folder.temperature}; branch L2 {branch.meta.get('l2')}, fitted on {branch.meta.get('fitted_on')}; "
          f"bootstrap {N_BOOT} resamples, seed 0; mel threshold chosen on val for each variant\n")
    print(show(scores_table(stats, len(y_true), boot)), "\n")
    print(f"paired differences against the image alone ({split}, n={len(y_true)}):")
    print(show(differences_table(stats, IMAGE_ONLY, len(y_true), boot)), "\n")
    weights = branch.contributions()
    print("the branch's weights (log-odds added to each class when the feature is given):")
    print(show(weights.round(2).rename_axis("feature").reset_index()))


if __name__ == "__main__":
    main()
