"""Warm start: load TensorFlow and the shipped model in the background as soon as any page opens.

Importing TensorFlow takes seconds and loading the model a few more; an educator who
opens the app and then clicks Predict should not wait for either. The first page of
the first session starts one daemon thread (once per server process, through
``st.cache_resource``) that fills the Predict page's own caches: the predictor and the
Grad-CAM explainer of the default model. A page that needs them meanwhile waits on
the same cache entry instead of loading a second copy.
"""

import logging
import threading

import streamlit as st
from streamlit.runtime import Runtime

from core.modelio import is_model_dir
from core.paths import default_model_dir

log = logging.getLogger(__name__)


def warm_start() -> None:
    """Start loading the default model in the background (once per server; no-op in tests).

    Only a real server warms up: ``AppTest`` runs pages on a mock runtime, and a
    test of a page must not import TensorFlow behind its back.
    """
    if _real_server() and is_model_dir(default_model_dir()):
        _warm_thread()


def _real_server() -> bool:
    return Runtime.exists() and type(Runtime.instance()) is Runtime  # AppTest installs a MagicMock


@st.cache_resource(show_spinner=False)
def _warm_thread() -> threading.Thread:
    thread = threading.Thread(target=_load_default_model, name="warm-start", daemon=True)
    thread.start()
    return thread


def _load_default_model() -> None:
    try:
        from ui import predict  # imports TensorFlow: the slow part

        predict.load_explainer(default_model_dir())  # loads and warms the predictor on the way
    except Exception:  # noqa: BLE001  (the Predict page loads it again and shows the error)
        log.exception("warm start: the default model could not be loaded")
