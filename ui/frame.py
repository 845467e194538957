"""The frame every page shares: the app's pages, page config, sidebar, the dataset's status line.

Kept small and free of TensorFlow and pandas, so the Home page renders fast (the
cached dataset table is :mod:`ui.loaders`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import streamlit as st

from core.contracts.paths import dataset_dir, read_only
from core.dataset.layout import find_metadata
from ui.text import NOT_A_DEVICE
from ui.warm import keep_kernels_between_runs, warm_start

_ROOT = Path(__file__).resolve().parent.parent
PROJECT_NAME = "HAM10000 Lesion Lab"
FAVICON = _ROOT / "ui" / "assets" / "favicon.png"


class PageEntry(NamedTuple):
    """One page of the app: ``app.py`` hands its fields to ``st.Page``."""

    script: str  # relative to app.py, named after its address (AppTest.switch_page finds a page by its file name)
    title: str  # the label of its links, in the sidebar and on Home
    icon: str  # a Material icon: drawn from Streamlit's own font, so it renders in every browser (emoji need a font)
    url_path: str  # its address (/explore); "" for Home, the default page, served at /
    purpose: str  # what it is for: the caption under its link on Home


# The app's pages in sidebar order.
PAGES = (
    PageEntry("app_pages/home.py", "Home", ":material/home:", "", "The project, the dataset's status, the way in."),
    PageEntry("app_pages/explore.py", "Explore", ":material/search:", "explore",
              "Class balance, patients, body sites and the images themselves, with linked filters and lesion "
              "outlines."),
    PageEntry("app_pages/train.py", "Train", ":material/model_training:", "train",
              "Launch a training run in the background and follow it live."),
    PageEntry("app_pages/evaluate.py", "Evaluate", ":material/analytics:", "evaluate",
              "Compare models on the held-out split: confusion matrix, per-class metrics, calibration."),
    PageEntry("app_pages/predict.py", "Predict", ":material/stethoscope:", "predict",
              "Classify an image, outline the lesion and see where the model looked (saliency maps)."),
)


def page_setup(title: str) -> None:
    """Configure the page (wide layout, the local favicon, the tab's title) and draw the shared sidebar frame.

    ``app.py`` calls it on every run, before the page the address names.

    Args:
        title: the page's title in :data:`PAGES`; the tab reads "<title> · HAM10000 Lesion Lab"
            (Home's reads the project's name).
    """
    tab_title = PROJECT_NAME if title == PAGES[0].title else f"{title} · {PROJECT_NAME}"
    # A Material icon as page_icon makes the browser fetch its SVG from fonts.gstatic.com: the favicon is a
    # local file, so no request leaves the app (private mode promises that).
    st.set_page_config(page_title=tab_title, page_icon=str(FAVICON), layout="wide")
    with st.sidebar:
        st.markdown(f"**{PROJECT_NAME}**")
        for entry in PAGES:
            page_link(entry)
        st.caption(dataset_status())
        st.caption(NOT_A_DEVICE)
    keep_kernels_between_runs()
    warm_start()


def icon_of(title: str) -> str:
    """The Material icon of a page title in :data:`PAGES`."""
    return next(entry.icon for entry in PAGES if entry.title == title)


def page_link(entry: PageEntry) -> None:
    """A link to one of :data:`PAGES`, with its icon (only inside the app, where ``st.navigation`` declared it)."""
    st.page_link(entry.script, label=entry.title, icon=entry.icon)


def dataset_status() -> str:
    """One line saying whether the dataset folder was found, and where (not where in a read-only public app)."""
    root = dataset_dir()
    found = find_metadata(root) is not None
    if read_only():
        return "Dataset: found" if found else "Dataset: not installed on this server"
    if not found:
        return f"Dataset: not found at `{root}` (set HAM10000_DIR)"
    return f"Dataset: found at `{root}`"
