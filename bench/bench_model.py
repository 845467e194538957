"""Quality of a model folder from its saved predictions: the figures of its model card.

Prints, for one split, the headline metrics with bootstrap 95 % intervals, melanoma
sensitivity at specificity 0.80 (both read off the split's own ROC curve and with
the threshold chosen on validation, then applied), calibration before and after
the model's temperature, the per-class table and, when the dataset is present, the
subgroup audit. Nothing is re-predicted, except with ``--tta``.

With ``--compare DIR`` (repeatable; default: ``models/v1`` and ``models/v2``, the models
shipped before, where present) it first prints the models side by side on the same
images, with the paired bootstrap interval of the model's difference against each
(every model resampled with the same draws).
``--tta`` re-predicts the split from the dataset with test-time augmentation
(the flips that keep the frame) and prints the headline again.

    HAM10000_DIR=../shared/data/ham10000 .venv/bin/python bench/bench_model.py [--model models/default] [--split test]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from core.serving import calibration, modelio  # noqa: E402

from core.evaluation import evaluate, metrics

from core.contracts import paths

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


def _mel_at_val_threshold(model_dir: Path, y_true, probs, classes) -> tuple:
    """(threshold, called positive) with the threshold chosen on the model's own validation split."""
    k = list(classes).index("mel")
    val_true, val_probs = evaluate.arrays(evaluate.load_predictions(model_dir, "val"), classes)
    threshold = threshold_for_specificity(val_true == k, val_probs[:, k])
    return threshold, probs[:, k] >= threshold


def paired_stats(model_dir: Path, split: str, classes) -> tuple:
    """(image ids, functions of bootstrap weights) for the metrics compared side by side."""
    frame = evaluate.load_predictions(model_dir, split).sort_values("image_id").reset_index(drop=True)
    y_true, probs = evaluate.arrays(frame, classes)
    k, n_classes = list(classes).index("mel"), len(classes)
    is_mel = y_true == k
    _, called = _mel_at_val_threshold(model_dir, y_true, probs, classes)
    y_pred = metrics.predicted_labels(probs)
    temperature = modelio.read_metadata(Path(model_dir)).get("temperature")
    served = calibration.apply_temperature(probs, temperature) if temperature else probs
    stats = {
        "balanced accuracy": lambda w: metrics.weighted_balanced_accuracy(w, y_true, y_pred, n_classes=n_classes),
        "macro ROC AUC": lambda w: metrics.weighted_macro_auc(w, y_true, probs, n_classes=n_classes),
        "mel ROC AUC": lambda w: metrics.weighted_auc(w, is_mel, probs[:, k]),
        "mel sensitivity, val threshold for spec 0.80": lambda w: metrics.weighted_rate(w, called, is_mel),
        "mel specificity, same threshold": lambda w: metrics.weighted_rate(w, ~called, ~is_mel),
        "log-loss after T": lambda w: calibration.weighted_nll(w, y_true, served),
        "ECE after T (15 bins, top label)": lambda w: calibration.weighted_ece(w, y_true, served),
    }
    return frame["image_id"].to_numpy(), stats


def side_by_side(model_dirs: list, split: str, classes, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Each metric for every model, then the last minus each other one with its paired bootstrap 95 % interval."""
    loaded = [paired_stats(d, split, classes) for d in model_dirs]
    ids = loaded[0][0]
    if any(len(i) != len(ids) or (i != ids).any() for i, _ in loaded):
        raise SystemExit(f"the models' {split} predictions cover different images: no paired comparison")
    boot, ones = metrics.bootstrap_counts(len(ids), n_boot, seed), np.ones((1, len(ids)))
    names = [_name(d) for d in model_dirs]
    rows = []
    for metric in loaded[0][1]:
        fns = [stats[metric] for _, stats in loaded]
        row = {"metric": metric, **{name: float(f(ones)[0]) for name, f in zip(names, fns)}}
        for name, fn in zip(names[:-1], fns[:-1]):
            low, high = np.nanpercentile(fns[-1](boot) - fn(boot), [2.5, 97.5])
            row[f"{names[-1]} − {name} [95 % CI]"] = f"{float(fns[-1](ones)[0] - fn(ones)[0]):+.3f} [{low:+.3f}, {high:+.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def _name(model_dir: Path) -> str:
    """A column name for a model folder: its folder name, or ``default`` for the shipped one."""
    model_dir = Path(model_dir)
    return "default" if model_dir.resolve() == paths.default_model_dir().resolve() else model_dir.name


def tta_headline(model_dir: Path, split: str, classes) -> pd.DataFrame:
    """The headline metrics re-predicted from the dataset's images, without and with test-time augmentation."""
    from core.dataset.data import load_dataset
    from core.dataset.images import read_model_pixels
    from core.serving.predict import Predictor

    frame = evaluate.load_predictions(model_dir, split)
    paths_by_id = load_dataset(paths.dataset_dir()).set_index("image_id")["path"]
    predictor = Predictor(model_dir)
    pixels = np.stack([read_model_pixels(p, predictor.input_size) for p in paths_by_id.loc[frame["image_id"]]])
    probs, probs_tta = ([predictor.raw_probabilities(chunk.astype(np.float32), tta=tta) for chunk in np.array_split(pixels, 16)]
                        for tta in (False, True))
    y_true = metrics.encode_labels(frame["dx"], classes)
    table = metrics.headline(y_true, np.concatenate(probs), classes, n_boot=1000, seed=0)
    tta = metrics.headline(y_true, np.concatenate(probs_tta), classes, n_boot=1000, seed=0)
    return table[["label", "value", "ci_low", "ci_high", "n"]].join(tta[["value", "ci_low", "ci_high"]].add_suffix(" (TTA)"))


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
    from core.dataset.data import DatasetError, load_dataset

    try:
        meta = load_dataset(paths.dataset_dir())
    except DatasetError:
        return None
    joined = predictions[["image_id"]].merge(meta, on="image_id", how="left")
    groups = pd.DataFrame({"sex": joined["sex"], "age_band": metrics.age_band(joined["age"]),
                           "localization": joined["localization"], "dx_type": joined["dx_type"]})
    return metrics.subgroup_audit(y_true, probs, groups, classes=classes)


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
    parser.add_argument("--compare", type=Path, action="append", default=None,
                        help="a model folder to print side by side first, oldest first; repeatable (default: "
                             "models/v1 and models/v2, the models shipped before, where present)")
    parser.add_argument("--tta", action="store_true", help="also re-predict the split with test-time augmentation")
    args = parser.parse_args()
    model_dir = args.model or paths.default_model_dir()
    meta = modelio.read_metadata(model_dir)
    classes = meta["classes"]
    predictions = evaluate.load_predictions(model_dir, args.split)
    y_true, probs = evaluate.arrays(predictions, classes)
    show = markdown if args.markdown else (lambda t: t.to_string(index=False, float_format="%.3f"))
    height, width = modelio.input_size(meta)
    print(f"model {model_dir} ({meta.get('arch')}, {width}×{height} px), split {args.split}, n={len(y_true)}, "
          f"split sha256 {str(meta.get('split_sha256'))[:12]}\n")
    earlier = args.compare if args.compare is not None else [paths.PROJECT_ROOT / "models" / v for v in ("v1", "v2")]
    earlier = [d for d in earlier if Path(d).is_dir() and Path(d).resolve() != Path(model_dir).resolve()]
    if earlier:
        print(f"side by side on {args.split} (n={len(y_true)}), paired bootstrap, 1000 resamples, seed 0; "
              "melanoma thresholds chosen on each model's validation split:")
        print(show(side_by_side([*earlier, model_dir], args.split, classes)), "\n")
    if args.tta:
        print(f"{args.split} re-predicted from the images, without and with test-time augmentation:")
        print(show(tta_headline(model_dir, args.split, classes)), "\n")
    print(show(metrics.headline(y_true, probs, classes, n_boot=1000, seed=0).drop(columns="metric")), "\n")
    for label, value in melanoma_rows(model_dir, args.split, y_true, probs, classes) + calibration_rows(meta, y_true, probs):
        print(f"{label}: {value:.4f}")
    table = metrics.class_table(y_true, probs, classes)
    print("\n" + show(table.reset_index() if "class" not in table.columns else table))
    audit = subgroups(predictions, y_true, probs, classes)
    print("\n" + (show(audit) if audit is not None else "subgroup audit skipped: dataset not found (set HAM10000_DIR)"))


if __name__ == "__main__":
    main()
