"""The Evaluate page's tabs, declared once as (label, panel) pairs; the page draws them in this order.

Every panel takes the page's one :class:`Evaluation`, so adding or moving a tab is a change to :data:`TABS` alone.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from core.evaluation.evaluate import Evaluable
from ui.evaluate import compare, metadata, model_export, panels, reliability, segmentation
from ui.evaluate.common import Source


@dataclass(frozen=True)
class Evaluation:
    """What the tabs draw from: the models on offer, the chosen one, the evaluated source and its predictions."""

    models: list
    model: Evaluable
    source: Source
    preds: pd.DataFrame


Panel = Callable[[Evaluation], None]


def _of_predictions(panel: Callable[[Source, pd.DataFrame], None]) -> Panel:
    """A panel drawn from the source and its predictions alone."""
    return lambda evaluation: panel(evaluation.source, evaluation.preds)


def _export(evaluation: Evaluation) -> None:
    compare.export_panel(evaluation.source, evaluation.preds)
    model_export.tflite_panel(evaluation.model)


TABS: tuple[tuple[str, Panel], ...] = (
    ("Summary", _of_predictions(panels.summary_panel)),
    ("Confusion", _of_predictions(panels.confusion_panel)),
    ("Per class", _of_predictions(panels.class_table_panel)),
    ("ROC & PR", _of_predictions(panels.curves_panel)),
    ("Operating point", _of_predictions(panels.operating_point_panel)),
    ("Calibration", _of_predictions(reliability.calibration_panel)),
    ("Subgroups", _of_predictions(reliability.subgroup_panel)),
    ("Age, sex, site", _of_predictions(metadata.metadata_panel)),
    ("Compare runs", lambda evaluation: compare.compare_panel(evaluation.models, evaluation.source)),
    ("Export", _export),
    ("Segmentation", lambda evaluation: segmentation.segmentation_panel()),
)


def show_tabs(evaluation: Evaluation) -> None:
    """Every tab of :data:`TABS`, each with its panel."""
    for tab, (_, panel) in zip(st.tabs([label for label, _ in TABS]), TABS):
        with tab:
            panel(evaluation)
