"""The frame every page shares: page config, sidebar, the dataset's status line.

Kept small and free of TensorFlow and pandas, so the Home page renders fast (the
cached dataset table is :mod:`ui.loaders`).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.contracts.paths import dataset_dir, read_only
from core.dataset.layout import find_metadata
from ui.text import NOT_A_DEVICE
from ui.warm import keep_kernels_between_runs, warm_start

_ROOT = Path(__file__).resolve().parent.parent
PROJECT_NAME = "HAM10000 Lesion Lab"
FAVICON = _ROOT / "ui" / "assets" / "favicon.png"
# The app's pages in sidebar order: (script, label, icon, what it is for). Streamlit's own
# navigation is hidden (.streamlit/config.toml) because it would name the Home page "app".
PAGES = (
    ("app.py", "Home", ":material/home:", "The project, the dataset's status, the way in."),
    ("pages/1_Explore.py", "Explore", ":material/search:",
     "Class balance, patients, body sites and the images themselves, with linked filters and lesion outlines."),
    ("pages/2_Train.py", "Train", ":material/model_training:",
     "Launch a training run in the background and follow it live."),
    ("pages/3_Evaluate.py", "Evaluate", ":material/analytics:",
     "Compare models on the held-out split: confusion matrix, per-class metrics, calibration."),
    ("pages/4_Predict.py", "Predict", ":material/stethoscope:",
     "Classify an image, outline the lesion and see where the model looked (saliency maps)."),
)


def page_setup(title: str) -> None:
    """Configure the page (wide layout, its icon from :data:`PAGES`) and draw the shared sidebar frame.

    Args:
        title: the page's label in :data:`PAGES` (or the project's name for Home);
            the tab reads "<title> · HAM10000 Lesion Lab".
    """
    tab_title = title if title == PROJECT_NAME else f"{title} · {PROJECT_NAME}"
    # A Material icon as page_icon makes the browser fetch its SVG from fonts.gstatic.com: the favicon is a
    # local file, so no request leaves the app (private mode promises that).
    st.set_page_config(page_title=tab_title, page_icon=str(FAVICON), layout="wide")
    with st.sidebar:
        st.markdown(f"**{PROJECT_NAME}**")
        navigation()
        st.caption(dataset_status())
        st.caption(NOT_A_DEVICE)
    keep_kernels_between_runs()
    warm_start()


def icon_of(title: str) -> str:
    """The Material icon of a page label in :data:`PAGES` (Home's for the project's name).

    Material icons are drawn from Streamlit's own font, so they render in every browser; emoji need a font.
    """
    label = "Home" if title == PROJECT_NAME else title
    return next(icon for _, name, icon, _ in PAGES if name == label)


def installed_pages() -> list:
    """The entries of :data:`PAGES` whose script exists (a trimmed install may lack some)."""
    return [page for page in PAGES if (_ROOT / page[0]).is_file()]


def navigation() -> None:
    """The page links: Home · Explore · Train · Evaluate · Predict.

    Drawn only inside the app: a page script run on its own (``AppTest`` of one page)
    has no other pages to link to.
    """
    ctx = get_script_run_ctx()
    if ctx is None or Path(ctx.main_script_path).resolve() != _ROOT / "app.py":
        return
    for script, label, icon, _ in installed_pages():
        st.page_link(script, label=label, icon=icon)


def dataset_status() -> str:
    """One line saying whether the dataset folder was found, and where (not where in a read-only public app)."""
    root = dataset_dir()
    found = find_metadata(root) is not None
    if read_only():
        return "Dataset: found" if found else "Dataset: not installed on this server"
    if not found:
        return f"Dataset: not found at `{root}` (set HAM10000_DIR)"
    return f"Dataset: found at `{root}`"


def run_page(script: str) -> None:
    """Run another page's script in place: the lower-case addresses (/explore) of the pages.

    Streamlit matches page addresses case-sensitively and names them after the files
    (``pages/1_Explore.py`` answers ``/Explore``). A tiny alias page per lower-case
    address runs the real script instead of redirecting, so Back never bounces.
    """
    runpy.run_path(str(_ROOT / script), run_name="__main__")
