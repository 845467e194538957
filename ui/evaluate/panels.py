"""Evaluate page panels on one set of predictions: summary, confusion matrix, per-class table, ROC/PR curves, operating point."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.evaluation import evaluate, metrics

from core.contracts import predictions
from core.contracts.labels import metric_help, metric_name
from core.contracts.predictions import percent
from ui import evaluate_figures as figs
from ui.evaluate.common import (
    KEY_CELL_EVENT,
    KEY_CELL_PRED,
    KEY_CELL_TRUE,
    KEY_POSITIVE,
    KEY_TARGET,
    KEY_THRESHOLD,
    MAX_CELL_IMAGES,
    N_BOOT,
    SEED,
    SPLIT_LABELS,
    Source,
    class_metrics,
    classes_of,
    figure_download,
    fmt,
    headline_table,
    image_table,
    load_source,
    metric_columns,
    positive_class,
    served_table,
    split_caption,
    threshold,
)
from ui.text import plain


def summary_panel(source: Source, preds: pd.DataFrame) -> None:
    """Headline metrics with bootstrap 95 % intervals."""
    classes = classes_of(source)
    positive, t = positive_class(classes), threshold()
    table = headline_table(source, positive, t)
    st.markdown(split_caption(source, len(preds)))
    columns = st.columns(3)
    for i, row in table.iterrows():
        with columns[i % 3]:
            st.metric(row["label"], f"{row['value']:.3f}" if np.isfinite(row["value"]) else "n/a",
                      help=f"Code name in the metrics CSV: `{row['metric']}`.")
            st.caption(f"95 % CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}] · n = {row['n']:,}")
    st.caption(
        f"Intervals: percentile bootstrap over images, {N_BOOT} resamples, seed {SEED}. "
        f"{positive} sensitivity/specificity call a case {positive} when p({positive}) ≥ {t:.2f} "
        "(change the threshold on the Operating point tab). Balanced accuracy is the ISIC 2018 metric "
        "(mean per-class recall)."
    )


def confusion_panel(source: Source, preds: pd.DataFrame) -> None:
    """Confusion matrix (counts and row shares); a selected cell shows its images."""
    classes = classes_of(source)
    y_true, probs = evaluate.arrays(preds, classes)
    counts = metrics.confusion_counts(y_true, metrics.predicted_labels(probs), len(classes))
    normalised = metrics.row_normalise(counts)
    st.markdown(split_caption(source, len(preds)) + " · rows: true class, columns: predicted (arg-max)")
    fig = figs.confusion_figure(counts, normalised, classes, f"Confusion matrix — {source.label}, n = {len(preds)}")
    event = st.plotly_chart(fig, key="evaluate_confusion_chart", on_select="rerun", selection_mode=("points", "box"))
    keys = _cell_keys(source)
    _apply_cell_selection(event, classes, keys)
    figure_download(fig, f"confusion_{source.split}", "evaluate_dl_confusion")
    st.caption("Click a cell (or pick it below) to see its images.")
    true_class, pred_class = _cell_pickers(classes, counts, keys)
    mask = (preds["dx"] == true_class).to_numpy() & (metrics.predicted_labels(probs) == classes.index(pred_class))
    _cell_images(source, preds[mask], classes, true_class, pred_class)
    _image_lookup(source, preds, classes)


def _cell_keys(source: Source) -> tuple:
    """Selectbox keys per source, so a cell picked on one split never leaks into another."""
    suffix = hashlib.sha256(str(source.csv).encode()).hexdigest()[:10]
    return f"{KEY_CELL_TRUE}_{suffix}", f"{KEY_CELL_PRED}_{suffix}"


def _apply_cell_selection(event, classes: list, keys: tuple) -> None:
    """Copy a newly clicked heatmap cell into the two cell selectboxes."""
    points = event.get("selection", {}).get("points", []) if event else []
    cells = [(p.get("y"), p.get("x")) for p in points if p.get("x") in classes and p.get("y") in classes]
    if cells and cells[0] != st.session_state.get(KEY_CELL_EVENT):
        st.session_state[KEY_CELL_EVENT] = cells[0]
        st.session_state[keys[0]], st.session_state[keys[1]] = cells[0]


def _cell_pickers(classes: list, counts: np.ndarray, keys: tuple) -> tuple:
    """Two selectboxes naming a cell; the largest off-diagonal cell is the default."""
    if st.session_state.get(keys[0]) not in classes or st.session_state.get(keys[1]) not in classes:
        off = counts.copy()
        np.fill_diagonal(off, -1)
        i, j = np.unravel_index(int(off.argmax()), off.shape)
        st.session_state[keys[0]], st.session_state[keys[1]] = classes[i], classes[j]
    left, right = st.columns(2)
    true_class = left.selectbox("True class", classes, key=keys[0])
    pred_class = right.selectbox("Predicted class", classes, key=keys[1])
    return true_class, pred_class


def _cell_images(source: Source, cell: pd.DataFrame, classes: list, true_class: str, pred_class: str) -> None:
    st.markdown(f"**{len(cell)} images** with true class **{true_class}** predicted as **{pred_class}**")
    if cell.empty:
        return
    table = image_table(source)
    found = dict(zip(table["image_id"].astype(str), table["path"].astype(str))) if table is not None else {}
    cell = served_table(source, cell)
    shown = cell.assign(confidence=cell[pred_class]).sort_values("confidence", ascending=False).head(MAX_CELL_IMAGES)
    if not found:
        st.info("Images are not available (dataset not found), so only their probabilities are listed.")
    columns = st.columns(4)
    for i, (_, row) in enumerate(shown.iterrows()):
        caption = _image_caption(row, classes)
        path = found.get(row["image_id"], "")
        with columns[i % 4]:
            if path and Path(path).is_file():
                st.image(path, caption=caption, width="stretch")
            else:
                st.caption(plain(caption))  # st.caption renders Markdown; st.image and st.text do not
    st.dataframe(shown[["image_id", "dx", *classes]].assign(**{c: shown[c].map(percent) for c in classes}),
                 hide_index=True, width="stretch")


def _image_caption(row: pd.Series, classes: list, k: int = 3) -> str:
    """``ISIC_… · true mel · bkl 49.6%, nv 25.3%, …``: the ``k`` most probable classes, as Predict shows them."""
    top = row[classes].astype(float).sort_values(ascending=False).head(k)
    return f"{row['image_id']} · true {row['dx']} · " + ", ".join(f"{c} {percent(p)}" for c, p in top.items())


def _image_lookup(source: Source, preds: pd.DataFrame, classes: list) -> None:
    """One image's probabilities by its id: the figures Predict gives for the same image."""
    image_id = st.text_input("Find an image of this split by its id", key="evaluate_find_image",
                             placeholder="e.g. ISIC_0024481").strip()
    if not image_id:
        return
    row = preds[preds[predictions.IMAGE_ID] == image_id]
    if row.empty:
        st.text(f"No image {image_id} in the {SPLIT_LABELS[source.split]} split of {source.model.name}.")
        return
    served = served_table(source, row).iloc[0]
    st.text(_image_caption(served, classes, k=len(classes)))


def class_table_panel(source: Source, preds: pd.DataFrame) -> None:
    """Per-class ISIC metrics with their macro average."""
    table = class_metrics(source)[0].copy()
    table.loc["macro"] = metrics.macro_average(table)
    st.markdown(split_caption(source, len(preds)))
    st.dataframe(table.style.format(precision=3).format("{:.0f}", subset=["support"]), width="stretch",
                 column_config=metric_columns(table.columns))
    st.caption(
        "Sensitivity, specificity, the predictive values and F1 are one-vs-rest counts of the arg-max prediction. "
        "ROC AUC and average precision use the class probability; ROC AUC above 80 % sensitivity is ISIC's partial "
        "area where sensitivity ≥ 0.8 (1 = perfect, 0.18 = chance). Macro = unweighted mean over classes. "
        "Each column's help gives its code name in the metrics CSV."
    )


def curves_panel(source: Source, preds: pd.DataFrame) -> None:
    """ROC and precision-recall curves per class."""
    table, roc_curves, pr_curves = class_metrics(source)
    st.markdown(split_caption(source, len(preds)))
    left, right = st.columns(2)
    roc = figs.roc_figure(roc_curves, table["auc"].to_dict(), f"ROC, one vs rest — {source.label}, n = {len(preds)}")
    pr = figs.pr_figure(pr_curves, table["ap"].to_dict(), f"Precision-recall — {source.label}, n = {len(preds)}")
    with left:
        st.plotly_chart(roc, key="evaluate_roc_chart")
        figure_download(roc, f"roc_{source.split}", "evaluate_dl_roc")
    with right:
        st.plotly_chart(pr, key="evaluate_pr_chart")
        figure_download(pr, f"pr_{source.split}", "evaluate_dl_pr")


def operating_point_panel(source: Source, preds: pd.DataFrame) -> None:
    """Sensitivity, specificity and PPV at a threshold, and the threshold reaching a target sensitivity."""
    classes = classes_of(source)
    st.session_state[KEY_POSITIVE] = positive_class(classes)
    st.session_state.setdefault(KEY_THRESHOLD, 0.5)
    st.session_state.setdefault(KEY_TARGET, 0.9)
    st.markdown(split_caption(source, len(preds)))
    left, right = st.columns(2)
    positive = left.selectbox("Class", classes, key=KEY_POSITIVE, format_func=lambda c: f"{c} (positive)")
    t = left.slider("Threshold on p(class)", 0.0, 1.0, step=0.01, key=KEY_THRESHOLD)
    y_bin = (preds[predictions.TRUTH] == positive).to_numpy()
    scores = preds[positive].to_numpy(dtype=np.float64)
    point = metrics.operating_point(y_bin, scores, t)
    _point_metrics(left, point, f"at threshold {t:.2f}")
    target = right.slider("Target sensitivity", 0.5, 1.0, step=0.01, key=KEY_TARGET)
    reached = metrics.threshold_for_sensitivity(y_bin, scores, target)
    if np.isnan(reached):
        right.info(f"No {positive} images in this split.")
        return
    tuned_here = "Tuned on this split itself, so optimistic: below, the threshold is chosen on validation instead."
    right.metric("Threshold reaching the target", f"{reached:.4f}", help=tuned_here if source.split != "val" else None)
    _point_metrics(right, metrics.operating_point(y_bin, scores, reached), f"at threshold {reached:.4f}")
    _validation_point(source, positive, target, y_bin, scores)
    st.caption(
        f"A case is called {positive} when p({positive}) ≥ threshold. Of all thresholds reaching the target "
        f"sensitivity, the highest (best specificity) is shown. {int(y_bin.sum())} {positive} images of {len(preds)}."
    )


def _validation_point(source: Source, positive: str, target: float, y_bin, scores) -> None:
    """The honest operating point: threshold chosen on validation, read on this split."""
    if source.split == "val" or "val" not in source.model.splits:
        return
    val = load_source(Source(source.model, "val", source.model.path / evaluate.SPLIT_FILES["val"]))
    val_bin = (val[predictions.TRUTH] == positive).to_numpy()
    chosen = metrics.threshold_from_validation(val_bin, val[positive].to_numpy(dtype=np.float64), y_bin=y_bin,
                                               scores=scores, target=target)
    if chosen["validation"] is None:
        return
    t = chosen["threshold"]
    st.markdown(f"**Chosen on validation (n = {len(val):,}), read on {SPLIT_LABELS[source.split]}:** "
                f"threshold {t:.4f} gives sensitivity {fmt(chosen['validation']['sensitivity'])} on validation.")
    _point_metrics(st, chosen["applied"], f"{SPLIT_LABELS[source.split]} at the validation threshold {t:.4f}")


def _point_metrics(container, point: dict, where: str) -> None:
    # Two by two, each name above its value as text that wraps: four metrics side by side in half a 1,024-px
    # page cut their names and values off, and a metric's own label never wraps.
    cells = [column for _ in range(2) for column in container.columns(2)]
    for cell, code in zip(cells, ("sensitivity", "specificity", "ppv", "npv")):
        cell.markdown(metric_name(code), help=metric_help(code))
        cell.metric(metric_name(code), fmt(point[code]), label_visibility="collapsed")
    container.caption(f"{where}: TP {point['tp']}, FP {point['fp']}, FN {point['fn']}, TN {point['tn']}")


