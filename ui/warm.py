"""Warm start: load TensorFlow and the shipped models in the background before anyone needs them.

Importing TensorFlow takes seconds and loading the models a few more; an educator who
opens the app and then clicks Predict should not wait for either. One daemon thread
per server process (through ``st.cache_resource``) fills the Predict page's own caches
with everything its first prediction uses: the classifier (traced), the saliency
explainer with the two methods the page opens with, and the lesion segmenter. The
server's launcher (``python -m ui.serve``) fills them before the server listens
(:func:`warm_before_serving`), so no thread is needed; under a plain
``streamlit run app.py`` the first page of the first session starts the thread. A page
that needs one of the models meanwhile waits on the same cache entry instead of
loading a second copy.

Warm also means staying warm between script runs: see :func:`keep_kernels_between_runs`.
"""

import logging
import sys
import threading
import time

import streamlit as st
from streamlit.logger import get_logger
from streamlit.runtime import Runtime

from core.serving.modelio import is_model_dir
from core.contracts.paths import default_model_dir

log = get_logger(__name__)  # Streamlit's logger: its info lines reach the server log
THREAD_NAME = "warm-start"


def warm_start() -> None:
    """Start loading the default model in the background (once per server; no-op in tests and after a preload).

    Only a real server warms up: ``AppTest`` runs pages on a mock runtime, and a
    test of a page must not import TensorFlow behind its back.
    """
    if _real_server() and not _preloaded:
        warm_start_now()


def warm_before_serving() -> None:
    """Fill the warm-start caches in this thread, before the server exists (``python -m ui.serve`` calls it).

    Says so on the terminal first: the server's address appears only once this returns.
    A failure is logged and the server starts anyway; the Predict page then shows the error.
    """
    global _preloaded
    if not is_model_dir(default_model_dir()):
        return
    quiet_context_warnings()
    print("  Loading TensorFlow and the shipped models before serving (about 10 s)...", file=sys.stderr, flush=True)
    # On a thread of the warm start's name, so its outside-any-session warnings are filtered as the thread's are.
    thread = threading.Thread(target=_warm_logged, kwargs={"dataset": False}, name=THREAD_NAME)
    thread.start()
    thread.join()
    _preloaded = True


_preloaded = False  # True once warm_before_serving has run: no page needs to start the thread


def warm_start_now() -> None:
    """Start the warm-start thread unless it runs already (a page's first run under plain ``streamlit run``)."""
    if is_model_dir(default_model_dir()):
        _warm_thread()


def keep_kernels_between_runs() -> None:
    """Stop Streamlit from resetting Keras after every script run (idempotent; ``app.py`` calls it before every page).

    Streamlit ends each run with its ``_clean_problem_modules``, which calls
    ``keras.backend.clear_session()``: a full garbage collection (~0.3 s with TensorFlow
    loaded) and TensorFlow's kernel cache emptied, so every traced model call of the next
    run rebuilt its kernels (~0.3 s each on two cores). That reset is for scripts that
    build models in their body; this app builds them once, in cached resources. The
    replacement keeps Streamlit's other clean-up (closing matplotlib figures). The
    garbage collection Streamlit runs after each script is off in ``.streamlit/config.toml``
    (``runner.postScriptGC``) for the same reason.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if getattr(script_runner, "_clean_problem_modules", None) is not _clean_problem_modules:
        script_runner._clean_problem_modules = _clean_problem_modules
    _page_runs.add(threading.get_ident())  # app.py calls this before the page: a page run has started


def _clean_problem_modules() -> None:
    _page_runs.discard(threading.get_ident())  # Streamlit calls this at the end of every run, on its thread
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close("all")


# Script threads running a page right now. The warm start imports TensorFlow only while none runs: that
# import holds the interpreter for seconds, and a visitor's first page (a cold deep link to /Predict)
# would otherwise be drawn at half speed, waiting its turn.
_page_runs: set = set()
PAGES_FIRST_S = 10.0  # the longest the warm start waits for running pages before it goes on anyway


def _let_pages_run_first() -> None:
    deadline = time.monotonic() + PAGES_FIRST_S
    while _page_runs and time.monotonic() < deadline:
        time.sleep(0.05)  # polls a set for at most PAGES_FIRST_S; a page run lasts about a second


def _real_server() -> bool:
    return Runtime.exists() and type(Runtime.instance()) is Runtime  # AppTest installs a MagicMock


class _OutsideSessionsOnPurpose(logging.Filter):
    """Drops Streamlit's outside-a-session warnings for the warm-start thread only.

    The thread fills ``st.cache_resource`` entries outside any session, by design;
    without this filter every cached call it makes prints "missing ScriptRunContext"
    in the server's terminal, and before the server exists every ``st.cache_data``
    decorator of the modules it imports prints "No runtime found". Any other
    thread's warning still gets through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.threadName == THREAD_NAME and any(text in message for text in OUTSIDE_SESSIONS.values()))


OUTSIDE_SESSIONS = {  # Streamlit's logger name -> the warning it gives outside a session
    "streamlit.runtime.scriptrunner_utils.script_run_context": "missing ScriptRunContext",
    "streamlit.runtime.caching.cache_data_api": "No runtime found",
}


def quiet_context_warnings() -> None:
    """Install :class:`_OutsideSessionsOnPurpose` on the loggers of those warnings (idempotent)."""
    for name in OUTSIDE_SESSIONS:
        logger = get_logger(name)
        if not any(isinstance(f, _OutsideSessionsOnPurpose) for f in logger.filters):
            logger.addFilter(_OutsideSessionsOnPurpose())


@st.cache_resource(show_spinner=False)
def _warm_thread() -> threading.Thread:
    quiet_context_warnings()
    thread = threading.Thread(target=_warm_logged, name=THREAD_NAME, daemon=True)
    thread.start()
    return thread


def _warm_logged(dataset: bool = True) -> None:
    started = time.monotonic()
    try:
        warm_caches(default_model_dir(), dataset=dataset)
    except Exception:  # noqa: BLE001  (the Predict page loads it again and shows the error)
        log.exception("warm start: the default model could not be loaded")
    else:
        log.info("warm start: models ready after %.1f s", time.monotonic() - started)


def warm_caches(model_dir, *, dataset: bool = True) -> None:
    """Load and trace everything the Predict page's first prediction of ``model_dir`` uses.

    ``dataset=False`` leaves out the dataset's table (0.1 s): it is an ``st.cache_data``
    entry, and before the server exists that cache is a throwaway one.
    """
    started = time.monotonic()
    from ui import loaders, predict, saliency_view, segment_view  # noqa: F401  (pandas, plotly: what the pages import)

    if dataset:
        _warm_dataset_table()  # what Predict's first run reads besides the model
    _let_pages_run_first()
    loaders.load_predictor(model_dir)  # imports TensorFlow: the slow part
    log.info("warm start: classifier ready after %.1f s", time.monotonic() - started)
    saliency_view.warm(model_dir, loaders.model_mtime(model_dir))
    if segment_view.segmenter_available():
        segment_view.load_segmenter()


def _warm_dataset_table() -> None:
    from core.dataset.data import DatasetError
    from ui.loaders import dataset_table

    try:
        dataset_table()
    except DatasetError:
        pass  # the pages say what is wrong with the folder
