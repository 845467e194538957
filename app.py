"""Home page of the HAM10000 Lesion Lab (pages/ directory convention of Streamlit)."""

import streamlit as st

from ui.frame import PROJECT_NAME, dataset_status, installed_pages, page_setup
from ui.text import NOT_A_DEVICE
from ui.home import shipped_model_summary

page_setup(PROJECT_NAME)
st.title(PROJECT_NAME)
st.write(
    "Explore, train, evaluate and explain classifiers of dermatoscopic images on HAM10000: "
    "10,015 images of 7,470 pigmented skin lesions in seven diagnostic classes."
)
summary = shipped_model_summary()
if summary:
    st.markdown(summary)
for script, label, icon, text in installed_pages()[1:]:
    st.page_link(script, label=label, icon=icon)
    st.caption(text)
st.info(dataset_status())
st.caption(NOT_A_DEVICE)
