"""``python -m ui.serve [streamlit options]``: the app's server, with its models loaded before the first page.

Streamlit runs a page's code only when a browser opens it, so under plain
``streamlit run app.py`` the warm start (:mod:`ui.warm`) begins with the first
visitor, who then waits for TensorFlow and the models. Here TensorFlow and the
shipped models are loaded before the server listens (about 10 s on two idle cores):
the server's first page is drawn with nothing competing for the interpreter, and the
first prediction finds the model traced. Loading them in a background thread while
the first pages were served made a cold link to /Predict wait its turn behind
TensorFlow's import (3.7 s instead of under 2 s, ``bench/bench_browser.py --cold-only``).
Every option is passed on to ``streamlit run``.

Memory that returns: every script run of every session is a new thread, and
glibc gives threads their own malloc arenas (up to eight per core); the buffers of
a prediction (decoded upload, model input, maps, PNGs) are freed into whichever
arena the run used and stay mapped there, so six sessions predicting for two
minutes left the server hundreds of MiB above its warm baseline after they had all
closed (``bench/bench_memory.py --load originals``). The launcher therefore caps
the arenas (``HAM_MALLOC_ARENAS``, default 2) before any thread starts, and a
daemon thread hands freed memory back to the kernel (``malloc_trim``) once the
resident size has grown (``HAM_TRIM_SECONDS`` between checks, default 5; 0 = off).
Both are glibc-only and skipped elsewhere.
"""

import ctypes
import ctypes.util
import os
import sys
import threading
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"
M_ARENA_MAX = -8  # glibc's mallopt parameter number
TRIM_GROWTH_BYTES = 16 * 2**20  # trim once the resident size, or the free heap, moved this much since the last check


def main(argv=None) -> None:
    from streamlit.web import cli

    _limit_arenas()
    _start_trimmer()
    from ui.warm import warm_before_serving

    warm_before_serving()
    cli.main(args=["run", str(APP), *(sys.argv[1:] if argv is None else argv)], prog_name="streamlit")


def _libc():
    """glibc, or None on another C library (macOS, musl): the memory settings are then skipped."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def _limit_arenas() -> None:
    """Cap glibc's malloc arenas (``HAM_MALLOC_ARENAS``, default 2); must run before other threads start."""
    libc, arenas = _libc(), int(os.environ.get("HAM_MALLOC_ARENAS", "2"))
    if libc is not None and arenas > 0:
        libc.mallopt(M_ARENA_MAX, arenas)


def resident_bytes() -> int:
    """This process's resident set size (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _start_trimmer() -> threading.Thread | None:
    """Start the daemon thread that returns freed heap memory to the kernel (see the module docstring)."""
    libc, every = _libc(), float(os.environ.get("HAM_TRIM_SECONDS", "5"))
    if libc is None or every <= 0:
        return None
    thread = threading.Thread(target=_trim_forever, args=(libc, every), name="malloc-trim", daemon=True)
    thread.start()
    return thread


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_state(libc) -> tuple:
    """(resident bytes, bytes free inside malloc's arenas): what a trim can give back grows with either."""
    free = 0
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.restype = _MallInfo2
        free = libc.mallinfo2().fordblks
    return resident_bytes(), free


def _trim_forever(libc, every: float) -> None:
    # ctypes releases the GIL during the call: sessions' Python code runs on while glibc walks its free lists.
    last = _heap_state(libc)  # as the last trim left it
    while not threading.Event().wait(every):
        now = _heap_state(libc)
        if now[0] > last[0] + TRIM_GROWTH_BYTES or abs(now[1] - last[1]) > TRIM_GROWTH_BYTES:
            libc.malloc_trim(0)
            last = _heap_state(libc)


if __name__ == "__main__":
    main()
