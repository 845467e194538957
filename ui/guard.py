"""A guard for page sections: an unexpected exception becomes a short message and a log entry.

``.streamlit/config.toml`` hides error details from visitors for anything that
escapes a page (``client.showErrorDetails = "none"``; Streamlit logs the
traceback on the server). Sections that handle user input are wrapped in
:func:`guarded` as well, so the rest of the page keeps working and the visitor
reads what failed, with a reference to find the traceback in the server log.
``st.stop()`` and ``st.rerun()`` pass through (they are not ``Exception``\\ s).
"""

import contextlib
import functools
import logging
import sys
import threading
import uuid

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.contracts import paths
from core.dataset.uploads import redact_paths

log = logging.getLogger("ham10000.pages")


def report(what: str, err: BaseException) -> str:
    """Log ``err`` with its traceback under a short reference; show a one-line message; return the reference."""
    reference = uuid.uuid4().hex[:8]
    log.error("%s failed [ref %s]", what, reference, exc_info=err)
    kind = type(err).__name__
    st.error(f"{what} failed unexpectedly ({kind}). The details are in the server log under reference "
             f"{reference}.")
    return reference


def guarded(what: str):
    """Decorator: run a page helper; an unexpected exception is reported by :func:`report`, the page goes on.

    Args:
        what: the section's name for the message, e.g. "Batch prediction".
    """
    def wrap(function):
        @functools.wraps(function)
        def run(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as err:  # noqa: BLE001  (the point of a guard)
                report(what, err)
                return None
        return run
    return wrap


def public(err: BaseException) -> str:
    """An expected error's message for the page: first line, server paths removed."""
    text = str(err).strip()
    return redact_paths(text.splitlines()[0] if text else type(err).__name__)


TRACEBACK_START = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def server_folders() -> dict:
    """The paths a visitor may know by a name, ``{path: label}``: the interpreter, the runs folder, the dataset,
    the project."""
    return {sys.executable: "python", paths.runs_dir(): "runs", paths.dataset_dir(): "HAM10000_DIR",
            paths.PROJECT_ROOT: "."}


def public_text(text: str) -> str:
    """Server text (a run's log or status) for a visitor: tracebacks cut to their last line, paths made relative.

    The full text stays where it was written (``train.log``, the server log).
    """
    return redact_paths("\n".join(_without_tracebacks(str(text).splitlines())), server_folders())


def public_config(value):
    """A run configuration (JSON values) with every path in it made relative (see :func:`public_text`)."""
    if isinstance(value, dict):
        return {key: public_config(item) for key, item in value.items()}
    if isinstance(value, list):
        return [public_config(item) for item in value]
    return redact_paths(value, server_folders()) if isinstance(value, str) else value


def _without_tracebacks(lines: list) -> list:
    """``lines`` with each traceback replaced by its last line (the exception), chained ones by the last one."""
    kept, inside = [], False
    for line in lines:
        if line.startswith(TRACEBACK_START):
            inside = True
        elif line.startswith(_CHAINED):
            while kept and not kept[-1].strip():
                kept.pop()
            if kept and kept[-1].startswith(OMITTED):
                kept.pop()  # the cause's line: a chain is shown by its final exception only
            inside = True
        elif inside and (line[:1].isspace() or not line.strip()):
            continue  # a frame, a source line, a caret line
        elif inside:
            kept.append(OMITTED + line)
            inside = False
        else:
            kept.append(line)
    return kept


OMITTED = "(traceback kept on the server) "


# Heavy jobs (predicting a folder, converting a model): one per session, HEAVY_JOBS_AT_ONCE on the whole
# server. A session runs one script at a time, but a reload opens a new session while the old one's job
# still runs to its next page update, so the server-wide count is what keeps reloads from piling jobs up.
HEAVY_JOBS_AT_ONCE = 2
_running: dict = {}  # session id -> what it runs
_running_lock = threading.Lock()


@contextlib.contextmanager
def heavy_job(what: str):
    """Context: yields True when this session may run ``what`` now; else shows why not and yields False."""
    ctx = get_script_run_ctx()
    session = ctx.session_id if ctx is not None else "no-session"
    with _running_lock:
        busy = _running.get(session)
        full = busy is None and len(_running) >= HEAVY_JOBS_AT_ONCE
        if busy is None and not full:
            _running[session] = what
    if busy is not None or full:
        st.warning(f"{what} did not start: " + (f"this session is still running {busy.lower()}; wait for it or "
                   "stop it first." if busy else "the server is busy with other heavy jobs; try again in a minute."))
        yield False
        return
    try:
        yield True
    finally:
        with _running_lock:
            _running.pop(session, None)
