"""The frame every page shares (page config, sidebar) and the cached dataset table.

Kept small and free of TensorFlow, and pandas is only imported when a page
asks for the table, so the Home page renders fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from core.layout import find_metadata
from core.paths import dataset_dir

if TYPE_CHECKING:
    import pandas as pd

PROJECT_NAME = "HAM10000 Lesion Lab"
NOT_A_DEVICE = (
    "Research and teaching tool. **Not a medical device**: it does not diagnose, "
    "and its output must not guide any treatment."
)


def page_setup(title: str, icon: str) -> None:
    """Configure the page (wide layout) and draw the shared sidebar frame.

    Args:
        title: the page's name; the tab reads "<title> · HAM10000 Lesion Lab".
        icon: an emoji shown in the tab.
    """
    tab_title = title if title == PROJECT_NAME else f"{title} · {PROJECT_NAME}"
    st.set_page_config(page_title=tab_title, page_icon=icon, layout="wide")
    with st.sidebar:
        st.markdown(f"**{PROJECT_NAME}**")
        st.caption(dataset_status())
        st.caption(NOT_A_DEVICE)


def dataset_status() -> str:
    """One line saying whether the dataset folder was found, and where."""
    root = dataset_dir()
    if find_metadata(root) is None:
        return f"Dataset: not found at `{root}` (set HAM10000_DIR)"
    return f"Dataset: found at `{root}`"


def dataset_table() -> pd.DataFrame | None:
    """The image table of the dataset folder, cached; None when there is no dataset.

    The cache key is the folder and the metadata file's modification time, so
    a replaced dataset is reloaded.

    Raises:
        core.data.DatasetError: the folder exists but cannot be used.
    """
    root = dataset_dir()
    metadata = find_metadata(root)
    if metadata is None:
        return None
    return _load_table(str(root.resolve()), metadata.stat().st_mtime_ns)


@st.cache_data(max_entries=2, show_spinner="Loading the dataset…")
def _load_table(root: str, metadata_mtime: int) -> pd.DataFrame:
    """``core.data.load_dataset`` behind the cache; ``metadata_mtime`` is only a key."""
    from core import data  # pandas: paid by the pages that show data, not by Home

    return data.load_dataset(Path(root))
