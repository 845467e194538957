"""Shared pieces of the Evaluate page: session keys, the evaluated source, cached loaders, pickers and formatting."""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.serving import calibration, modelio

from core.evaluation import evaluate, metrics

from core.contracts import paths, predictions
from core.dataset.data import DatasetError
from core.dataset.uploads import redact_paths
from core.contracts.labels import metric_help, metric_name
from ui.loaders import dataset_table
from ui.text import folder_named

KEY_MODEL = "evaluate_model"


KEY_SPLIT = "evaluate_split"


KEY_POSITIVE = "evaluate_positive"


KEY_THRESHOLD = "evaluate_threshold"


KEY_TARGET = "evaluate_target_sensitivity"


KEY_CELL_TRUE = "evaluate_cell_true"


KEY_CELL_PRED = "evaluate_cell_pred"


KEY_CELL_EVENT = "evaluate_cell_last_selection"


KEY_COMPARE = "evaluate_compare"


KEY_EXTERNAL = "evaluate_external_result"


N_BOOT = 1000


SEED = 0


SPLIT_LABELS = {"train": "training", "val": "validation", "test": "test", "external": "external test set"}


MAX_CELL_IMAGES = 12


@dataclass(frozen=True)
class Source:
    """One evaluable set of predictions: a model folder and a split."""

    model: evaluate.Evaluable
    split: str
    csv: Path
    truth: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.model.name} · {SPLIT_LABELS[self.split]}"


def mtime(path: Path) -> int:
    return Path(path).stat().st_mtime_ns


@st.cache_data(max_entries=32, show_spinner=False)
def _read_predictions(csv: str, mtime: int, classes: tuple) -> pd.DataFrame:
    """``core.evaluation.evaluate.read_predictions`` behind the cache; ``mtime`` is only a key."""
    return evaluate.read_predictions(Path(csv), classes)


@st.cache_data(max_entries=8, show_spinner=False)
def _read_metadata(model_dir: str, mtime: int) -> dict:
    return modelio.read_metadata(Path(model_dir))


def model_metadata(model_dir: Path) -> dict:
    """``model.json`` of a model folder, cached by its modification time."""
    return _read_metadata(str(model_dir), mtime(Path(model_dir) / modelio.METADATA_FILE))


def classes_of(source: Source) -> list:
    """The class codes of the source's model, in output order."""
    return list(model_metadata(source.model.path)["classes"])


def load_source(source: Source) -> pd.DataFrame:
    """The validated predictions of a source (cached); raises ``PredictionsError``."""
    return _read_predictions(str(source.csv), mtime(source.csv), tuple(classes_of(source)))


def readable_predictions(source: Source) -> pd.DataFrame | None:
    """The source's predictions (:func:`load_source`); None, after saying why, when they cannot be read."""
    try:
        return load_source(source)
    except (predictions.PredictionsError, modelio.ModelFolderError, OSError) as err:
        st.error(f"Cannot evaluate {source.label}: {redact_paths(str(err))}")
        return None


def calibration_of(source: Source) -> dict:
    """What Predict applies to this model's probabilities (``core.serving.calibration.temperature_status``)."""
    return calibration.temperature_status(model_metadata(source.model.path), source.model.path)


def served_table(source: Source, preds: pd.DataFrame) -> pd.DataFrame:
    """The predictions as Predict, batch and ``core.serving.predict`` give them: calibrated with the same temperature."""
    return calibration.calibrate_table(preds, classes_of(source), calibration_of(source)["applied"])


def probabilities_note(source: Source) -> None:
    """Say once which probabilities the page shows, in the words Predict uses."""
    status = calibration_of(source)
    where = ("" if status["applied"] is None else
             " Images and downloads on this page show these probabilities, as Predict does; metrics, curves and "
             "thresholds are computed from the saved predictions file (the model's raw softmax, the same arg-max "
             "class), and the Calibration tab compares both.")
    st.caption(status["text"] + where)


@st.cache_data(max_entries=32, show_spinner="Bootstrapping confidence intervals…")
def _headline(csv: str, mtime: int, classes: tuple, positive: str, threshold: float) -> pd.DataFrame:
    preds = _read_predictions(csv, mtime, classes)
    y_true, probs = evaluate.arrays(preds, classes)
    return metrics.headline(y_true, probs, classes, positive=positive, threshold=threshold, n_boot=N_BOOT, seed=SEED)


def headline_table(source: Source, positive: str, threshold: float) -> pd.DataFrame:
    """Headline metrics with bootstrap intervals of a source (cached)."""
    return _headline(str(source.csv), mtime(source.csv), tuple(classes_of(source)), positive, round(threshold, 4))


@st.cache_data(max_entries=16, show_spinner=False)
def _class_metrics(csv: str, mtime: int, classes: tuple) -> tuple:
    preds = _read_predictions(csv, mtime, classes)
    y_true, probs = evaluate.arrays(preds, classes)
    return (metrics.class_table(y_true, probs, classes), metrics.roc_curves(y_true, probs, classes),
            metrics.pr_curves(y_true, probs, classes))


def class_metrics(source: Source) -> tuple:
    """``(per-class table, ROC curves, PR curves)`` of a source (cached): computed once, not on every rerun."""
    return _class_metrics(str(source.csv), mtime(source.csv), tuple(classes_of(source)))


@st.cache_data(max_entries=8, show_spinner=False)
def _read_truth_table(csv: str, mtime: int) -> pd.DataFrame:
    return predictions.read_csv(csv, dtype={"image_id": str})


def image_table(source: Source) -> pd.DataFrame | None:
    """Image paths and metadata for a source: the dataset for val/test, the truth table for external."""
    if source.truth is not None:
        return _read_truth_table(str(source.truth), mtime(source.truth)) if source.truth.is_file() else None
    try:
        return dataset_table()
    except DatasetError:
        return None


def evaluable_models() -> list:
    """Model folders with predictions (a directory listing: cheap, never cached)."""
    return evaluate.list_evaluable()


def no_models_message() -> None:
    """Explain that nothing can be evaluated yet, and how to change that."""
    st.warning(
        "No model with saved predictions was found. Evaluation reads `predictions_val.csv` / "
        f"`predictions_test.csv` from the shipped model ({folder_named(paths.default_model_dir(), 'HAM_DEFAULT_MODEL')}) "
        f"or from finished training runs under {folder_named(paths.runs_dir(), 'HAM_RUNS_DIR')}. Train a model on "
        "the Train page, or set "
        "`HAM_DEFAULT_MODEL` / `HAM_RUNS_DIR`."
    )


def pick_model(models: list) -> evaluate.Evaluable:
    """Selectbox of evaluable models, the shipped default first."""
    names = [m.name for m in models]
    if st.session_state.get(KEY_MODEL) not in names:
        st.session_state[KEY_MODEL] = names[0]
    name = st.selectbox("Model", names, key=KEY_MODEL, help="The shipped model and every finished run with predictions.")
    return models[names.index(name)]


def pick_split(model: evaluate.Evaluable) -> str:
    """Radio of the model's splits plus the external test set; test is preselected when present."""
    options = [s for s in ("val", "test") if s in model.splits] + ["external"]
    if st.session_state.get(KEY_SPLIT) not in options:
        st.session_state[KEY_SPLIT] = "test" if "test" in options else options[0]
    return st.radio("Split", options, key=KEY_SPLIT, horizontal=True, format_func=SPLIT_LABELS.get)


def positive_class(classes: list) -> str:
    """The class of the operating point: the user's choice, else melanoma, else the first class."""
    chosen = st.session_state.get(KEY_POSITIVE)
    if chosen in classes:
        return chosen
    return "mel" if "mel" in classes else classes[0]


def threshold() -> float:
    """The operating threshold chosen on the operating-point tab (0.5 until moved)."""
    return float(st.session_state.get(KEY_THRESHOLD, 0.5))


def fmt_ci(value: float, low: float, high: float) -> str:
    """``0.812 [0.781, 0.842]``; intervals left out when not computed."""
    if np.isnan(value):
        return "n/a"
    if np.isnan(low) or np.isnan(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def split_caption(source: Source, n: int) -> str:
    """The split and size every number on the page refers to."""
    return f"**{source.label}** · n = {n:,} images"


def figure_download(fig, name: str, key: str) -> None:
    """Buttons that download a figure as self-contained HTML, and as PNG when kaleido is installed.

    Files are built only when clicked. PNG export needs the optional ``kaleido``
    package and a Chrome or Chromium on the machine.
    """
    left, right = st.columns(2)
    left.download_button(
        "Download figure (HTML)", data=lambda: fig.to_html(include_plotlyjs=True, full_html=True),
        file_name=f"{name}.html", mime="text/html", key=key, on_click="ignore",
    )
    if png_export_available():
        right.download_button(
            "Download figure (PNG)", data=lambda: fig.to_image(format="png", scale=2),
            file_name=f"{name}.png", mime="image/png", key=f"{key}_png", on_click="ignore",
        )


def png_export_available() -> bool:
    """True when plotly can write PNG through the optional kaleido package."""
    return importlib.util.find_spec("kaleido") is not None


def metric_columns(codes) -> dict:
    """``column_config`` naming a table's metric columns in plain words, the code name in each column's help."""
    return {code: st.column_config.Column(metric_name(code), help=metric_help(code)) for code in codes}


def fmt(value: float) -> str:
    """A metric to three decimals, or n/a."""
    return "n/a" if np.isnan(value) else f"{value:.3f}"

