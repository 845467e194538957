"""Train: launch a classifier or segmenter run in the background, follow it live, browse, compare and manage past runs."""

import streamlit as st

from ui import train as train_ui
from ui.frame import icon_of
from ui.train_compare import compare_section

st.title(f"{icon_of('Train')} Train a model")
st.caption("Training runs in a background process; this page only watches its run folder, "
           "so you can reload or close it at any time.")
train_ui.launch_section()

st.subheader("Runs")
infos = train_ui.past_runs()
if not infos:
    st.info("No runs yet. Launch one above; it will be listed here with its status and scores.")
    st.stop()
train_ui.history_view()
train_ui.run_view(train_ui.pick_run(infos))
compare_section(infos)
