"""A real server (``python -m ui.serve``, as the README starts it) and headless Chromium, for the browser tests
and bench/bench_browser.py."""

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, deadline_s: float = 60) -> None:
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
            "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]


@contextlib.contextmanager
def streamlit_server(env: dict):
    """A fresh server (``python -m ui.serve``) on a free port; yields its base URL and stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen(server_command(port), cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a server busy importing TensorFlow may not answer SIGTERM in time
            proc.kill()
            proc.wait(timeout=30)


def launch_chromium(playwright):
    """Headless Debian Chromium (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
