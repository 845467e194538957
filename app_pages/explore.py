"""Explore: the dataset's classes, patients and images, filtered on the fly."""

import streamlit as st

from ui import explore as view
from ui.frame import icon_of

st.title(f"{icon_of('Explore')} Explore HAM10000")
frame = view.usable_dataset()
if frame is None:
    st.stop()
selected = view.filtered_sections(frame)
if selected.empty:
    st.info("No image matches these filters.")
    st.stop()
view.images_section(frame, selected)
