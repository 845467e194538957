"""Evaluate page panels on how far the scores can be trusted: calibration and the subgroup audit."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.serving import calibration, modelio

from core.evaluation import evaluate, metrics

from core.contracts import paths
from core.contracts.labels import DX_TYPES
from ui import evaluate_figures as figs
from ui.evaluate.common import (
    SEED,
    Source,
    calibration_of,
    classes_of,
    figure_download,
    fmt,
    fmt_ci,
    image_table,
    metric_columns,
    mtime,
    positive_class,
    split_caption,
    threshold,
)


REFIT_TOLERANCE = 0.01  # a refit within 1 % of the stored T is the same fit (files keep 6 decimals)


@st.cache_data(max_entries=8, show_spinner="Fitting the temperature…")
def _fit_temperature(csv: str, mtime: int, classes: tuple) -> float:
    preds = evaluate.read_predictions(Path(csv), classes)
    y_true, probs = evaluate.arrays(preds, classes)
    return calibration.fit_temperature(probs, y_true)


def calibration_panel(source: Source, preds: pd.DataFrame) -> None:
    """Reliability before and after temperature scaling fitted on validation; save the temperature."""
    classes = classes_of(source)
    val_csv = source.model.path / evaluate.SPLIT_FILES["val"]
    y_true, probs = evaluate.arrays(preds, classes)
    st.markdown(split_caption(source, len(preds)))
    fitted = _fit_temperature(str(val_csv), mtime(val_csv), tuple(classes)) if val_csv.is_file() else None
    applied = calibration_of(source)["applied"]
    shown = applied or fitted  # the temperature Predict applies, so the page prints the T Predict prints
    tables = {"uncalibrated": calibration.reliability(probs, y_true)}
    if shown:
        where = "applied on Predict" if applied else "fitted on validation"
        tables[f"T = {calibration.format_temperature(shown)} ({where})"] = calibration.reliability(
            calibration.apply_temperature(probs, shown), y_true)
    fig = figs.reliability_figure(tables, f"Reliability (top label, 15 bins) — {source.label}, n = {len(preds)}")
    st.plotly_chart(fig, key="evaluate_reliability_chart")
    figure_download(fig, f"reliability_{source.split}", "evaluate_dl_reliability")
    summary = calibration.calibration_summary(probs, y_true, shown)
    st.dataframe(summary.style.format(precision=4), hide_index=True, column_config=metric_columns(summary.columns))
    _temperature_controls(source, fitted)


def _temperature_controls(source: Source, fitted: float | None) -> None:
    status = calibration_of(source)
    st.caption(
        "ECE: top-label, 15 equal-width confidence bins. Brier: multiclass (0 best, 2 worst). "
        "Calibrated probabilities are softmax(log(p) / T). On Predict: " + status["text"]
    )
    n_val = _val_rows(source)
    if fitted is not None and n_val < calibration.MIN_TEMPERATURE_N:
        st.warning(f"The validation split has only {n_val} images: a temperature fitted on fewer than "
                   f"{calibration.MIN_TEMPERATURE_N} is noise, and Predict will not apply it.")
    if fitted is None:
        st.info("No validation predictions in this model folder, so no temperature can be fitted.")
        return
    if source.split == "val":
        st.caption("This is the split the temperature was fitted on: judge it on test or external data.")
    if status["applied"] and abs(fitted / status["applied"] - 1) < REFIT_TOLERANCE:
        return  # the stored T is the fit of this validation file: nothing to save
    t = calibration.format_temperature(fitted)
    if paths.read_only():
        st.caption(f"Fitted T = {t}. This is a read-only demo: it cannot be saved into model.json here.")
        return
    _save_temperature(source, fitted)


def _save_temperature(source: Source, fitted: float) -> None:
    """Write the fitted temperature into the model folder, once the user has ticked that they mean it."""
    t = calibration.format_temperature(fitted)
    sure = st.checkbox(f"Write T = {t} into {source.model.name}'s {modelio.METADATA_FILE}: Predict will "
                       "then calibrate this model's probabilities with it", key="evaluate_confirm_temperature")
    if st.button(f"Save T = {t} into {modelio.METADATA_FILE}", key="evaluate_save_temperature",
                 icon=":material/save:", disabled=not sure, help="Tick the box above first: this changes the model "
                 "folder's own file."):
        try:
            calibration.save_temperature(source.model.path, fitted, n=_val_rows(source))
        except (OSError, ValueError) as err:
            st.error(f"Could not save the temperature: {err}")
        else:
            st.success(f"Saved temperature {t} into {source.model.name}'s {modelio.METADATA_FILE}.")


def _val_rows(source: Source) -> int:
    """How many validation images a temperature of this model folder is fitted on."""
    return len(evaluate.load_predictions(source.model.path, "val"))


@st.cache_data(max_entries=16, show_spinner="Auditing subgroups…")
def _subgroups(preds: pd.DataFrame, groups: pd.DataFrame, classes: tuple, positive: str, t: float) -> pd.DataFrame:
    y_true, probs = evaluate.arrays(preds, classes)
    return metrics.subgroup_audit(y_true, probs, groups, classes=classes, positive=positive, threshold=t, seed=SEED)


def subgroup_panel(source: Source, preds: pd.DataFrame) -> None:
    """Headline metrics by sex, age band, body site and dx type, with n and intervals."""
    classes = classes_of(source)
    table = image_table(source)
    if table is None:
        st.info("No metadata for these images (dataset not found: set HAM10000_DIR), so no subgroup audit.")
        return
    merged = preds.merge(table[["image_id", "sex", "age", "localization", "dx_type"]], on="image_id", how="inner")
    groups = pd.DataFrame({"sex": merged["sex"], "age_band": metrics.age_band(merged["age"]),
                           "localization": merged["localization"], "dx_type": merged["dx_type"]})
    informative = [c for c in groups if set(groups[c].fillna("unknown").astype(str)) != {"unknown"}]
    st.markdown(split_caption(source, len(preds)) + f" · {len(merged):,} matched with metadata")
    if merged.empty or not informative:
        st.info("These images have no sex, age, body-site or dx-type metadata, so no subgroup audit.")
        return
    positive, t = positive_class(classes), threshold()
    audit = _subgroups(merged[preds.columns], groups[informative], tuple(classes), positive, round(t, 4))
    for grouping, part in audit.groupby("grouping", sort=False):
        st.markdown(f"**By {grouping}**")
        st.dataframe(_audit_display(part, positive), hide_index=True, width="stretch")
    st.caption(f"Bootstrap 95 % intervals (500 resamples per group). {positive} sensitivity/specificity at "
               f"threshold {t:.2f}. Small groups have wide intervals: read n before the value.")


def _audit_display(part: pd.DataFrame, positive: str) -> pd.DataFrame:
    shown = part[["group", "n"] + ([f"n_{positive}"] if f"n_{positive}" in part else [])].copy()
    shown["group"] = shown["group"].map(lambda g: DX_TYPES.get(g, g))  # histo → histopathology, as on Explore
    shown = shown.rename(columns={f"n_{positive}": f"{positive} images"})
    for metric, label in (("balanced_accuracy", "balanced accuracy"), (f"sensitivity_{positive}",
                          f"{positive} sensitivity"), (f"specificity_{positive}", f"{positive} specificity")):
        if metric in part:
            shown[label] = [fmt_ci(v, lo, hi) for v, lo, hi in
                            zip(part[metric], part[f"{metric}_low"], part[f"{metric}_high"])]
    shown["macro AUC"] = part["macro_auc"].map(fmt)
    return shown
