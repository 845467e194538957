"""Several runs' curves overlaid, with TensorBoard's smoothing (a section of the Train page)."""

import plotly.graph_objects as go
import streamlit as st

from core.contracts import paths

from core.training import runs
from core.contracts import runfolder as rf
COMPARE_RUNS = "train_compare_runs"
COMPARE_CURVE = "train_compare_curve"
COMPARE_SMOOTHING = "train_compare_smoothing"
CURVE_LABELS = {rf.val_key("balanced_accuracy"): "val balanced accuracy", rf.val_key("auc"): "val macro AUC",
                rf.val_key("loss"): "val loss", rf.val_key("accuracy"): "val accuracy",
                "balanced_accuracy": "train balanced accuracy", "auc": "train macro AUC", "loss": "train loss",
                "accuracy": "train accuracy", "lr": "learning rate",
                rf.val_key("dice"): "val Dice (segmentation)", rf.val_key("jaccard"): "val Jaccard (segmentation)"}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def compare_section(infos: list) -> None:
    """Pick runs, a curve and a smoothing weight; draw the runs' curves on one chart."""
    ids = [info["id"] for info in infos]
    if len(ids) < 2:
        return
    with st.expander("Compare runs", expanded=False):
        chosen = st.multiselect("Runs", ids, default=ids[:2], key=COMPARE_RUNS)
        left, right = st.columns(2)
        curve = left.selectbox("Curve", list(CURVE_LABELS), format_func=CURVE_LABELS.get, key=COMPARE_CURVE)
        weight = right.slider("Smoothing", min_value=0.0, max_value=0.95, value=0.6, step=0.05, key=COMPARE_SMOOTHING,
                              help="Exponential moving average as in TensorBoard; the raw curve stays faint behind.")
        epochs = {run_id: runs.read_metrics(paths.runs_dir() / run_id).epochs for run_id in chosen}
        split = "val" if curve.startswith(rf.VAL_PREFIX) else "train"
        sizes = {run_id: runs.split_sizes(paths.runs_dir() / run_id).get(split) for run_id in chosen}
        st.plotly_chart(overlay_figure(epochs, curve, weight, sizes), width="stretch", key="train_compare_chart")


def overlay_figure(epochs: dict, curve: str, weight: float, sizes: dict | None = None) -> go.Figure:
    """One smoothed line per run (raw values faint behind it) of ``curve`` against the epoch.

    ``sizes`` gives each run's n of the curve's split, named in the legend.
    """
    fig = go.Figure()
    for n, (run_id, frame) in enumerate(epochs.items()):
        if curve not in frame or frame.empty:
            continue
        colour = COLOURS[n % len(COLOURS)]
        fig.add_trace(go.Scatter(x=frame["epoch"], y=frame[curve], mode="lines", opacity=0.25, showlegend=False,
                                 line={"color": colour}, hoverinfo="skip", legendgroup=run_id))
        fig.add_trace(go.Scatter(x=frame["epoch"], y=runs.smooth(frame[curve], weight), mode="lines+markers",
                                 name=_legend(run_id, (sizes or {}).get(run_id), curve), line={"color": colour},
                                 legendgroup=run_id))
    fig.update_layout(height=380, xaxis_title="epoch", yaxis_title=CURVE_LABELS.get(curve, curve),
                      margin={"t": 30, "b": 20, "l": 20, "r": 20}, legend={"orientation": "h", "y": -0.25})
    if curve == "lr":
        fig.update_yaxes(type="log", exponentformat="e")
    return fig


def _legend(run_id: str, n: int | None, curve: str) -> str:
    if curve == "lr":
        return run_id
    return f"{run_id} (n = {n:,})" if n else f"{run_id} (n not recorded)"
