"""The Segmentation tab of the Evaluate page: the shipped segmenter's per-image scores.

Everything but the worst-case pictures comes from the saved ``scores_<split>.csv``
(no TensorFlow). The worst cases need the predicted masks, so they are drawn
only when asked for, running the segmenter on those few images.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.contracts import paths

from core.evaluation import segmentation_metrics
from core.dataset.data import DatasetError
from core.dataset.images import read_image, read_mask
from ui.evaluate.common import N_BOOT, SEED, SPLIT_LABELS, fmt_ci, mtime
from ui.loaders import dataset_table

KEY_SPLIT = "evaluate_segmentation_split"
KEY_WORST = "evaluate_segmentation_worst"
KEY_N_WORST = "evaluate_segmentation_n_worst"
METRIC_LABELS = {"dice": "Dice", "jaccard": "Jaccard", "thresholded_jaccard": "Thresholded Jaccard (ISIC 2018 Task 1)"}


def available_splits(folder: Path) -> list:
    """The splits the segmenter folder has per-image scores for."""
    return [s for s in ("val", "test") if segmentation_metrics.scores_path(folder, s).is_file()]


@st.cache_data(max_entries=8, show_spinner=False)
def _scores(folder: str, split: str, mtime: int) -> pd.DataFrame:
    return segmentation_metrics.load_scores(Path(folder), split)


@st.cache_data(max_entries=8, show_spinner="Bootstrapping confidence intervals…")
def _tables(folder: str, split: str, mtime: int) -> tuple:
    scores = segmentation_metrics.load_scores(Path(folder), split)
    return (segmentation_metrics.summary(scores, n_boot=N_BOOT, seed=SEED),
            segmentation_metrics.per_class(scores, n_boot=N_BOOT, seed=SEED))


def dice_histogram(scores: pd.DataFrame) -> go.Figure:
    """Histogram of per-image Dice, with the ISIC 0.65-Jaccard cut-off (Dice 0.788) marked."""
    cut = 2 * segmentation_metrics.ISIC_JACCARD_THRESHOLD / (1 + segmentation_metrics.ISIC_JACCARD_THRESHOLD)
    fig = go.Figure(go.Histogram(x=scores["dice"], xbins={"start": 0, "end": 1.0001, "size": 0.02},
                                 marker_color="#1f77b4", name="images"))
    fig.add_vline(x=cut, line_dash="dash", line_color="#d62728",
                  annotation_text="Jaccard 0.65: below scores 0 in ISIC 2018", annotation_position="top left")
    fig.update_layout(xaxis={"title": "Dice per image", "range": [0, 1.01]}, yaxis={"title": "images"},
                      height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10}, showlegend=False)
    return fig


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows as ``metric, mean [95 % CI], n`` for display."""
    return pd.DataFrame({"metric": summary["metric"].map(METRIC_LABELS),
                         "mean [95 % CI]": [fmt_ci(r.mean, r.low, r.high) for r in summary.itertuples()],
                         "n": summary["n"]})


def segmentation_panel() -> None:
    """The whole tab: split picker, summary with intervals, Dice histogram, per-class table, worst cases."""
    folder = paths.segmenter_dir()
    splits = available_splits(folder)
    if not splits:
        st.info("No lesion segmenter with saved scores (models/segmenter/scores_val.csv, scores_test.csv) was found.")
        return
    split = st.radio("Segmentation split", splits, index=len(splits) - 1, key=KEY_SPLIT, horizontal=True,
                     format_func=SPLIT_LABELS.get)
    stamp = mtime(segmentation_metrics.scores_path(folder, split))
    scores = _scores(str(folder), split, stamp)
    summary, by_class = _tables(str(folder), split, stamp)
    st.markdown(f"**Lesion segmenter · {SPLIT_LABELS[split]}** · n = {len(scores):,} images, scored at each "
                "image's own size against the HAM10000 masks")
    left, right = st.columns([2, 3])
    left.dataframe(summary_table(summary), hide_index=True, width="stretch")
    left.caption("Anchors: ISIC 2018 Task 1 winner, thresholded Jaccard 0.802; U-Nets on HAM10000, Dice ≈ 0.90.")
    right.plotly_chart(dice_histogram(scores), width="stretch", key="evaluate_segmentation_hist")
    st.markdown("**Per class** (Dice 95 % CI by bootstrap over images)")
    st.dataframe(by_class, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f") for c in by_class.columns[2:]})
    worst_cases(scores)


def worst_cases(scores: pd.DataFrame) -> None:
    """The lowest-Dice images side by side: image, dataset mask, predicted mask (runs the segmenter on request)."""
    n = st.slider("Worst cases to show", 3, 12, 6, key=KEY_N_WORST)
    if not st.toggle("Show the worst cases (runs the segmenter on them)", key=KEY_WORST):
        return
    try:
        frame = dataset_table().set_index("image_id")
    except DatasetError:
        st.info("The worst cases need the dataset's images and masks, which are not present.")
        return
    from ui.segment_view import load_segmenter

    segmenter = load_segmenter()
    for row in scores.nsmallest(n, "dice").itertuples():
        if row.image_id not in frame.index or not frame.at[row.image_id, "mask_path"]:
            continue
        rgb = read_image(frame.at[row.image_id, "path"])
        truth = read_mask(Path(frame.at[row.image_id, "mask_path"]))
        predicted = segmenter.segment(rgb)
        st.markdown(f"`{row.image_id}` · {row.dx} · Dice {row.dice:.3f} · Jaccard {row.jaccard:.3f}")
        cols = st.columns(3)
        cols[0].image(rgb, caption="Image", width="stretch")
        cols[1].image(_mask_image(truth), caption="Dataset mask", width="stretch")
        cols[2].image(_mask_image(predicted), caption="Predicted mask", width="stretch")


def _mask_image(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask, dtype=np.uint8) * 255
