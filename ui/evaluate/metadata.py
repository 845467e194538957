"""Evaluate's metadata tab: the same images scored by the image alone and with age, sex and site, side by side."""

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.evaluation import metrics
from core.serving import metadata_branch as mb
from ui.evaluate.common import (
    N_BOOT, SEED, Source, classes_of, fmt_ci, image_table, metric_columns, mtime, positive_class, served_table,
    split_caption, threshold,
)
from ui.text import plain

COLUMNS = ("age", "sex", "localization")
ALONE, WITH = "image alone", "with age, sex, site"


@st.cache_data(max_entries=4, show_spinner=False)
def _read_branch(model_dir: str, mtime: int, classes: tuple) -> mb.MetadataBranch | None:
    return mb.read(Path(model_dir), classes)


def branch_of(source: Source) -> mb.MetadataBranch | None:
    """The source model's metadata branch (cached by the file's modification time), or None."""
    path = mb.path_in(source.model.path)
    return _read_branch(str(source.model.path), mtime(path) if path.is_file() else 0, tuple(classes_of(source)))


@st.cache_data(max_entries=8, show_spinner="Bootstrapping confidence intervals…")
def _headlines(probs: dict, y_true: np.ndarray, classes: tuple, positive: str, t: float) -> pd.DataFrame:
    """One headline table per variant, side by side: ``metric`` then one column per variant."""
    columns = {}
    for name, p in probs.items():
        head = metrics.headline(y_true, p, classes, positive=positive, threshold=t, n_boot=N_BOOT, seed=SEED)
        columns[name] = [fmt_ci(v, lo, hi) for v, lo, hi in head[["value", "ci_low", "ci_high"]].to_numpy()]
        metric_names = head["label"].tolist()
    return pd.DataFrame({"metric": metric_names, **columns})


def metadata_panel(source: Source, preds: pd.DataFrame) -> None:
    """With and without age, sex and site on the chosen split, and what the branch learnt."""
    try:
        branch = branch_of(source)
    except mb.MetadataBranchError as err:
        st.error(f"The model's age/sex/site branch cannot be read: {plain(err)}")
        return
    if branch is None:
        st.info("This model has no age/sex/site branch: it classifies from the image alone. "
                "`lesionlab metadata-branch --model DIR --write` fits one on a run's training split.")
        return
    classes = classes_of(source)
    table = image_table(source)
    usable = table is not None and set(COLUMNS) & set(table.columns)
    st.markdown(split_caption(source, len(preds)))
    if usable:
        _side_by_side(source, preds, table, branch, classes)
    else:
        st.info("The side by side needs each image's age, sex and site: the dataset for the validation and test "
                "splits (set HAM10000_DIR), or those columns in an external truth table. Shown instead: the "
                "validation figures recorded when the branch was fitted.")
        _recorded(branch)
    _weights(branch)


def _side_by_side(source: Source, preds: pd.DataFrame, table: pd.DataFrame, branch, classes: list) -> None:
    columns = ["image_id", *[c for c in COLUMNS if c in table.columns]]
    joined = preds[["image_id"]].merge(table[columns].drop_duplicates("image_id"), on="image_id", how="left")
    known = {field: int(mb.encode_table(joined, keep=(field,)).any(axis=1).sum()) for field in mb.FIELDS}
    served = served_table(source, preds)[classes].to_numpy(np.float64)
    probs = {ALONE: served, WITH: branch.apply_table(served, joined)}
    y_true = metrics.encode_labels(preds["dx"], classes)
    positive, t = positive_class(classes), threshold()
    st.dataframe(_headlines(probs, y_true, tuple(classes), positive, round(t, 4)), hide_index=True, width="stretch")
    st.caption(f"Both columns from the probabilities Predict shows (after the model's temperature), single view; "
               f"bootstrap 95 % intervals ({N_BOOT} resamples). {positive} sensitivity and specificity at threshold "
               f"{t:.2f}. Age known for {known['age']:,}, sex for {known['sex']:,}, site for {known['site']:,} of "
               f"{len(preds):,} images; an image without a field is scored on the others.")
    per_class = pd.DataFrame({name: metrics.class_table(y_true, p, classes)["sensitivity"] for name, p in probs.items()})
    per_class.insert(0, "n", np.bincount(y_true, minlength=len(classes)))
    st.markdown("**Sensitivity per class**")
    st.dataframe(per_class.rename_axis("class").reset_index().style.format(precision=3), hide_index=True)


def _recorded(branch) -> None:
    rows = branch.meta.get("validation") or []
    if not rows:
        st.caption("The branch file records no validation figures.")
        return
    recorded = pd.DataFrame(rows)
    st.dataframe(recorded.style.format(precision=3), hide_index=True, column_config=metric_columns(recorded.columns))


def _weights(branch) -> None:
    st.markdown("**What the branch learnt**")
    weights = branch.contributions()
    limit = float(np.abs(weights.to_numpy()).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=weights.to_numpy(), x=list(weights.columns), y=list(weights.index),
                               zmin=-limit, zmax=limit, colorscale="RdBu", reversescale=True,
                               text=np.round(weights.to_numpy(), 2), texttemplate="%{text}",
                               colorbar={"title": "log-odds"}))
    fig.update_layout(height=28 * len(weights) + 80, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      yaxis={"autorange": "reversed"})
    st.plotly_chart(fig, key="evaluate_metadata_weights")
    fitted = branch.meta.get("fitted_on", {})
    recorded = lambda value: plain(value, max_chars=40)  # noqa: E731  (read from the file: shown literally)
    st.caption(f"Log-odds each given field adds to each class (red: more likely, blue: less). Fitted on "
               f"{recorded(fitted.get('n_images', '?'))} images of the {recorded(fitted.get('split', '?'))} split "
               f"with the image model frozen, each field dropped at random (p = {recorded(branch.meta.get('drop', '?'))}), "
               f"L2 {recorded(branch.meta.get('l2', '?'))}. These are HAM10000's patients (Vienna and Queensland): "
               "associations of that population, not rules.")

