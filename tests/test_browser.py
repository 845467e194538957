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


def _start_server(env: dict) -> tuple:
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
           "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_healthy(port, proc)
    return port, proc


@pytest.mark.timeout(600)
def test_a_photo_meets_the_gate_before_any_verdict(server_env, tmp_path):
    """Upload scikit-learn's flower photo: the page says it is not dermatoscopic and shows no verdict."""
    playwright = pytest.importorskip("playwright.sync_api")
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from tiny_models import save_ood_model_folder

    flower = tmp_path / "flower.jpg"
    Image.fromarray(load_sample_image("flower.jpg")).save(flower, quality=90)
    model = save_ood_model_folder(tmp_path / "model")
    port, proc = _start_server({**server_env, "HAM_DEFAULT_MODEL": str(model)})
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/Predict", wait_until="domcontentloaded", timeout=120_000)
            page.locator("h1").filter(has_text="Predict").first.wait_for(timeout=120_000)
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
            page.locator('input[type="file"]').first.set_input_files(str(flower), timeout=120_000)
            page.get_by_text("This does not look like a dermatoscopic image").first.wait_for(timeout=120_000)
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
            page.screenshot(path=str(tmp_path / "gate.png"), full_page=True)
            assert page.get_by_text("Show the prediction anyway").count() == 1
            assert page.get_by_text("Malignant (mel + bcc + akiec)").count() == 0
            assert page.get_by_text("Where did the model look?").count() == 0
            page.get_by_text("Show the prediction anyway").click()
            page.get_by_text("Malignant (mel + bcc + akiec)").first.wait_for(timeout=120_000)
            assert page.get_by_text("Shown on request").count() == 1
            assert page.locator('[data-testid="stException"]').count() == 0
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
