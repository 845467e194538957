"""Home: what the project is, the shipped classifier in one line, the way in to every page, the dataset's status."""

import streamlit as st

from ui.frame import PAGES, PROJECT_NAME, dataset_status, page_link
from ui.home import shipped_model_summary
from ui.text import NOT_A_DEVICE

st.title(PROJECT_NAME)
st.write(
    "Explore, train, evaluate and explain classifiers of dermatoscopic images on HAM10000: "
    "10,015 images of 7,470 pigmented skin lesions in seven diagnostic classes."
)
summary = shipped_model_summary()
if summary:
    st.markdown(summary)
for entry in PAGES[1:]:
    page_link(entry)
    st.caption(entry.purpose)
st.info(dataset_status())
st.caption(NOT_A_DEVICE)
