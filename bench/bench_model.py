"""Quality of a model folder from its saved predictions: the figures of its model card.

Prints, for one split, the headline metrics with bootstrap 95 % intervals, melanoma
sensitivity at specificity 0.80 (both read off the split's own ROC curve and with
the threshold chosen on validation, then applied), calibration before and after
the model's temperature, the per-class table and, when the dataset is present, the
subgroup audit. Nothing is re-predicted.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_model.py [--model models/default] [--split test]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from core import calibration, evaluate, metrics, modelio, paths  # noqa: E402

SPECIFICITY = 0.80


def sensitivity_at_specificity(y_bin, scores, specificity: float = SPECIFICITY) -> float:
    """The best sensitivity the ROC curve reaches with specificity at least ``specificity``."""
    fpr, tpr, _ = roc_curve(y_bin, scores)
    return float(tpr[fpr <= 1 - specificity].max())


def threshold_for_specificity(y_bin, scores, specificity: float = SPECIFICITY) -> float:
    """The lowest threshold whose specificity on these cases is at least ``specificity``."""
    negatives = np.sort(np.asarray(scores)[~np.asarray(y_bin, dtype=bool)])
    return float(negatives[int(np.ceil(specificity * len(negatives))) - 1]) + 1e-12


def melanoma_rows(model_dir: Path, split: str, y_true, probs, classes) -> list:
    k = list(classes).index("mel")
    is_mel = y_true == k
    rows = [("mel sensitivity at specificity 0.80 (this split's ROC)", sensitivity_at_specificity(is_mel, probs[:, k]))]
    val_true, val_probs = evaluate.arrays(evaluate.load_predictions(model_dir, "val"), classes)
    threshold = threshold_for_specificity(val_true == k, val_probs[:, k])
    point = metrics.operating_point(is_mel, probs[:, k], threshold)
    rows += [(f"mel threshold for specificity 0.80 on val (n={len(val_true)})", threshold),
             ("  applied here: sensitivity", point["sensitivity"]), ("  applied here: specificity", point["specificity"]),
             ("  applied here: PPV", point["ppv"])]
    return rows


def calibration_rows(meta: dict, y_true, probs) -> list:
    rows = [("ECE (15 bins, top label), uncalibrated", calibration.expected_calibration_error(probs, y_true)),
            ("Brier score, uncalibrated", calibration.brier_score(probs, y_true))]
    if meta.get("temperature"):
        scaled = calibration.apply_temperature(probs, meta["temperature"])
        rows += [(f"ECE after temperature T={meta['temperature']:.3f} (fitted on val)",
                  calibration.expected_calibration_error(scaled, y_true)),
                 ("Brier score after temperature", calibration.brier_score(scaled, y_true))]
    return rows


def subgroups(predictions: pd.DataFrame, y_true, probs, classes) -> pd.DataFrame | None:
    from core.data import DatasetError, load_dataset

    try:
        meta = load_dataset(paths.dataset_dir())
    except DatasetError:
        return None
    joined = predictions[["image_id"]].merge(meta, on="image_id", how="left")
    groups = pd.DataFrame({"sex": joined["sex"], "age_band": metrics.age_band(joined["age"]),
                           "localization": joined["localization"], "dx_type": joined["dx_type"]})
    return metrics.subgroup_audit(y_true, probs, groups, classes)


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table (pandas needs the tabulate package for its own)."""
    cells = table.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.to_numpy()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    args = parser.parse_args()
    model_dir = args.model or paths.default_model_dir()
    meta = modelio.read_metadata(model_dir)
    classes = meta["classes"]
    predictions = evaluate.load_predictions(model_dir, args.split)
    y_true, probs = evaluate.arrays(predictions, classes)
    show = markdown if args.markdown else (lambda t: t.to_string(index=False, float_format="%.3f"))
    print(f"model {model_dir} ({meta.get('arch')}, {meta.get('image_size')} px), split {args.split}, n={len(y_true)}, "
          f"split sha256 {str(meta.get('split_sha256'))[:12]}\n")
    print(show(metrics.headline(y_true, probs, classes, n_boot=1000, seed=0).drop(columns="metric")), "\n")
    for label, value in melanoma_rows(model_dir, args.split, y_true, probs, classes) + calibration_rows(meta, y_true, probs):
        print(f"{label}: {value:.4f}")
    table = metrics.class_table(y_true, probs, classes)
    print("\n" + show(table.reset_index() if "class" not in table.columns else table))
    audit = subgroups(predictions, y_true, probs, classes)
    print("\n" + (show(audit) if audit is not None else "subgroup audit skipped: dataset not found (set HAM10000_DIR)"))


if __name__ == "__main__":
    main()
