"""The Home page's line about the shipped classifier: what it is and how often it is right on held-out images.

Read from the model folder's own files (``model.json`` and ``predictions_test.csv``), so it works with no
dataset installed and never imports TensorFlow or scikit-learn: the Home page stays instant.
"""

from pathlib import Path

import numpy as np
import streamlit as st

from core.evaluation import metrics

from core.contracts import predictions
from core.serving.modelio import ModelFolderError, input_size, is_model_dir, read_metadata
from core.contracts.paths import default_model_dir


def shipped_model_summary() -> str | None:
    """Markdown: architecture, input, test balanced accuracy and accuracy with n; None without a usable model."""
    folder = default_model_dir()
    test_file = folder / predictions.FILES["test"]
    if not is_model_dir(folder) or not test_file.is_file():
        return None
    return _summary(str(folder.resolve()), test_file.stat().st_mtime_ns)


@st.cache_data(show_spinner=False, max_entries=4)
def _summary(folder: str, test_mtime: int) -> str | None:
    try:
        meta = read_metadata(Path(folder))
        classes = list(meta["classes"])
        table = predictions.read(Path(folder) / predictions.FILES["test"], classes)
    except (ModelFolderError, OSError, KeyError, ValueError):  # PredictionsError is a ValueError
        return None  # the Evaluate page explains what is wrong with the folder
    y_true, probs = predictions.label_indices_and_probs(table, classes)
    y_pred = probs.argmax(axis=1)
    balanced = metrics.balanced_accuracy(y_true, y_pred, len(classes))
    height, width = input_size(meta)
    return (
        f"**The shipped classifier**: {meta.get('arch', 'a CNN')} on the whole image at {width} × {height} px. "
        f"On the held-out **test split** ({len(table):,} images of lesions it never saw), its balanced accuracy "
        f"(the mean of the {len(classes)} per-class hit rates) is **{balanced:.3f}** and its accuracy "
        f"{np.mean(y_true == y_pred):.3f}. Intervals, per-class figures and calibration: Evaluate; how it was "
        "made: the model card in its folder (`MODEL_CARD.md`)."
    )
