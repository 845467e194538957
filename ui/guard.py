"""A guard for page sections: an unexpected exception becomes a short message and a log entry.

``.streamlit/config.toml`` hides error details from visitors for anything that
escapes a page (``client.showErrorDetails = "none"``; Streamlit logs the
traceback on the server). Sections that handle user input are wrapped in
:func:`guarded` as well, so the rest of the page keeps working and the visitor
reads what failed, with a reference to find the traceback in the server log.
``st.stop()`` and ``st.rerun()`` pass through (they are not ``Exception``\\ s).
"""

import functools
import logging
import uuid

import streamlit as st

from core.uploads import redact_paths

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
