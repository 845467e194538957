"""Evaluate: metrics of saved predictions, by split, with intervals, calibration and subgroups."""

import streamlit as st

from ui.evaluate import common, overlap, sources, tabs
from ui.frame import icon_of

st.title(f"{icon_of('Evaluate')} Evaluate")
models = common.evaluable_models()
if not models:
    common.no_models_message()
    st.stop()

left, right = st.columns([2, 3])
with left:
    model = common.pick_model(models)
with right:
    split = common.pick_split(model)
source = sources.source_for(model, split)
if source is None:
    st.stop()
preds = common.readable_predictions(source)
if preds is None:
    st.stop()
common.probabilities_note(source)
overlap.overlap_panel(source)
tabs.show_tabs(tabs.Evaluation(models, model, source, preds))
