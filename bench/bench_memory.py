"""Peak memory of a real server (``python -m ui.serve``) under the hostile uploads, several sessions at once.

Each session (its own browser context in headless Chromium) opens Predict and
uploads, one after the other:

1. a 6,300 × 6,300 PNG of zeros (about 100 KB): refused from its header by the
   interactive pixel limit;
2. a 4,800 × 4,800 PNG (23 megapixels, under the limit): decoded, reduced to
   display size, predicted and explained with Grad-CAM;
3. in Batch, a zip of 20 members of 60 MB of zeros each (about 1.2 MB):
   classified, every member named as unreadable.

The server's resident memory is sampled every 50 ms and its kernel-kept peak
(``VmHWM``) read at the end; ``[… MB]`` after each step is the RSS when that
session saw its outcome. Target: peak < 1.5 GB with 3 sessions at once.

    .venv/bin/python bench/bench_memory.py [--sessions 3] [--project DIR]

``--project`` runs the same replay against another checkout (e.g. the code
before the change) for a side-by-side figure; its own ``.venv`` is not needed,
this interpreter runs the server.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))

from live_server import free_port, server_command, stop, wait_healthy  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
STEP_TIMEOUT_MS = 600_000


def hostile_files(folder: Path) -> dict:
    """Write the three hostile uploads; returns ``{kind: path}``."""
    files = {"bomb_png": folder / "bomb_6300.png", "big_png": folder / "big_4800.png", "zip": folder / "zeros20.zip"}
    Image.new("RGB", (6300, 6300)).save(files["bomb_png"], optimize=True)
    gradient = np.linspace(0, 255, 4800, dtype=np.uint8)
    big = np.stack([np.tile(gradient, (4800, 1)), np.tile(gradient[:, None], (1, 4800)),
                    np.full((4800, 4800), 90, np.uint8)], axis=2)
    Image.fromarray(big).save(files["big_png"], compress_level=1)
    with zipfile.ZipFile(files["zip"], "w", compression=zipfile.ZIP_DEFLATED) as archive:
        zeros = bytes(60 * 1024 * 1024)
        for k in range(20):
            archive.writestr(f"zeros_{k:02d}.png", zeros)
    return files


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory field of ``/proc/<pid>/status`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """Samples a process's RSS until stopped; keeps the maximum."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


def start_server(project: Path, port: int, env: dict) -> subprocess.Popen:
    """The app's server as the README starts it (``python -m ui.serve``) in ``project``, once it is healthy."""
    proc = subprocess.Popen(server_command(port), cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port, proc, deadline_s=120)
    except (RuntimeError, TimeoutError):
        proc.kill()
        raise
    return proc


async def open_predict(page, port: int) -> None:
    """Open Predict and wait until its model is loaded."""
    await page.goto(f"http://127.0.0.1:{port}/Predict", wait_until="domcontentloaded")
    await page.get_by_text("Dermatoscopic image").first.wait_for(timeout=STEP_TIMEOUT_MS)


async def upload(page, label: str, path: Path) -> None:
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text=label)
    await uploader.locator('input[type="file"]').set_input_files(str(path))


async def session(page, port: int, files: dict, log: list, rss) -> None:
    """One visitor's hostile uploads, each waited for until the page shows its outcome."""
    await upload(page, "Dermatoscopic image", files["bomb_png"])
    await page.get_by_text(re.compile("too large|not an image|Refused")).first.wait_for(timeout=STEP_TIMEOUT_MS)
    log.append("6300 px PNG: " + (await page.locator('[data-testid="stAlert"]').filter(
        has_text=re.compile("too large|Refused")).first.inner_text()).splitlines()[0][:120] + f" [{rss():.0f} MB]")
    await upload(page, "Dermatoscopic image", files["big_png"])
    outcome = re.compile(r"Download the left picture \(PNG\)|does not look like a dermatoscopic image")
    await page.get_by_text(outcome).first.wait_for(timeout=STEP_TIMEOUT_MS)
    gated = await page.get_by_text("does not look like a dermatoscopic image").count() > 0
    if gated:  # the synthetic image fails the OOD gate: ask for the verdict so the maps are computed too
        await page.get_by_text("Show the prediction anyway").first.click()
    await page.get_by_text("Download the left picture (PNG)").first.wait_for(timeout=STEP_TIMEOUT_MS)
    log.append(f"4800 px PNG: predicted and explained{' (after the OOD gate)' if gated else ''} [{rss():.0f} MB]")
    await page.get_by_role("tab", name="Batch").click()
    await upload(page, "Images or zip files", files["zip"])
    await page.get_by_role("button", name=re.compile("Classify")).click()
    await page.get_by_text("No readable image among the uploaded files").first.wait_for(timeout=STEP_TIMEOUT_MS)
    log.append(f"zip: {await page.get_by_text('Skipped').count()} members named as skipped [{rss():.0f} MB]")


async def replay(port: int, files: dict, sessions: int, on_baseline, rss) -> list:
    """Open Predict in every session, take the baseline, then run all sessions' uploads at once."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = [await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
                 for _ in range(sessions)]
        for page in pages:
            page.set_default_timeout(STEP_TIMEOUT_MS)  # 2 shared cores: a rerun can take a while
        for page in pages:
            await open_predict(page, port)
        on_baseline()
        logs = [[] for _ in pages]
        await asyncio.gather(*(session(page, port, files, log, rss) for page, log in zip(pages, logs)))
        exceptions = sum([await page.locator('[data-testid="stException"]').count() for page in pages])
        await browser.close()
    return logs, exceptions


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=3, help="browser sessions uploading at once")
    parser.add_argument("--project", type=Path, default=PROJECT, help="checkout whose app.py is served")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        files = hostile_files(Path(tmp))
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in files.values())
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(args.project), "HAM_RUNS_DIR": str(Path(tmp) / "runs"),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        server = start_server(args.project, port, env)
        sampler = Sampler(server.pid)
        sampler.start()
        baseline = {}
        try:
            logs, exceptions = asyncio.run(replay(port, files, args.sessions, lambda: baseline.update(rss=rss_mb(server.pid)),
                                      lambda: rss_mb(server.pid)))
            peak_sampled, peak_kernel = sampler.stop(), rss_mb(server.pid, "VmHWM")
        finally:
            stop(server)
    print(f"project: {args.project}\nuploads: {sizes}\nsessions at once: {args.sessions}")
    for k, log in enumerate(logs):
        print(f"  session {k + 1}: " + "; ".join(log))
    print(f"exception boxes on the pages: {exceptions}")
    print(f"server RSS with Predict open in every session (model loaded): {baseline['rss']:.0f} MB")
    print(f"server peak RSS (VmHWM): {peak_kernel:.0f} MB  (sampled every 50 ms: {peak_sampled:.0f} MB)")
    print(f"added by the hostile uploads: {peak_kernel - baseline['rss']:.0f} MB; target peak < 1500 MB: "
          f"{'met' if peak_kernel < 1500 else 'missed'}")


if __name__ == "__main__":
    main()
