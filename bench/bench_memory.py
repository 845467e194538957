"""Memory of a real server (``python -m ui.serve``) under load: hostile uploads, or ordinary ones for minutes.

Two loads (``--load``):

``originals`` (issue 28): ``--sessions`` browser sessions (6 by default) upload the
600 x 450 originals one after the other for ``--seconds`` (120), each waiting for
its verdict and then for the full result (outline, measurements, both maps). It
prints the warm baseline (every session on Predict, the models loaded), the peak,
the RSS after every session has closed (once right after closing, and after
Streamlit's ``server.disconnectedSessionTTL`` when ``--after-ttl`` is given), a
second round's peak and after-close when ``--rounds 2``, the verdict and
full-result latencies (p50/p95) and the machine's load. Targets: peak < 1,200 MiB,
after close within 150 MiB of the warm baseline.

``hostile`` (the default of the earlier rounds):

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
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "tests"))

from live_server import WATCH_RUNS, free_port, server_command, stop, wait_healthy  # noqa: E402

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
    await page.goto(f"http://127.0.0.1:{port}/predict", wait_until="domcontentloaded")
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
    outcome = re.compile(r"Download the picture \(PNG\)|does not look like a dermatoscopic image")
    await page.get_by_text(outcome).first.wait_for(timeout=STEP_TIMEOUT_MS)
    gated = await page.get_by_text("does not look like a dermatoscopic image").count() > 0
    if gated:  # the synthetic image fails the OOD gate: ask for the verdict so the maps are computed too
        await page.get_by_text("Show the prediction anyway").first.click()
    await page.get_by_text("Download the picture (PNG)").first.wait_for(timeout=STEP_TIMEOUT_MS)
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


ORIGINALS = Path(os.environ.get("HAM10000_ORIGINALS", "/work/shared/data/ham10000_originals"))
VERDICT_OR_GATE = "() => /Malignant \\(mel \\+ bcc \\+ akiec\\)|does not look like/.test(document.body.innerText)"
# The script has run since the upload, is idle now, and nothing on the page is stale: the full result is drawn.
SETTLED = """() => window.__ran && !document.querySelector('[data-stale="true"]') &&
    document.querySelector('[data-testid="stApp"]').getAttribute('data-test-script-state') === 'notRunning'"""


async def predict_original(page, path: Path) -> tuple:
    """Upload one image on Predict; seconds to its verdict and to the full result (outline, maps)."""
    delete = page.locator('[data-testid="stFileUploaderDeleteBtn"] button')
    if await delete.count():  # clear the previous image, so its result cannot pass for the new one
        await delete.first.click()
        await page.wait_for_function("() => !/Malignant \\(mel/.test(document.body.innerText)")
    await page.evaluate(WATCH_RUNS)
    start = time.perf_counter()
    await page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(path))
    await page.wait_for_function(f"() => window.__ran && ({VERDICT_OR_GATE})()")
    verdict = time.perf_counter() - start
    await page.wait_for_function(SETTLED)
    return verdict, time.perf_counter() - start


async def visitor(page, images: list, offset: int, seconds: float, times: dict) -> None:
    """Upload the originals one after the other (starting at ``offset``) until ``seconds`` have passed."""
    deadline, k = time.monotonic() + seconds, offset
    while time.monotonic() < deadline:
        verdict, full = await predict_original(page, images[k % len(images)])
        times["verdict"].append(verdict)
        times["full"].append(full)
        k += 1


async def originals_round(browser, port: int, args, images: list, rss) -> dict:
    """One round: open Predict in every session, note the RSS, upload for ``args.seconds``, close every session."""
    contexts = [await browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(args.sessions)]
    pages = [await c.new_page() for c in contexts]
    for page in pages:
        page.set_default_timeout(STEP_TIMEOUT_MS)
        await open_predict(page, port)
    found = {"open": rss(), "verdict": [], "full": [], "load": [os.getloadavg()[0]]}
    await asyncio.gather(*(visitor(page, images, 7 * k, args.seconds, found) for k, page in enumerate(pages)))
    found["load"].append(os.getloadavg()[0])
    found["exceptions"] = sum([await p.locator('[data-testid="stException"]').count() for p in pages])
    for context in contexts:
        await context.close()
    await asyncio.sleep(args.settle)  # the server notices the closed sockets and ends the sessions' runs
    found["closed"] = rss()
    return found


def percentile(values: list, q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def originals_load(port: int, args, rss, sampler) -> tuple:
    """Every round of the ``originals`` load on one server; returns the warm baseline and each round's figures."""
    from playwright.async_api import async_playwright

    images = sorted(ORIGINALS.glob("*/*.jpg")) or sorted(ORIGINALS.glob("*.jpg"))
    if not images:
        raise SystemExit(f"no originals (*.jpg) under {ORIGINALS}: set HAM10000_ORIGINALS")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        warm = await browser.new_page()
        warm.set_default_timeout(STEP_TIMEOUT_MS)
        await open_predict(warm, port)
        await predict_original(warm, images[0])  # every model traced once: the warm server a visitor meets
        await warm.context.close()
        await asyncio.sleep(args.settle)
        baseline, rounds = rss(), []
        for _ in range(args.rounds):
            sampler.peak = 0.0
            found = await originals_round(browser, port, args, images, rss)
            found["peak"] = sampler.peak
            rounds.append(found)
        await browser.close()
    return baseline, rounds


def print_originals(args, baseline: float, rounds: list) -> None:
    print(f"project: {args.project}\nload: {args.sessions} sessions uploading 600x450 originals for "
          f"{args.seconds:.0f} s, {args.rounds} round(s) on one server")
    print(f"warm baseline (models loaded and traced, no session open): {baseline:.0f} MiB")
    for k, r in enumerate(rounds, start=1):
        print(f"round {k}: {len(r['verdict'])} uploads, exception boxes {r['exceptions']}, "
              f"machine load {r['load'][0]:.1f} -> {r['load'][1]:.1f} (1-min average)")
        print(f"  RSS with Predict open in every session {r['open']:.0f} MiB; peak {r['peak']:.0f} MiB "
              f"(target < 1200: {'met' if r['peak'] < 1200 else 'missed'}); after every session closed "
              f"({args.settle:.0f} s) {r['closed']:.0f} MiB, {r['closed'] - baseline:+.0f} MiB from the warm baseline "
              f"(target within 150: {'met' if r['closed'] - baseline <= 150 else 'missed'})")
        for name in ("verdict", "full"):
            print(f"  {name} latency: p50 {percentile(r[name], 50):.2f} s, p95 {percentile(r[name], 95):.2f} s "
                  f"(n = {len(r[name])})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load", choices=("hostile", "originals"), default="hostile", help="which load to run")
    parser.add_argument("--sessions", type=int, default=None, help="browser sessions at once (3 hostile, 6 originals)")
    parser.add_argument("--seconds", type=float, default=120, help="originals: seconds of uploads per round")
    parser.add_argument("--rounds", type=int, default=2, help="originals: rounds on the same server")
    parser.add_argument("--settle", type=float, default=15, help="originals: seconds between closing and measuring")
    parser.add_argument("--project", type=Path, default=PROJECT, help="checkout whose app.py is served")
    args = parser.parse_args(argv)
    args.sessions = args.sessions or (6 if args.load == "originals" else 3)
    if args.load == "originals":
        return run_originals(args)
    run_hostile(args)


def run_originals(args) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(args.project), "HAM_RUNS_DIR": str(Path(tmp) / "runs"),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        server = start_server(args.project, port, env)
        sampler = Sampler(server.pid)
        sampler.start()
        try:
            baseline, rounds = asyncio.run(originals_load(port, args, lambda: rss_mb(server.pid), sampler))
        finally:
            sampler.stop()
            stop(server)
    print_originals(args, baseline, rounds)


def run_hostile(args) -> None:
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
