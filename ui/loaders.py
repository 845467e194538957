"""Cached loaders the pages share: the dataset's table and the model of a folder, each loaded once per server.

Below the pages and the warm start (which fills these caches before the first
visitor): it imports no other ``ui`` module but :mod:`ui.guard` and :mod:`ui.text`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from core.contracts.paths import dataset_dir
from core.dataset.layout import find_metadata
from core.serving.modelio import METADATA_FILE, MODEL_FILE, ModelFolderError, read_metadata
from core.serving.predict import Predictor
from ui.guard import public

if TYPE_CHECKING:
    import pandas as pd


def dataset_table() -> pd.DataFrame | None:
    """The image table of the dataset folder, cached; None when there is no dataset.

    The cache key is the folder and the metadata file's modification time, so
    a replaced dataset is reloaded.

    Raises:
        core.dataset.data.DatasetError: the folder exists but cannot be used.
    """
    root = dataset_dir()
    metadata = find_metadata(root)
    if metadata is None:
        return None
    return _load_table(str(root.resolve()), metadata.stat().st_mtime_ns)


@st.cache_data(max_entries=2, show_spinner="Loading the dataset…")
def _load_table(root: str, metadata_mtime: int) -> pd.DataFrame:
    """``core.dataset.data.load_dataset`` behind the cache; ``metadata_mtime`` is only a key."""
    from core.dataset import data  # pandas: paid by the pages that show data, not by Home

    return data.load_dataset(Path(root))


def model_mtime(model_dir: Path) -> int:
    """Newest modification time (ns) of the model files: part of every cache key."""
    return max((Path(model_dir) / f).stat().st_mtime_ns for f in (MODEL_FILE, METADATA_FILE))


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(path: str, mtime: int) -> Predictor:
    """The model of a folder, warmed up; ``mtime`` is only a cache key."""
    predictor = Predictor(Path(path))
    predictor.warmup()
    return predictor


def load_predictor(model_dir: Path) -> Predictor:
    """The cached, warmed-up :class:`Predictor` of ``model_dir``; an unusable folder stops the page with a message."""
    try:
        return _predictor(str(Path(model_dir).resolve()), model_mtime(model_dir))
    except ModelFolderError as err:
        _unusable(err)


def check_model(model_dir: Path) -> None:
    """Stop the page with a message when the folder's metadata is unusable (reads JSON only, no TensorFlow)."""
    try:
        read_metadata(model_dir)
    except ModelFolderError as err:
        _unusable(err)


def _unusable(err: ModelFolderError):
    st.error(f"This model cannot be used: {public(err)}")
    st.stop()
