"""Classification metrics of the ISIC challenge, computed from saved probabilities.

Every function takes integer labels (``y_true``, index into ``classes``) and a
probability matrix ``probs`` (one row per image, one column per class, in the
order of ``classes``). The predicted label is the arg-max of a row.

Conventions, and where they differ from ``isic-challenge-scoring``:

* Balanced multiclass accuracy is the mean per-class recall over the classes
  present in the truth (ISIC 2018 Task 3 metric, same as scikit-learn's
  ``balanced_accuracy_score``). Ties in the arg-max go to the first class; ISIC
  counts a tie as an "undecided" (wrong) answer. Float probabilities almost never tie.
* Per-class sensitivity, specificity, PPV, NPV and F1 are one-vs-rest counts of
  the arg-max confusion matrix, so they agree with the confusion matrix shown next
  to them. ISIC instead thresholds each class probability at 0.5. A ratio whose
  denominator is zero is NaN here (ISIC scores it 1.0).
* ``auc_sens_80`` is ISIC's "ROC AUC above 80 % sensitivity": the raw area under
  the ROC curve over the part where TPR >= 0.8, starting at an interpolated point at
  exactly TPR = 0.8. It is not McClish-normalised (unlike scikit-learn's
  ``max_fpr``), so a perfect classifier scores 1 and a random one 0.18.
* Confidence intervals are percentile bootstrap intervals (2.5 %, 97.5 %) over
  images. Indices are drawn once per call (seeded) and turned into per-image
  counts with one ``bincount``; every statistic is then a weighted sum, so 1000
  resamples of 1500 images take well under a second. A resample in which a class
  has no positives gives NaN for that class's AUC or sensitivity; those resamples
  are left out of that interval.

scikit-learn is imported inside the functions that need it (curves, AUC,
average precision): a page that shows only counts and accuracies, such as the
Home page, reads this module without paying for that import.
"""

import warnings

import numpy as np
import pandas as pd

from core.contracts.labels import encode_labels  # noqa: F401  (part of this module's interface: metrics.encode_labels)

AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"), (75, 200, "75+"))
SUBGROUP_COLUMNS = {"sex": "sex", "age_band": "age band", "localization": "body site", "dx_type": "dx type"}
CLASS_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1", "auc", "auc_sens_80", "ap")


def predicted_labels(probs: np.ndarray) -> np.ndarray:
    """Arg-max label of every row (first class on ties)."""
    return np.asarray(probs).argmax(axis=1)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix of counts: rows are true classes, columns predicted classes."""
    flat = np.asarray(y_true) * n_classes + np.asarray(y_pred)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Divide every row by its total; rows of a class with no images are NaN."""
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y_true`` (ISIC 2018 Task 3 metric)."""
    counts = confusion_counts(y_true, y_pred, n_classes)
    support = counts.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(counts)[present] / support[present]))


def _ratio(num, den):
    """``num / den`` elementwise, NaN where ``den`` is zero."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def one_vs_rest(counts: np.ndarray) -> dict:
    """TP, FP, FN, TN per class from a confusion matrix of counts."""
    tp = np.diag(counts).astype(np.int64)
    fn = counts.sum(axis=1) - tp
    fp = counts.sum(axis=0) - tp
    tn = counts.sum() - tp - fn - fp
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def auc_sens_above(y_bin: np.ndarray, scores: np.ndarray, min_tpr: float = 0.8) -> float:
    """ISIC's partial ROC AUC: area under the ROC curve where TPR >= ``min_tpr``.

    The curve is cut at an interpolated point at exactly ``min_tpr`` and the
    area to its right is integrated without normalisation (as
    ``isic_challenge_scoring.metrics.auc_above_sensitivity``). NaN when
    ``y_bin`` has a single class.
    """
    if not 0 < min_tpr <= 1:
        raise ValueError(f"min_tpr must be in (0, 1], got {min_tpr}")
    y_bin = np.asarray(y_bin, dtype=bool)
    if y_bin.all() or not y_bin.any():
        return float("nan")
    from sklearn.metrics import roc_curve  # imported here: see the module's docstring

    fpr, tpr, _ = roc_curve(y_bin, scores, drop_intermediate=False)
    # tpr is non-decreasing and starts at 0, so the cut lies between cut-1 and cut.
    cut = int(np.searchsorted(tpr, min_tpr, side="left"))
    fpr_cut = np.interp(min_tpr, tpr[cut - 1 : cut + 1], fpr[cut - 1 : cut + 1])
    x = np.concatenate([[fpr_cut], fpr[cut:]])
    y = np.concatenate([[min_tpr], tpr[cut:]])
    return float(np.trapezoid(y, x))


def _safe_auc(y_bin, scores) -> float:
    y_bin = np.asarray(y_bin, dtype=bool)
    if y_bin.all() or not y_bin.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_bin, scores))


def _safe_ap(y_bin, scores) -> float:
    y_bin = np.asarray(y_bin, dtype=bool)
    if not y_bin.any():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y_bin, scores))


def class_table(y_true: np.ndarray, probs: np.ndarray, classes) -> pd.DataFrame:
    """Per-class metrics, one row per class, plus ``support`` (true images of the class).

    Columns: support, sensitivity, specificity, ppv, npv, f1 (arg-max, one vs rest),
    auc, auc_sens_80, ap (from the class probability).
    """
    probs = np.asarray(probs, dtype=np.float64)
    counts = confusion_counts(y_true, predicted_labels(probs), len(classes))
    c = one_vs_rest(counts)
    table = pd.DataFrame(
        {
            "support": counts.sum(axis=1),
            "sensitivity": _ratio(c["tp"], c["tp"] + c["fn"]),
            "specificity": _ratio(c["tn"], c["tn"] + c["fp"]),
            "ppv": _ratio(c["tp"], c["tp"] + c["fp"]),
            "npv": _ratio(c["tn"], c["tn"] + c["fn"]),
            "f1": _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
        },
        index=pd.Index(list(classes), name="class"),
    )
    y_true = np.asarray(y_true)
    table["auc"] = [_safe_auc(y_true == k, probs[:, k]) for k in range(len(classes))]
    table["auc_sens_80"] = [auc_sens_above(y_true == k, probs[:, k]) for k in range(len(classes))]
    table["ap"] = [_safe_ap(y_true == k, probs[:, k]) for k in range(len(classes))]
    return table


def macro_average(table: pd.DataFrame) -> pd.Series:
    """Unweighted mean of every metric over classes (NaN classes skipped); support is summed."""
    macro = table[list(CLASS_METRICS)].mean(axis=0, skipna=True)
    macro["support"] = table["support"].sum()
    return macro.rename("macro")


def roc_curves(y_true: np.ndarray, probs: np.ndarray, classes) -> pd.DataFrame:
    """One-vs-rest ROC curve of every class with both labels present: class, fpr, tpr, threshold."""
    from sklearn.metrics import roc_curve

    frames = []
    for k, name in enumerate(classes):
        y_bin = np.asarray(y_true) == k
        if y_bin.all() or not y_bin.any():
            continue
        fpr, tpr, thr = roc_curve(y_bin, probs[:, k])
        frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr, "threshold": thr}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "fpr", "tpr", "threshold"])


def pr_curves(y_true: np.ndarray, probs: np.ndarray, classes) -> pd.DataFrame:
    """One-vs-rest precision-recall curve per class with positives: class, recall, precision, threshold."""
    from sklearn.metrics import precision_recall_curve

    frames = []
    for k, name in enumerate(classes):
        y_bin = np.asarray(y_true) == k
        if not y_bin.any():
            continue
        precision, recall, thr = precision_recall_curve(y_bin, probs[:, k])
        # precision_recall_curve has one threshold fewer than points: the last point has none.
        frames.append(
            pd.DataFrame({"class": name, "recall": recall, "precision": precision, "threshold": np.append(thr, np.nan)})
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "recall", "precision", "threshold"])


def operating_point(y_bin: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Sensitivity, specificity, PPV and NPV when ``scores >= threshold`` calls a case positive."""
    y_bin = np.asarray(y_bin, dtype=bool)
    called = np.asarray(scores) >= threshold
    tp = int(np.sum(y_bin & called))
    fp = int(np.sum(~y_bin & called))
    fn = int(np.sum(y_bin & ~called))
    tn = int(np.sum(~y_bin & ~called))
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "sensitivity": float(_ratio(tp, tp + fn)),
        "specificity": float(_ratio(tn, tn + fp)),
        "ppv": float(_ratio(tp, tp + fp)),
        "npv": float(_ratio(tn, tn + fn)),
    }


def threshold_for_sensitivity(y_bin: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity (``scores >= t``) is at least ``target``.

    The highest such threshold is the one with the best specificity. NaN when there
    are no positives.
    """
    if not 0 <= target <= 1:
        raise ValueError(f"target sensitivity must be in [0, 1], got {target}")
    positives = np.sort(np.asarray(scores)[np.asarray(y_bin, dtype=bool)])[::-1]
    if positives.size == 0:
        return float("nan")
    # Tolerance keeps 0.8 * 10 from rounding up to 9 positives.
    needed = max(1, int(np.ceil(target * positives.size - 1e-9)))
    return float(positives[needed - 1])


def bootstrap_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``n_boot`` resamples, shape (n_boot, n)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    offsets = (np.arange(n_boot) * n)[:, None]
    counts = np.bincount((idx + offsets).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    # float32 holds these small integer counts exactly and halves the memory traffic.
    return counts.astype(np.float32)


def weighted_balanced_accuracy(w: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Balanced accuracy for each row of weights ``w`` (shape (B, n)); one value per row."""
    onehot = np.eye(n_classes)[y_true]
    support = w @ onehot
    correct = w @ (onehot * (y_true == y_pred)[:, None])
    return _nanmean_rows(_ratio(correct, support))


def weighted_rate(w: np.ndarray, hits: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Share of ``pool`` items that are ``hits``, per row of weights (e.g. sensitivity)."""
    return _ratio(w @ (hits & pool).astype(np.float64), w @ pool.astype(np.float64))


def weighted_auc(w: np.ndarray, y_bin: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties count one half) per row of weights ``w`` (B, n)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    pos = np.asarray(y_bin, dtype=bool)[order]
    new_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
    group = np.cumsum(new_group) - 1
    ws = w[:, order]
    neg_w = ws * ~pos
    # Negatives tied with a positive count one half: sum them per distinct score first.
    neg_g = neg_w if new_group.all() else np.add.reduceat(neg_w, np.flatnonzero(new_group), axis=1)
    below = np.cumsum(neg_g, axis=1) - 0.5 * neg_g
    wins = np.einsum("ij,ij->i", ws[:, pos], below[:, group[pos]])
    return _ratio(wins, ws[:, pos].sum(axis=1) * neg_w.sum(axis=1))


def weighted_macro_auc(w: np.ndarray, y_true: np.ndarray, probs: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Mean one-vs-rest AUC over classes, per row of weights; classes without both labels skipped."""
    aucs = np.stack([weighted_auc(w, y_true == k, probs[:, k]) for k in range(n_classes)], axis=1)
    return _nanmean_rows(aucs)


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; an all-NaN row gives NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=1)


def _interval(values: np.ndarray) -> tuple:
    """2.5 and 97.5 percentiles of the finite bootstrap values (NaN, NaN when none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def headline(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes,
    *,
    positive: str = "mel",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Headline metrics with bootstrap 95 % intervals.

    Args:
        y_true: true label indices.
        probs: probabilities, one column per class.
        classes: class codes in column order.
        positive: the class of the operating point (sensitivity/specificity rows).
        threshold: probability of ``positive`` at or above which a case is called positive.
        n_boot: bootstrap resamples (0 gives point estimates with NaN intervals).
        seed: seed of the resampling; the same seed gives the same intervals.

    Returns:
        Columns ``metric, label, value, ci_low, ci_high, n``.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n, n_classes = probs.shape
    ones = np.ones((1, n))
    stats = _headline_stats(y_true, probs, list(classes), positive, threshold)
    boot = bootstrap_counts(n, n_boot, seed) if n_boot > 0 else None
    rows = []
    for metric, label, fn in stats:
        value = float(fn(ones)[0])
        low, high = _interval(fn(boot)) if boot is not None else (float("nan"), float("nan"))
        rows.append({"metric": metric, "label": label, "value": value, "ci_low": low, "ci_high": high, "n": n})
    return pd.DataFrame(rows)


def _headline_stats(y_true, probs, classes, positive, threshold) -> list:
    """(metric id, label, function of weights) for every headline metric."""
    n_classes = len(classes)
    y_pred = predicted_labels(probs)
    stats = [
        ("balanced_accuracy", "Balanced accuracy",
         lambda w: weighted_balanced_accuracy(w, y_true, y_pred, n_classes=n_classes)),
        ("accuracy", "Accuracy", lambda w: weighted_rate(w, y_true == y_pred, np.ones_like(y_true, dtype=bool))),
        ("macro_auc", "Macro ROC AUC", lambda w: weighted_macro_auc(w, y_true, probs, n_classes=n_classes)),
    ]
    if positive in classes:
        k = classes.index(positive)
        is_pos = y_true == k
        called = probs[:, k] >= threshold
        stats += [
            (f"auc_{positive}", f"{positive} ROC AUC", lambda w: weighted_auc(w, is_pos, probs[:, k])),
            (f"sensitivity_{positive}", f"{positive} sensitivity @ {threshold:.2f}", lambda w: weighted_rate(w, called, is_pos)),
            (f"specificity_{positive}", f"{positive} specificity @ {threshold:.2f}", lambda w: weighted_rate(w, ~called, ~is_pos)),
        ]
    return stats


def age_band(ages: pd.Series) -> pd.Series:
    """Age bands (<30, 30-44, 45-59, 60-74, 75+); missing ages become ``unknown``."""
    ages = pd.to_numeric(ages, errors="coerce")
    bands = pd.Series("unknown", index=ages.index, dtype=object)
    for low, high, name in AGE_BANDS:
        bands[(ages >= low) & (ages < high)] = name
    return bands


def subgroup_audit(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: pd.DataFrame,
    *,
    classes,
    positive: str = "mel",
    threshold: float = 0.5,
    n_boot: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """Balanced accuracy and operating-point metrics per subgroup, with n and intervals.

    Args:
        y_true: true label indices, aligned with ``probs`` and ``groups``.
        probs: probabilities, one column per class.
        groups: one column per grouping (e.g. ``sex``, ``age_band``), one row per image.
        classes: class codes in column order.
        positive: class of the sensitivity/specificity columns.
        threshold: operating threshold on the ``positive`` probability.
        n_boot: bootstrap resamples per subgroup.
        seed: resampling seed.

    Returns:
        One row per (grouping, value): ``grouping, group, n, n_<positive>``, then
        ``value, ci_low, ci_high`` triples for balanced accuracy, sensitivity and
        specificity, and the macro AUC point estimate.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    rows = []
    for column in groups.columns:
        values = groups[column].fillna("unknown").astype(str).to_numpy()
        for value in _group_order(column, values):
            mask = values == value
            rows.append({"grouping": SUBGROUP_COLUMNS.get(column, column), "group": value,
                         **_subgroup_row(y_true[mask], probs[mask], list(classes), positive, threshold, n_boot, seed)})
    return pd.DataFrame(rows)


def _group_order(column: str, values: np.ndarray) -> list:
    """Age bands in age order, other groupings alphabetically; ``unknown`` last."""
    present = set(values)
    if column == "age_band":
        ordered = [name for _, _, name in AGE_BANDS if name in present]
    else:
        ordered = sorted(present - {"unknown"})
    return ordered + (["unknown"] if "unknown" in present else [])


def _subgroup_row(y_true, probs, classes, positive, threshold, n_boot, seed) -> dict:
    table = headline(y_true, probs, classes, positive=positive, threshold=threshold, n_boot=0)
    boot = bootstrap_counts(len(y_true), n_boot, seed)
    stats = {m: fn for m, _, fn in _headline_stats(y_true, probs, classes, positive, threshold)}
    row = {"n": len(y_true)}
    if positive in classes:
        row[f"n_{positive}"] = int(np.sum(y_true == classes.index(positive)))
    for metric in ("balanced_accuracy", f"sensitivity_{positive}", f"specificity_{positive}"):
        if metric not in stats:
            continue
        low, high = _interval(stats[metric](boot))
        value = float(table.loc[table["metric"] == metric, "value"].iloc[0])
        row.update({metric: value, f"{metric}_low": low, f"{metric}_high": high})
    row["macro_auc"] = float(table.loc[table["metric"] == "macro_auc", "value"].iloc[0])
    return row


SMALL_N = 100  # below this a headline metric's interval is wider than most differences between runs


def sample_size_warning(counts: dict, small: int = SMALL_N) -> str:
    """A sentence when runs were scored on different or small numbers of images, else ``""``.

    Args:
        counts: ``{run name: number of images scored}``.
        small: the size below which a set is called small.
    """
    if not counts:
        return ""
    parts = []
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: n = {n:,}" for name, n in counts.items())
        parts.append(f"These runs were scored on different numbers of images ({listed}); "
                     "their figures are not directly comparable.")
    few = [f"{name} (n = {n})" for name, n in counts.items() if n < small]
    if few:
        parts.append(f"Small sample: {', '.join(few)}; below {small} images, intervals are wide and a "
                     "difference between runs is mostly noise.")
    return " ".join(parts)


def threshold_from_validation(val_bin, val_scores, *, y_bin, scores, target: float) -> dict:
    """Choose the threshold reaching ``target`` sensitivity on validation and apply it to another split.

    Returns:
        ``{"threshold": t, "validation": operating point on validation, "applied": operating point on the
        other split}`` (see :func:`operating_point`); ``threshold`` is NaN when validation has no positives.
    """
    t = threshold_for_sensitivity(np.asarray(val_bin, dtype=bool), np.asarray(val_scores, dtype=np.float64), target)
    if np.isnan(t):
        return {"threshold": t, "validation": None, "applied": None}
    return {"threshold": t, "validation": operating_point(val_bin, val_scores, t),
            "applied": operating_point(y_bin, scores, t)}
