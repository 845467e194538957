"""Evaluate: metrics of saved predictions, by split, with intervals, calibration and subgroups."""

from ui.frame import icon_of, page_setup

page_setup("Evaluate")

import streamlit as st  # noqa: E402  (page_setup must run first)

from core.evaluation.evaluate import PredictionsError  # noqa: E402
from core.serving.modelio import ModelFolderError  # noqa: E402
from core.dataset.uploads import redact_paths  # noqa: E402
from ui.evaluate import common, compare, model_export, overlap, panels, reliability, segmentation, sources  # noqa: E402

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
try:
    preds = common.load_source(source)
except (PredictionsError, ModelFolderError, OSError) as err:
    st.error(f"Cannot evaluate {source.label}: {redact_paths(str(err))}")
    st.stop()
common.probabilities_note(source)
overlap.overlap_panel(source)

tabs = st.tabs(["Summary", "Confusion", "Per class", "ROC & PR", "Operating point", "Calibration",
                "Subgroups", "Compare runs", "Export", "Segmentation"])
with tabs[0]:
    panels.summary_panel(source, preds)
with tabs[1]:
    panels.confusion_panel(source, preds)
with tabs[2]:
    panels.class_table_panel(source, preds)
with tabs[3]:
    panels.curves_panel(source, preds)
with tabs[4]:
    panels.operating_point_panel(source, preds)
with tabs[5]:
    reliability.calibration_panel(source, preds)
with tabs[6]:
    reliability.subgroup_panel(source, preds)
with tabs[7]:
    compare.compare_panel(models, source)
with tabs[8]:
    compare.export_panel(source, preds)
    model_export.tflite_panel(model)
with tabs[9]:
    segmentation.segmentation_panel()
