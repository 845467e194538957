"""Train: launch a classifier or segmenter run in the background, follow it live, browse, compare and manage past runs."""

import streamlit as st

from core.contracts import paths

from core.training import runs
from ui import train as train_ui
from ui.frame import icon_of, page_setup
from ui.train_compare import compare_section

page_setup("Train")
st.title(f"{icon_of('Train')} Train a model")
st.caption("Training runs in a background process; this page only watches its run folder, "
           "so you can reload or close it at any time.")

active = runs.active_run()
if paths.read_only():
    st.info(train_ui.READ_ONLY_NOTE)
else:
    dataset_ready = train_ui.dataset_notice()
    if active:
        st.info(f"Run `{active['id']}` is active (queued or training). Only one run trains at a time.")
    with st.expander("New training run", expanded=active is None):
        train_ui.new_run_form(enabled=dataset_ready)

st.subheader("Runs")
infos = runs.list_runs()
if not infos:
    st.info("No runs yet. Launch one above; it will be listed here with its status and scores.")
    st.stop()
train_ui.history_view()
train_ui.run_view(train_ui.pick_run(infos))
compare_section(infos)
