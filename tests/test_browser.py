"""Every page in a real browser (headless Chromium), each opened by deep link on a fresh server."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

PAGES = [  # (url path, the page's own title)
    ("", "HAM10000 Lesion Lab"),
    ("Explore", "Explore HAM10000"),
    ("Train", "Train a classifier"),
    ("Evaluate", "Evaluate"),
    ("Predict", "Predict"),
]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (Debian package chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, deadline_s: float = 60) -> None:
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


@pytest.fixture
def server_env(tmp_path):
    from conftest import write_tiny_dataset

    data = os.environ.get("HAM10000_DIR")
    if not data or not Path(data, "HAM10000_metadata.csv").is_file():
        data = str(write_tiny_dataset(tmp_path / "ham10000"))
    return {**os.environ, "HAM10000_DIR": data, "HAM_RUNS_DIR": str(tmp_path / "runs"),
            "HAM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(PROJECT)}


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("path", "expected"), PAGES, ids=[p or "home" for p, _ in PAGES])
def test_deep_link_on_a_fresh_server_renders_the_page(path, expected, server_env, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_healthy(port, proc)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/{path}", wait_until="domcontentloaded")
            title = page.locator("h1").filter(has_text=expected)
            title.first.wait_for(timeout=120_000)
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
            assert page.get_by_text("Page not found").count() == 0
            page.screenshot(path=str(tmp_path / f"{path or 'home'}.png"), full_page=True)
            assert page.locator('[data-testid="stException"]').count() == 0
            nav = page.locator('[data-testid="stSidebarNav"]')
            assert nav.count() == 1 and "Evaluate" in nav.inner_text()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
