"""Evaluate: metrics of saved predictions, by split, with intervals, calibration and subgroups."""

from ui.frame import page_setup

page_setup("Evaluate", "📊")

import streamlit as st  # noqa: E402  (page_setup must run first)

from core.evaluate import PredictionsError  # noqa: E402
from ui import evaluate as view  # noqa: E402

st.title("📊 Evaluate")
models = view.evaluable_models()
if not models:
    view.no_models_message()
    st.stop()

left, right = st.columns([2, 3])
with left:
    model = view.pick_model(models)
with right:
    split = view.pick_split(model)
source = view.source_for(model, split)
if source is None:
    st.stop()
try:
    preds = view.load_source(source)
except (PredictionsError, OSError) as err:
    st.error(f"Cannot evaluate {source.label}: {err}")
    st.stop()

tabs = st.tabs(["Summary", "Confusion", "Per class", "ROC & PR", "Operating point", "Calibration",
                "Subgroups", "Compare runs", "Export"])
with tabs[0]:
    view.summary_panel(source, preds)
with tabs[1]:
    view.confusion_panel(source, preds)
with tabs[2]:
    view.class_table_panel(source, preds)
with tabs[3]:
    view.curves_panel(source, preds)
with tabs[4]:
    view.operating_point_panel(source, preds)
with tabs[5]:
    view.calibration_panel(source, preds)
with tabs[6]:
    view.subgroup_panel(source, preds)
with tabs[7]:
    view.compare_panel(models, source)
with tabs[8]:
    view.export_panel(source, preds)
