"""Widgets, charts and the gallery of the Explore page.

Session state (declared here, nowhere else): the filter widgets' keys
(``explore_*``) and the gallery page ``explore_page``. Each of them is bound to
the URL's query parameter of the same name, and the image whose lesion is open
lives in the URL as ``image``: Back, reload and a pasted link give the same view.
"""

import io
import logging
import math

import pandas as pd
from plotly.colors import qualitative
import streamlit as st
from PIL import Image

from core.dataset import download, explore
from core.dataset.data import DatasetError
from core.contracts.predictions import csv_text
from core.contracts.labels import CLASS_NAMES, CLASSES, DX_TYPES
from core.contracts.paths import dataset_dir, read_only
from core.dataset.uploads import redact_paths
from ui.loaders import dataset_table
from ui.text import folder_named
from ui.text import plain

KEY_CLASSES = "explore_classes"
KEY_SEXES = "explore_sexes"
KEY_AGES = "explore_ages"
KEY_MISSING_AGE = "explore_missing_age"
KEY_SITES = "explore_sites"
KEY_DX_TYPES = "explore_dx_types"
KEY_NORMALIZE = "explore_normalize"
KEY_SEARCH = "explore_search"
KEY_PAGE = "explore_page"
URL_IMAGE = "image"
BOUND = "query-params"
PER_PAGE = 12
COLUMNS = 4
CLASS_COLORS = dict(zip(CLASSES, qualitative.Safe))
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
        search = st.text_input("Search an image or lesion id", key=KEY_SEARCH, bind=BOUND,
                               placeholder="ISIC_0024306 or HAM_0000118, or a part of one")
        classes = st.pills("Diagnosis", explore.class_order(frame), selection_mode="multi", key=KEY_CLASSES,
                           format_func=str.upper, help="None selected = all classes", bind=BOUND)
        sexes = st.pills("Sex", _options(frame, "sex"), selection_mode="multi", key=KEY_SEXES, bind=BOUND)
        ages = st.slider("Age", *AGE_LIMITS, value=AGE_LIMITS, step=5, key=KEY_AGES, bind=BOUND)
        missing_age = st.checkbox("Include images without an age", value=True, key=KEY_MISSING_AGE, bind=BOUND)
        sites = st.multiselect("Body site", _options(frame, "localization"), key=KEY_SITES,
                               placeholder="All sites", bind=BOUND)
        dx_types = st.pills("Diagnosis confirmed by", _options(frame, "dx_type"), selection_mode="multi",
                            key=KEY_DX_TYPES, format_func=lambda t: DX_TYPES.get(t, t), bind=BOUND)
        normalize = st.toggle("Cross-tables as share of class", key=KEY_NORMALIZE, bind=BOUND)
        st.caption("The address bar keeps these filters: bookmark or share it.")
    age_range = None if tuple(ages) == AGE_LIMITS else tuple(ages)
    filters = explore.Filters(tuple(classes), tuple(sexes), age_range, missing_age, tuple(sites), tuple(dx_types),
                              search)
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
        left.dataframe(overview["images_per_lesion"].to_frame(), width="stretch")
        middle.dataframe(missing, width="stretch")
        confirm = overview["dx_types"].rename(index=lambda t: DX_TYPES.get(t, t))
        right.dataframe(confirm, width="stretch")


# The charts are plain plotly specs (dicts): plotly express builds and validates a figure object per call,
# which cost about 300 ms of every filter change for these four charts; a spec costs about 1 ms.


def _cells(table: pd.DataFrame) -> list:
    """A table's values for a plotly spec: nested lists, missing values as null (an empty cell)."""
    return [[None if pd.isna(v) else v for v in row] for row in table.to_numpy().tolist()]


def class_figure(classes: pd.DataFrame) -> dict:
    """Bar chart of images per class, lesions and share on hover."""
    dx = list(classes.index)
    names = [CLASS_NAMES.get(c, c) for c in dx]
    return {
        "data": [{
            "type": "bar", "x": dx, "y": classes["images"].tolist(), "text": classes["images"].tolist(),
            "marker": {"color": [CLASS_COLORS.get(c) for c in dx]},
            "customdata": list(zip(names, classes["lesions"].tolist(), classes["share"].tolist())),
            "hovertemplate": "<b>%{x}</b> · %{customdata[0]}<br>images: %{y:,}<br>lesions: %{customdata[1]:,}"
                             "<br>share: %{customdata[2]:.1%}<extra></extra>",
        }],
        "layout": {"title": {"text": "Images per class"}, "height": 360, "showlegend": False,
                   "xaxis": {"type": "category"}, "yaxis": {"title": {"text": "images"}}},
    }


def age_figure(boxes: pd.DataFrame) -> dict:
    """Box plot of age by class, drawn from precomputed quartiles and fences (``core.dataset.explore.age_boxes``)."""
    traces = [{"type": "box", "x": [dx], "name": dx, "marker": {"color": CLASS_COLORS.get(dx)},
               **{k: [row[k]] for k in ("q1", "median", "q3", "lowerfence", "upperfence")},
               "hovertemplate": f"{dx}: n = {int(row['n']):,} with an age<extra></extra>"}
              for dx, row in boxes.iterrows()]
    return {"data": traces, "layout": {"title": {"text": "Age by class"}, "height": 360, "showlegend": False,
                                       "yaxis": {"title": {"text": "age"}}}}


def heatmap_figure(table: pd.DataFrame, title: str, normalize: bool) -> dict:
    """Heatmap of a value × class cross-table, counts or shares written in the cells.

    A class the filters removed has no share: its cells stay empty instead of reading 0 %.
    """
    text = table.map(lambda v: "" if pd.isna(v) else (f"{v:.0%}" if normalize else f"{v:d}"))
    return {
        "data": [{
            "type": "heatmap", "z": _cells(table), "x": [str(c) for c in table.columns],
            "y": [str(v) for v in table.index], "text": text.to_numpy().tolist(), "texttemplate": "%{text}",
            "colorscale": "Blues", "showscale": False, "hoverongaps": False, "xgap": 1, "ygap": 1,
            "hovertemplate": "%{y} · %{x}: %{text}<extra></extra>",
        }],
        "layout": {"title": {"text": title}, "height": 150 + 28 * max(2, len(table)),
                   "margin": {"t": 80, "b": 10, "l": 10, "r": 10},
                   "xaxis": {"side": "top", "type": "category"},
                   "yaxis": {"autorange": "reversed", "type": "category"}},
    }


def dx_type_figure(table: pd.DataFrame, normalize: bool) -> dict:
    """Stacked bars: how each class's diagnoses were confirmed."""
    value = "share" if normalize else "images"
    number = "%{y:.0%}" if normalize else "%{y:,}"
    names = [DX_TYPES.get(kind, kind) for kind in table.index]
    traces = [{"type": "bar", "name": name, "x": [str(c) for c in table.columns], "y": cells,
               "hovertemplate": f"%{{x}} · {name}: {number}<extra></extra>"}
              for name, cells in zip(names, _cells(table))]
    return {"data": traces,
            "layout": {"title": {"text": "Diagnosis confirmed by"}, "height": 360, "barmode": "stack",
                       "legend": {"traceorder": "normal"},
                       "xaxis": {"type": "category"}, "yaxis": {"title": {"text": value}}}}


def charts_section(aggregates: dict, normalize: bool) -> None:
    """Every chart of the page, for the filtered rows."""
    left, right = st.columns(2)
    left.plotly_chart(class_figure(aggregates["classes"]), width="stretch")
    right.plotly_chart(age_figure(aggregates["ages"]), width="stretch")
    left, right = st.columns(2)
    left.plotly_chart(heatmap_figure(aggregates["sex"], "Sex by class", normalize), width="stretch")
    left.plotly_chart(dx_type_figure(aggregates["dx_type"], normalize), width="stretch")
    right.plotly_chart(heatmap_figure(aggregates["site"], "Body site by class", normalize), width="stretch")


@st.cache_data(max_entries=256, show_spinner=False)
def _thumbnail(path: str, mask_path: str, width: int) -> bytes:
    """The image shrunk to ``width`` with the lesion outline drawn, as JPEG bytes (cached per file).

    Encoded once here, so a filter change re-sends cached bytes instead of
    encoding twelve PNGs. An unreadable mask gives the plain image, an unreadable
    image a grey tile; both are logged on the server, neither stops the gallery.
    """
    try:
        image = explore.outlined_image(path, mask_path, max_width=width)
    except (OSError, ValueError, SyntaxError) as err:
        log.warning("gallery: image %s unreadable: %s", path, err)
        image = Image.new("RGB", (width, width * 3 // 4), (200, 200, 200))
    if "mask_error" in image.info:
        log.warning("gallery: %s", image.info["mask_error"])
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _caption(row) -> str:
    age = "age ?" if pd.isna(row.age) else f"{row.age:.0f} y"
    return f"{row.image_id} · {row.dx.upper()} · {age} · {row.sex} · {row.localization}"


def _open_image(image_id: str) -> None:
    # One parameter, one browser-history entry: Back closes the dialog.
    st.query_params[URL_IMAGE] = image_id


def _close_image() -> None:
    st.query_params.pop(URL_IMAGE, None)


def gallery(selected: pd.DataFrame, lesion_sizes: pd.Series, outline: bool) -> None:
    """Paged grid of the filtered images; a button per image opens its lesion.

    Images are shown by image id: the metadata's own order groups the classes,
    which would fill the first pages with one class.
    """
    selected = selected.sort_values("image_id")
    pages = max(1, math.ceil(len(selected) / PER_PAGE))
    if st.session_state.get(KEY_PAGE, 1) > pages:
        st.session_state[KEY_PAGE] = 1  # the filters shrank the selection
    picker, note, download = st.columns([1, 2, 1], vertical_alignment="bottom")
    page = picker.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=KEY_PAGE, bind=BOUND)
    rows = selected.iloc[(page - 1) * PER_PAGE : page * PER_PAGE]
    shown = f"Images {(page - 1) * PER_PAGE + 1:,}–{(page - 1) * PER_PAGE + len(rows):,} of {len(selected):,}."
    note.caption(shown + (" Outline: the lesion's segmentation mask." if outline else ""))
    download.download_button(f"Download {len(selected):,} rows (CSV)", lambda: table_csv(selected), mime="text/csv",
                             file_name="ham10000_filtered.csv", on_click="ignore", width="stretch")
    columns = st.columns(COLUMNS)
    for k, row in enumerate(rows.itertuples(index=False)):
        with columns[k % COLUMNS]:
            st.image(_thumbnail(row.path, row.mask_path if outline else "", 400), caption=_caption(row),
                     width="stretch")
            n = int(lesion_sizes.get(row.lesion_id, 1))
            st.button(f"Lesion {row.lesion_id} ({n} image{'s' * (n > 1)})", key=f"lesion_{row.image_id}",
                      on_click=_open_image, args=(row.image_id,), width="stretch")


def table_csv(selected: pd.DataFrame) -> bytes:
    """The filtered rows as the metadata CSV (the publisher's columns, no local paths)."""
    columns = [c for c in ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization") if c in selected]
    return csv_text(selected[columns]).encode("utf-8")


def lesion_view(frame: pd.DataFrame, outline: bool) -> None:
    """The lesion of the image named in the URL, in a dialog over the page (nothing when none is named)."""
    image_id = st.query_params.get(URL_IMAGE, "")
    if not image_id:
        return
    match = frame.loc[frame["image_id"] == image_id, ["lesion_id", "dx"]]
    if match.empty:
        shown = plain(image_id, max_chars=60)  # from the address bar: anyone can write a link
        st.dialog(f"Image {shown}", on_dismiss=_close_image)(st.warning)(f"No image {shown} in the dataset.")
        return
    lesion_id, dx = match.iloc[0]
    images = explore.lesion_images(frame, lesion_id)
    title = f"Lesion {lesion_id} · {CLASS_NAMES.get(dx, dx)}"
    st.dialog(title, width="large", on_dismiss=_close_image)(_lesion_body)(images, image_id, outline)


def _lesion_body(images: pd.DataFrame, first: str, outline: bool) -> None:
    images = images.assign(first=images["image_id"] != first).sort_values(["first", "image_id"])
    st.markdown(f"{len(images)} image(s) of the same lesion, **{first}** first.")
    columns = st.columns(3)  # a lone 200-px image is not blown up to the full dialog
    for k, row in enumerate(images.itertuples(index=False)):
        columns[k % len(columns)].image(_thumbnail(row.path, row.mask_path if outline else "", 600),
                                        caption=_caption(row), width="stretch")
    # A button in a dialog reruns only the dialog, which would draw it again: clear the address, then rerun the
    # whole page, which then opens no dialog.
    if st.button("Close", key="explore_close_lesion", icon=":material/close:"):
        _close_image()
        st.rerun()


def no_dataset_panel(problem: str | None = None) -> None:
    """What to do without a usable dataset: download it, or point HAM10000_DIR at one."""
    root = dataset_dir()
    where = folder_named(root, "HAM10000_DIR")
    if problem:
        st.error(f"The dataset in {where} cannot be used: {redact_paths(problem) if read_only() else problem}")
    else:
        st.warning(f"No HAM10000 dataset in {where}.")
    st.markdown(
        "Either **download** it from its publisher, Harvard Dataverse "
        "([doi:10.7910/DVN/DBW86T](https://doi.org/10.7910/DVN/DBW86T), about 3 GB, "
        "CC BY-NC 4.0: non-commercial use, cite Tschandl et al. 2018), or **point the app at a copy**: "
        "start it with `HAM10000_DIR=/path/to/ham10000 python -m ui.serve`. Both the publisher's layout "
        "(`HAM10000_images_part_1/`, `HAM10000_metadata`) and `images/` + `HAM10000_metadata.csv` work. "
        "From a terminal: `lesionlab data download --dest DIR`."
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


def usable_dataset() -> pd.DataFrame | None:
    """The dataset's table; None, after the panel saying what to do, when there is no usable one."""
    try:
        frame = dataset_table()
    except DatasetError as err:
        no_dataset_panel(str(err))
        return None
    if frame is None:
        no_dataset_panel()
    return frame


def filtered_sections(frame: pd.DataFrame) -> pd.DataFrame:
    """The filters (in the sidebar), then the overview and the charts of the rows they keep; returns those rows."""
    filters, normalize = filter_controls(frame)
    aggregates = explore.page_aggregates(frame, filters, normalize)
    overview_section(aggregates["overview"], total=len(frame))
    if not aggregates["frame"].empty:
        charts_section(aggregates, normalize)
    return aggregates["frame"]


def images_section(frame: pd.DataFrame, selected: pd.DataFrame) -> None:
    """The selected images: the outline switch, the lesion the address names (a dialog), the gallery."""
    st.subheader("Images")
    outline = st.toggle("Draw the lesion outline", value=True, disabled=not (selected["mask_path"] != "").any())
    lesion_view(frame, outline)
    gallery(selected, frame.groupby("lesion_id").size(), outline)
