"""Evaluate page panels across runs and for export: the comparison table and the metrics/ISIC downloads."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.evaluation import evaluate, metrics

from core.contracts import predictions
from ui import evaluate_figures as figs
from ui.evaluate.common import (
    KEY_COMPARE,
    N_BOOT,
    SEED,
    SPLIT_LABELS,
    Source,
    calibration_of,
    classes_of,
    figure_download,
    fmt_ci,
    headline_table,
    load_source,
    model_metadata,
    mtime,
    png_export_available,
    positive_class,
    served_table,
    split_caption,
    threshold,
)


def compare_panel(models: list, source: Source) -> None:
    """Headline metrics and overlaid ROC curves of several runs on the same split."""
    if source.split == "external":
        st.info("Comparison works on the validation and test splits saved in each model folder.")
        return
    candidates = [m for m in models if source.split in m.splits]
    names = [m.name for m in candidates]
    if len(names) < 2:
        st.info(f"Only one model has {SPLIT_LABELS[source.split]} predictions: nothing to compare yet.")
        return
    default = [n for n in st.session_state.get(KEY_COMPARE, []) if n in names] or names[:2]
    st.session_state[KEY_COMPARE] = default
    chosen = st.multiselect(f"Runs to compare on the {SPLIT_LABELS[source.split]} split", names, key=KEY_COMPARE)
    sources = [Source(m, source.split, m.path / evaluate.SPLIT_FILES[source.split]) for m in candidates if m.name in chosen]
    if len(sources) < 2:
        st.info("Pick two or more runs.")
        return
    _warn_different_splits(sources)
    _warn_different_n(sources)
    positive = positive_class(classes_of(source))
    st.dataframe(_comparison_table(sources, positive, threshold()), hide_index=True, width="stretch")
    class_name = st.selectbox("ROC curves of class", classes_of(source), index=classes_of(source).index(positive),
                              key="evaluate_compare_class")
    curves = {}
    for s in sources:
        preds = load_source(s)
        y_true, probs = evaluate.arrays(preds, classes_of(s))
        roc = metrics.roc_curves(y_true, probs, classes_of(s))
        curves[f"{s.model.name} (n = {len(preds)})"] = roc[roc["class"] == class_name]
    fig = figs.compare_roc_figure(curves, f"ROC of {class_name}, {SPLIT_LABELS[source.split]} split")
    st.plotly_chart(fig, key="evaluate_compare_chart")
    figure_download(fig, f"compare_roc_{class_name}", "evaluate_dl_compare")


def _comparison_table(sources: list, positive: str, t: float) -> pd.DataFrame:
    """One row per metric, one column per run: a few runs fit the page, however many metrics there are."""
    columns = {}
    for s in sources:
        table = headline_table(s, positive, t)
        column = {"split": SPLIT_LABELS[s.split], "n": f"{int(table['n'].iloc[0]):,}"}
        column.update({r["label"]: fmt_ci(r["value"], r["ci_low"], r["ci_high"]) for _, r in table.iterrows()})
        columns[s.model.name] = column
    return pd.DataFrame(columns).rename_axis("metric").reset_index()


def _warn_different_splits(sources: list) -> None:
    hashes = {model_metadata(s.model.path).get("split_sha256") for s in sources}
    if len(hashes) > 1:
        st.warning("These runs were evaluated on different splits (split_sha256 differs): "
                   "their numbers come from different images and are not directly comparable.")


def _warn_different_n(sources: list) -> None:
    """Say so when the runs were scored on different numbers of images, or on very few."""
    counts = {s.model.name: len(load_source(s)) for s in sources}
    message = metrics.sample_size_warning(counts)
    if message:
        st.warning(message)


@st.cache_data(max_entries=16, show_spinner="Computing all metrics…")
def _metrics_csv(csv: str, mtime: int, classes: tuple, split: str, positive: str, t: float) -> bytes:
    preds = evaluate.read_predictions(Path(csv), classes)
    tidy = evaluate.metrics_frame(preds, classes, split, positive=positive, threshold=t, n_boot=N_BOOT, seed=SEED)
    return predictions.csv_text(tidy).encode("utf-8")


def _predictions_csv(source: Source, preds: pd.DataFrame) -> str:
    """The predictions file of what Predict shows: calibrated as the model folder says, with its columns saying so."""
    status = calibration_of(source)
    applied = status["applied"]
    return predictions.to_csv(served_table(source, preds), predictions.kind(applied), temperature=applied,
                              n=status["n"])


def export_panel(source: Source, preds: pd.DataFrame) -> None:
    """Downloads: metrics CSV, ISIC submission CSV, predictions and confusion matrix."""
    classes = classes_of(source)
    positive, t = positive_class(classes), threshold()
    st.markdown(split_caption(source, len(preds)))
    stem = f"{source.model.name.split(' ')[0]}_{source.split}"
    metrics_csv = _metrics_csv(str(source.csv), mtime(source.csv), tuple(classes), source.split, positive, round(t, 4))
    st.download_button("Metrics CSV (headline with 95 % CI, per class, macro)", metrics_csv,
                       file_name=f"metrics_{stem}.csv", mime="text/csv", key="evaluate_dl_metrics")
    try:
        submission = predictions.csv_text(evaluate.submission_frame(preds, classes), float_format="%.6f")
    except evaluate.PredictionsError as err:
        st.info(f"No ISIC submission: {err}")
    else:
        st.download_button("ISIC submission CSV (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC)", submission,
                           file_name=f"isic_submission_{stem}.csv", mime="text/csv", key="evaluate_dl_submission")
    y_true, probs = evaluate.arrays(preds, classes)
    counts = metrics.confusion_counts(y_true, metrics.predicted_labels(probs), len(classes))
    confusion = pd.DataFrame(counts, index=pd.Index(classes, name="true"), columns=classes)
    st.download_button("Confusion matrix CSV (counts)", predictions.csv_text(confusion, index=True),
                       file_name=f"confusion_{stem}.csv", mime="text/csv", key="evaluate_dl_confusion_csv")
    st.download_button("Predictions CSV (the probabilities Predict gives)", _predictions_csv(source, preds),
                       file_name=f"predictions_{stem}.csv", mime="text/csv", key="evaluate_dl_predictions")
    formats = "HTML or PNG" if png_export_available() else "HTML (PNG needs the optional kaleido package)"
    st.caption(f"Figures download as {formats} from the buttons under each chart.")
