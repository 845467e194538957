"""Teachers, their ensemble and other candidates against v2, from a soft-targets file.

Reads the file ``lesionlab soft-targets`` wrote (each teacher's probabilities
after its own temperature, on the 4 flips of every image of the split) and prints,
on the validation split, for every candidate: balanced accuracy, macro ROC AUC,
log-loss, ECE (15 bins, top label), melanoma sensitivity and specificity at the
threshold that gives specificity 0.80 on validation, each with its bootstrap 95 %
interval and n; then the paired bootstrap interval of each candidate's difference
against v2 and against the ensemble of all teachers (both resampled with the same
draws); then the per-class table of the ensemble. The issue's selection rule judges
by log-loss and macro AUC (low variance) as well as balanced accuracy.

Candidates: each teacher (its 4 flips averaged), the ensemble of all teachers with
and without the flips, ``--ensemble a+b`` for a subset, v2 (``models/v2``'s
saved predictions after its temperature: the model v3 replaced) and any ``--model DIR`` (a student run:
its saved predictions after its temperature). The test split is read only with
``--test``: it is read once, for the final choice.

    .venv/bin/python bench/bench_ensemble.py --targets models/v3/soft_targets.npz [--model models/runs/student] [--test]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from bench_model import markdown, threshold_for_specificity  # noqa: E402

from core.serving import calibration  # noqa: E402
from core.serving.folder import ModelFolder  # noqa: E402

from core.evaluation import evaluate, metrics

from core.contracts import paths

from core.training import soft_targets

N_BOOT = 1000
POSITIVE = "mel"


def teacher_candidates(found: soft_targets.SoftTargets, subsets: list) -> dict:
    """``{name: (N, K) probabilities}`` of every row of the file: teachers, the ensemble, subsets."""
    out = {name: found.probs[i].mean(axis=1) for i, name in enumerate(found.teachers)}
    out[f"ensemble of {len(found.teachers)}, 4 flips"] = found.probs.mean(axis=(0, 2))
    out[f"ensemble of {len(found.teachers)}, no flips"] = found.probs[:, :, 0].mean(axis=0)
    for subset in subsets:
        members = subset.split("+")
        unknown = set(members) - set(found.teachers)
        if unknown:
            raise SystemExit(f"--ensemble {subset}: no teacher named {sorted(unknown)} in the file ({found.teachers})")
        out[f"{subset}, 4 flips"] = np.mean([out[m] for m in members], axis=0)
        out[f"{subset}, no flips"] = np.mean([found.probs[found.teachers.index(m), :, 0] for m in members], axis=0)
    return out


def folder_candidate(model_dir: Path, image_ids: np.ndarray, split: str) -> np.ndarray:
    """A model folder's saved probabilities of ``image_ids`` after its temperature (rows in that order)."""
    folder = ModelFolder.open(model_dir)
    table = evaluate.load_predictions(folder, split).set_index("image_id")
    missing = pd.Index(image_ids).difference(table.index)
    if len(missing):
        raise SystemExit(f"{model_dir}: {len(missing)} {split} images of the soft-targets file have no prediction")
    probs = table.loc[image_ids, list(folder.classes)].to_numpy(np.float64)
    temperature = folder.meta.get("temperature")
    return calibration.apply_temperature(probs, temperature) if temperature else probs


def stat_functions(y_true, probs, val_true, val_probs, classes) -> dict:
    """``{metric: f(bootstrap weights) -> values}``; the melanoma threshold is chosen on validation."""
    k, n_classes = list(classes).index(POSITIVE), len(classes)
    threshold = threshold_for_specificity(val_true == k, val_probs[:, k])
    is_mel, called, y_pred = y_true == k, probs[:, k] >= threshold, metrics.predicted_labels(probs)
    return {
        "balanced accuracy": lambda w: metrics.weighted_balanced_accuracy(w, y_true, y_pred, n_classes=n_classes),
        "macro ROC AUC": lambda w: metrics.weighted_macro_auc(w, y_true, probs, n_classes=n_classes),
        "log-loss": lambda w: calibration.weighted_nll(w, y_true, probs),
        "ECE": lambda w: calibration.weighted_ece(w, y_true, probs),
        "mel sensitivity @ val spec 0.80": lambda w: metrics.weighted_rate(w, called, is_mel),
        "mel specificity, same threshold": lambda w: metrics.weighted_rate(w, ~called, ~is_mel),
    }


def _cell(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def scores_table(stats: dict, n: int, boot: np.ndarray) -> pd.DataFrame:
    """One row per candidate: each metric with its bootstrap 95 % interval, and n."""
    ones, rows = np.ones((1, n)), []
    for name, fns in stats.items():
        row = {"candidate": name, "n": n}
        for metric, fn in fns.items():
            low, high = np.nanpercentile(fn(boot), [2.5, 97.5])
            row[metric] = _cell(float(fn(ones)[0]), low, high)
        rows.append(row)
    return pd.DataFrame(rows)


def differences_table(stats: dict, reference: str, n: int, boot: np.ndarray) -> pd.DataFrame:
    """Each candidate minus ``reference``, per metric, with the paired bootstrap 95 % interval."""
    ones, rows = np.ones((1, n)), []
    for name, fns in stats.items():
        if name == reference:
            continue
        row = {"candidate − " + reference: name, "n": n}
        for metric, fn in fns.items():
            ref = stats[reference][metric]
            diff = fn(boot) - ref(boot)
            low, high = np.nanpercentile(diff, [2.5, 97.5])
            row[metric] = f"{float(fn(ones)[0] - ref(ones)[0]):+.3f} [{low:+.3f}, {high:+.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def candidates_on(found, split: str, args) -> tuple:
    """``(y_true, {name: probs})`` of one split, rows in the file's order."""
    rows = found.split == split
    image_ids = found.image_id[rows]
    classes = found.meta["classes"]
    probs = {name: p[rows] for name, p in teacher_candidates(found, args.ensemble).items()}
    for model_dir in [args.v2, *args.model]:
        name = "v2" if model_dir == args.v2 else Path(model_dir).name
        probs[name] = folder_candidate(model_dir, image_ids, split)
    return metrics.encode_labels(found.dx[rows], classes), probs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=Path, required=True, help="the soft-targets file (lesionlab soft-targets)")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B",
                        help="also score the ensemble of these teachers (names joined by +); repeatable")
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="also score a model folder's saved predictions (a student run); repeatable")
    parser.add_argument("--v2", type=Path, default=None, help="the model compared against (default: models/v2, the model v3 replaced)")
    parser.add_argument("--reference", action="append", default=[], metavar="CANDIDATE",
                        help="print each candidate's paired difference against this one too (a candidate's name as "
                             "the scores table prints it, e.g. 't1+t2, 4 flips'); repeatable")
    parser.add_argument("--test", action="store_true", help="score the test split (read it once, for the final choice)")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    args = parser.parse_args(argv)
    args.v2 = args.v2 or paths.PROJECT_ROOT / "models" / "v2"
    found = soft_targets.read(args.targets)
    classes = found.meta["classes"]
    split = "test" if args.test else "val"
    y_true, probs = candidates_on(found, split, args)
    val_true, val_probs = candidates_on(found, "val", args) if args.test else (y_true, probs)
    stats = {name: stat_functions(y_true, p, val_true, val_probs[name], classes) for name, p in probs.items()}
    boot = metrics.bootstrap_counts(len(y_true), N_BOOT, 0)
    show = markdown if args.markdown else (lambda t: t.to_string(index=False))
    teachers = ", ".join(f"{t['name']} (T={t['temperature']:.3f})" for t in found.meta["teachers"])
    print(f"{args.targets}: teachers {teachers}; split {split}, n={len(y_true)}, split sha256 "
          f"{found.meta['split_sha256'][:12]}; bootstrap {N_BOOT} resamples, seed 0; mel threshold chosen on val\n")
    print(show(scores_table(stats, len(y_true), boot)), "\n")
    ensemble = f"ensemble of {len(found.teachers)}, 4 flips"
    for reference in dict.fromkeys(["v2", ensemble, *args.reference]):
        if reference not in stats:
            raise SystemExit(f"--reference {reference!r}: no such candidate; the candidates are {list(stats)}")
        print(f"paired differences against {reference} ({split}, n={len(y_true)}):")
        print(show(differences_table(stats, reference, len(y_true), boot)), "\n")
    table = metrics.class_table(y_true, probs[ensemble], classes)
    print(f"{ensemble}, per class ({split}, n={len(y_true)}; support = n of the class):")
    print(show(table.reset_index() if "class" not in table.columns else table))


if __name__ == "__main__":
    main()
