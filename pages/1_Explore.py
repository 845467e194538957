"""Explore: the dataset's classes, patients and images, filtered on the fly."""

import streamlit as st

from core.dataset import explore
from core.dataset.data import DatasetError
from ui import explore as view
from ui.frame import icon_of, page_setup
from ui.loaders import dataset_table

page_setup("Explore")
st.title(f"{icon_of('Explore')} Explore HAM10000")

try:
    frame = dataset_table()
except DatasetError as err:
    view.no_dataset_panel(str(err))
    st.stop()
if frame is None:
    view.no_dataset_panel()
    st.stop()

filters, normalize = view.filter_controls(frame)
aggregates = explore.page_aggregates(frame, filters, normalize)
selected = aggregates["frame"]
view.overview_section(aggregates["overview"], total=len(frame))
if selected.empty:
    st.info("No image matches these filters.")
    st.stop()
view.charts_section(aggregates, normalize)

st.subheader("Images")
outline = st.toggle("Draw the lesion outline", value=True, disabled=not (selected["mask_path"] != "").any())
view.lesion_view(frame, outline)
view.gallery(selected, frame.groupby("lesion_id").size(), outline)
