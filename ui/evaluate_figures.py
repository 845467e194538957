"""Plotly figures of the Evaluate page. Pure plotly: no Streamlit, so they test without a server."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.contracts.labels import CLASSES

_PALETTE = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880", "#FF97FF")


def class_colour(name: str) -> str:
    """A stable colour per class code (by its place in the label list)."""
    index = CLASSES.index(name) if name in CLASSES else hash(name)
    return _PALETTE[index % len(_PALETTE)]


def confusion_figure(counts: np.ndarray, normalised: np.ndarray, classes, title: str) -> go.Figure:
    """Heatmap coloured by row-normalised share, each cell labelled with count and share.

    An invisible marker sits on every cell so a click (or a box from the toolbar)
    selects the cell: plotly heatmaps themselves do not report selections.
    """
    classes = list(classes)
    text = [[f"{counts[i, j]}<br>{_pct(normalised[i, j])}" for j in range(len(classes))] for i in range(len(classes))]
    fig = go.Figure(
        go.Heatmap(
            z=np.nan_to_num(normalised), x=classes, y=classes, text=text, texttemplate="%{text}",
            colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "row share"}, hoverinfo="skip",
        )
    )
    xs, ys = np.meshgrid(classes, classes)
    fig.add_trace(
        go.Scatter(
            x=xs.ravel(), y=ys.ravel(), mode="markers", marker={"size": 40, "opacity": 0.01, "symbol": "square"},
            text=np.array(text).ravel(), showlegend=False,
            # Hover must stay on (not "skip") for clicks on the markers to select the cell.
            hovertemplate="true %{y} → predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
        # No drag mode: Streamlit turns clicks into selections only when the chart is not in box/lasso
        # mode (a box drag stays available from the toolbar).
        height=520, clickmode="event+select", dragmode=False,
    )
    return fig


def _pct(value: float) -> str:
    return "–" if np.isnan(value) else f"{100 * value:.0f}%"


def roc_figure(curves: pd.DataFrame, aucs: dict, title: str) -> go.Figure:
    """One-vs-rest ROC curves, one line per class, AUC in the legend."""
    fig = go.Figure()
    for name, curve in curves.groupby("class", sort=False):
        fig.add_trace(
            go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", line={"color": class_colour(name)},
                       name=f"{name} (AUC {aucs.get(name, float('nan')):.3f})",
                       customdata=curve["threshold"], hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}, t %{customdata:.3f}")
        )
    _diagonal(fig)
    fig.update_layout(title=title, xaxis_title="1 − specificity (FPR)", yaxis_title="sensitivity (TPR)", height=480)
    return fig


def pr_figure(curves: pd.DataFrame, aps: dict, title: str) -> go.Figure:
    """Precision-recall curves, one line per class, average precision in the legend."""
    fig = go.Figure()
    for name, curve in curves.groupby("class", sort=False):
        fig.add_trace(
            go.Scatter(x=curve["recall"], y=curve["precision"], mode="lines", line={"color": class_colour(name)},
                       name=f"{name} (AP {aps.get(name, float('nan')):.3f})")
        )
    fig.update_layout(title=title, xaxis_title="recall (sensitivity)", yaxis_title="precision (PPV)",
                      yaxis_range=[0, 1.02], height=480)
    return fig


def compare_roc_figure(curves: dict, title: str) -> go.Figure:
    """ROC curves of one class for several runs: ``curves`` maps a run label to its curve."""
    fig = go.Figure()
    for i, (label, curve) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label,
                                 line={"color": _PALETTE[i % len(_PALETTE)]}))
    _diagonal(fig)
    fig.update_layout(title=title, xaxis_title="1 − specificity (FPR)", yaxis_title="sensitivity (TPR)", height=480)
    return fig


def reliability_figure(tables: dict, title: str) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per table."""
    fig = go.Figure()
    for i, (label, table) in enumerate(tables.items()):
        used = table[table["count"] > 0]
        fig.add_trace(
            go.Scatter(x=used["confidence"], y=used["accuracy"], mode="lines+markers", name=label,
                       marker={"size": np.clip(np.sqrt(used["count"]) * 2, 5, 30)},
                       line={"color": _PALETTE[i % len(_PALETTE)]}, customdata=used["count"],
                       hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>n %{customdata}")
        )
    _diagonal(fig, name="perfect calibration")
    fig.update_layout(title=title, xaxis_title="mean confidence (top probability)", yaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_range=[0, 1.02], height=460)
    return fig


def _diagonal(fig: go.Figure, name: str = "chance") -> None:
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name=name,
                             line={"dash": "dot", "color": "grey"}, hoverinfo="skip"))
