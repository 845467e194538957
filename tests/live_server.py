"""A real server (``python -m ui.serve``, as the README starts it) and headless Chromium, for the browser tests
and bench/bench_browser.py."""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# For page.evaluate before an action: from then on window.__ran turns true once a script run starts, so a wait
# that requires it cannot end on the page as it was before the action.
WATCH_RUNS = """() => {
    clearInterval(window.__watch);
    window.__ran = false;
    const app = document.querySelector('[data-testid="stApp"]');
    window.__watch = setInterval(() => {
        if (app.getAttribute('data-test-script-state') === 'running') window.__ran = true;
    }, 2);
}"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, deadline_s: float = 180) -> None:
    """Return once the server answers its health check; raise if it dies or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling a server that is still starting; bounded by the deadline
    raise TimeoutError("streamlit did not become healthy")


def server_command(port: int) -> list:
    """The app's server as the README starts it (``python -m ui.serve``), headless on ``port``."""
    return [sys.executable, "-m", "ui.serve", "--server.headless", "true", "--server.port", str(port),
            "--browser.gatherUsageStats", "false"]


@contextlib.contextmanager
def streamlit_server(env: dict, attempts: int = 3):
    """A fresh server (``python -m ui.serve``) on a free port; yields its base URL and stops it afterwards.

    The port is free when chosen but another process may take it before the server binds it: a server
    that exits while starting is retried on a new port. Its log goes to a file, never to a pipe nobody
    reads (a full pipe would freeze the server), and a failure quotes the log's end.
    """
    with tempfile.TemporaryFile("w+") as log:
        for attempt in range(attempts):
            port = free_port()
            proc = subprocess.Popen(server_command(port), cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                wait_healthy(port, proc)
                break
            except (RuntimeError, TimeoutError) as err:
                stop(proc)  # a no-op for a server that exited
                if isinstance(err, TimeoutError) or attempt == attempts - 1:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start ({err}); its log ends with:\n{log.read()[-3000:]}") from None
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Stop a server: SIGTERM, then SIGKILL if it does not exit within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a server busy importing TensorFlow may not answer SIGTERM in time
        proc.kill()
        proc.wait(timeout=30)


def launch_chromium(playwright):
    """Headless Debian Chromium (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
