"""Widgets, charts and the gallery of the Explore page.

Session state (declared here, nowhere else): the filter widgets' keys
(``explore_*``), the gallery page ``explore_page`` and the selected lesion
``explore_lesion``.
"""

import logging
import math

import pandas as pd
import plotly.express as px
import streamlit as st
from PIL import Image

from core import download, explore
from core.labels import CLASS_NAMES, CLASSES, DX_TYPES
from core.paths import dataset_dir, read_only

KEY_CLASSES = "explore_classes"
KEY_SEXES = "explore_sexes"
KEY_AGES = "explore_ages"
KEY_MISSING_AGE = "explore_missing_age"
KEY_SITES = "explore_sites"
KEY_DX_TYPES = "explore_dx_types"
KEY_NORMALIZE = "explore_normalize"
KEY_PAGE = "explore_page"
KEY_LESION = "explore_lesion"
PER_PAGE = 12
COLUMNS = 4
CLASS_COLORS = dict(zip(CLASSES, px.colors.qualitative.Safe))
AGE_LIMITS = (0, 90)
log = logging.getLogger(__name__)


def _options(frame: pd.DataFrame, column: str) -> list:
    """Values of a column by frequency, ``unknown`` last."""
    values = list(frame[column].value_counts().index)
    return [v for v in values if v != "unknown"] + [v for v in values if v == "unknown"]


def filter_controls(frame: pd.DataFrame) -> tuple[explore.Filters, bool]:
    """Draw the filters in the sidebar; return them and the "share of class" switch."""
    with st.sidebar:
        st.subheader("Filters")
        classes = st.pills("Diagnosis", explore.class_order(frame), selection_mode="multi", key=KEY_CLASSES,
                           format_func=str.upper, help="None selected = all classes")
        sexes = st.pills("Sex", _options(frame, "sex"), selection_mode="multi", key=KEY_SEXES)
        ages = st.slider("Age", *AGE_LIMITS, value=AGE_LIMITS, step=5, key=KEY_AGES)
        missing_age = st.checkbox("Include images without an age", value=True, key=KEY_MISSING_AGE)
        sites = st.multiselect("Body site", _options(frame, "localization"), key=KEY_SITES,
                               placeholder="All sites")
        dx_types = st.pills("Diagnosis confirmed by", _options(frame, "dx_type"), selection_mode="multi",
                            key=KEY_DX_TYPES, format_func=lambda t: DX_TYPES.get(t, t))
        normalize = st.toggle("Cross-tables as share of class", key=KEY_NORMALIZE)
    age_range = None if tuple(ages) == AGE_LIMITS else tuple(ages)
    filters = explore.Filters(tuple(classes), tuple(sexes), age_range, missing_age, tuple(sites), tuple(dx_types))
    return filters, normalize


def overview_section(overview: dict, total: int) -> None:
    """Headline metrics, then data-quality details in an expander."""
    missing = overview["missing"]
    cols = st.columns(5)
    cols[0].metric("Images", f"{overview['images']:,}", help=f"of {total:,} in the dataset")
    cols[1].metric("Lesions", f"{overview['lesions']:,}")
    per_lesion = overview["images"] / overview["lesions"] if overview["lesions"] else 0
    cols[2].metric("Images per lesion", f"{per_lesion:.2f}")
    cols[3].metric("Missing ages", f"{missing.loc['age', 'missing']:,}")
    unknown = int(missing.loc["sex", "unknown"] + missing.loc["localization", "unknown"])
    cols[4].metric("Unknown sex / site", f"{unknown:,}")
    with st.expander("Images per lesion, missing values, diagnosis confirmation"):
        left, middle, right = st.columns(3)
        counts = overview["images_per_lesion"].reset_index()
        fig = px.bar(counts, x="images", y="lesions", title="Lesions by number of images", height=260)
        left.plotly_chart(fig, width="stretch")
        middle.dataframe(missing, width="stretch")
        confirm = overview["dx_types"].rename(index=lambda t: DX_TYPES.get(t, t))
        right.dataframe(confirm, width="stretch")


def class_figure(classes: pd.DataFrame):
    """Bar chart of images per class, lesions and share on hover."""
    table = classes.reset_index()
    table["name"] = table["dx"].map(lambda c: CLASS_NAMES.get(c, c))
    fig = px.bar(table, x="dx", y="images", color="dx", color_discrete_map=CLASS_COLORS, text="images",
                 hover_data={"name": True, "lesions": True, "share": ":.1%", "dx": False},
                 title="Images per class", height=360)
    fig.update_layout(showlegend=False, xaxis_title=None)
    return fig


def age_figure(ages: pd.DataFrame, order: list):
    """Box plot of age by class."""
    fig = px.box(ages, x="dx", y="age", color="dx", color_discrete_map=CLASS_COLORS,
                 category_orders={"dx": order}, title="Age by class", height=360)
    fig.update_layout(showlegend=False, xaxis_title=None)
    return fig


def heatmap_figure(table: pd.DataFrame, title: str, normalize: bool):
    """Heatmap of a value × class cross-table, counts or shares written in the cells."""
    fig = px.imshow(table, text_auto=".0%" if normalize else "d", aspect="auto",
                    color_continuous_scale="Blues", title=title, height=150 + 28 * max(2, len(table)))
    fig.update_layout(coloraxis_showscale=False, xaxis_title=None, yaxis_title=None,
                      margin={"t": 80, "b": 10, "l": 10, "r": 10})
    fig.update_xaxes(side="top")
    return fig


def dx_type_figure(table: pd.DataFrame, normalize: bool):
    """Stacked bars: how each class's diagnoses were confirmed."""
    long = table.rename(index=lambda t: DX_TYPES.get(t, t)).T.reset_index().melt(
        id_vars="dx", var_name="confirmed by", value_name="share" if normalize else "images")
    fig = px.bar(long, x="dx", y=long.columns[-1], color="confirmed by", title="Diagnosis confirmed by",
                 height=360)
    fig.update_layout(xaxis_title=None, legend_title=None)
    return fig


def charts_section(aggregates: dict, normalize: bool) -> None:
    """Every chart of the page, for the filtered rows."""
    order = explore.class_order(aggregates["frame"])
    left, right = st.columns(2)
    left.plotly_chart(class_figure(aggregates["classes"]), width="stretch")
    right.plotly_chart(age_figure(aggregates["ages"], order), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(heatmap_figure(aggregates["sex"], "Sex by class", normalize), width="stretch")
    left.plotly_chart(dx_type_figure(aggregates["dx_type"], normalize), width="stretch")
    right.plotly_chart(heatmap_figure(aggregates["site"], "Body site by class", normalize), width="stretch")


@st.cache_data(max_entries=256, show_spinner=False)
def _thumbnail(path: str, mask_path: str, width: int):
    """The image shrunk to ``width`` with the lesion outline drawn (cached per file).

    An unreadable mask gives the plain image, an unreadable image a grey tile;
    both are logged on the server, neither stops the gallery.
    """
    try:
        image = explore.outlined_image(path, mask_path, max_width=width)
    except (OSError, ValueError, SyntaxError) as err:
        log.warning("gallery: image %s unreadable: %s", path, err)
        return Image.new("RGB", (width, width * 3 // 4), (200, 200, 200))
    if "mask_error" in image.info:
        log.warning("gallery: %s", image.info["mask_error"])
    return image


def _caption(row) -> str:
    age = "age ?" if pd.isna(row.age) else f"{row.age:.0f} y"
    return f"{row.image_id} · {row.dx.upper()} · {age} · {row.sex} · {row.localization}"


def _select_lesion(lesion_id: str) -> None:
    st.session_state[KEY_LESION] = lesion_id


def gallery(selected: pd.DataFrame, lesion_sizes: pd.Series, outline: bool) -> None:
    """Paged grid of the filtered images; a button per image opens its lesion.

    Images are shown by image id: the metadata's own order groups the classes,
    which would fill the first pages with one class.
    """
    selected = selected.sort_values("image_id")
    pages = max(1, math.ceil(len(selected) / PER_PAGE))
    if st.session_state.get(KEY_PAGE, 1) > pages:
        st.session_state[KEY_PAGE] = 1  # the filters shrank the selection
    picker, note = st.columns([1, 3], vertical_alignment="bottom")
    page = picker.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=KEY_PAGE)
    rows = selected.iloc[(page - 1) * PER_PAGE : page * PER_PAGE]
    shown = f"Images {(page - 1) * PER_PAGE + 1:,}–{(page - 1) * PER_PAGE + len(rows):,} of {len(selected):,}."
    note.caption(shown + (" Outline: the lesion's segmentation mask." if outline else ""))
    columns = st.columns(COLUMNS)
    for k, row in enumerate(rows.itertuples(index=False)):
        with columns[k % COLUMNS]:
            st.image(_thumbnail(row.path, row.mask_path if outline else "", 400), caption=_caption(row),
                     width="stretch")
            n = int(lesion_sizes.get(row.lesion_id, 1))
            st.button(f"Lesion {row.lesion_id} ({n} image{'s' * (n > 1)})", key=f"lesion_{row.image_id}",
                      on_click=_select_lesion, args=(row.lesion_id,), width="stretch")


def lesion_view(frame: pd.DataFrame, outline: bool) -> None:
    """All images of the selected lesion side by side (nothing when none is selected)."""
    lesion_id = st.session_state.get(KEY_LESION)
    if not lesion_id:
        return
    images = explore.lesion_images(frame, lesion_id)
    with st.container(border=True):
        head, close = st.columns([5, 1])
        head.markdown(f"**Lesion {lesion_id}**: {len(images)} image(s), "
                      f"{CLASS_NAMES.get(images['dx'].iloc[0], images['dx'].iloc[0]) if len(images) else '?'}")
        close.button("Close", key="explore_close_lesion", on_click=_select_lesion, args=("",))
        columns = st.columns(max(COLUMNS, len(images)))
        for column, row in zip(columns, images.itertuples(index=False)):
            column.image(_thumbnail(row.path, row.mask_path if outline else "", 400), caption=_caption(row),
                         width="stretch")


def no_dataset_panel(problem: str | None = None) -> None:
    """What to do without a usable dataset: download it, or point HAM10000_DIR at one."""
    root = dataset_dir()
    if problem:
        st.error(f"The dataset at `{root}` cannot be used: {problem}")
    else:
        st.warning(f"No HAM10000 dataset at `{root}`.")
    st.markdown(
        "Either **download** it from its publisher, Harvard Dataverse "
        "([doi:10.7910/DVN/DBW86T](https://doi.org/10.7910/DVN/DBW86T), about 3 GB, "
        "CC BY-NC 4.0: non-commercial use, cite Tschandl et al. 2018), or **point the app at a copy**: "
        "start it with `HAM10000_DIR=/path/to/ham10000 streamlit run app.py`. Both the publisher's layout "
        "(`HAM10000_images_part_1/`, `HAM10000_metadata`) and `images/` + `HAM10000_metadata.csv` work. "
        "From a terminal: `python -m core.data download --dest DIR`."
    )
    if read_only():
        st.caption("This is a read-only demo: the dataset cannot be downloaded from here.")
        return
    if st.button(f"Download HAM10000 into {root}", type="primary", disabled=problem is not None):
        _run_download(root)


def _run_download(root) -> None:
    bar = st.progress(0.0, text="Listing the dataset's files…")

    def report(done: int, total: int, name: str) -> None:
        share = min(1.0, done / total) if total else 0.0
        bar.progress(share, text=f"{name}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB")

    try:
        download.download_ham10000(dest=root, progress=report)
    except download.DownloadError as err:
        st.error(f"Download failed, nothing was kept: {err}")
        return
    st.success(f"HAM10000 is ready in {root}.")
    st.rerun()
