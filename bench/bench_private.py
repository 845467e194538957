"""Predict's private mode in headless Chromium: load time, time per image, and parity with the server.

Run from the project root (the test images need the dataset)::

    HAM10000_DIR=/path/to/ham10000 .venv/bin/python bench/bench_private.py [--n 100] [--seed 0]

A fresh server (``python -m ui.serve``) and Chromium (/usr/bin/chromium); private mode needs
ui/private_component/node_modules (``bash .ci/setup``) and models/default/export/model_private.tflite.

* **Open to first result**: from the click on "Private (on this device)" to the probabilities of an image
  picked as soon as the picker appears (cold: the browser's cache is empty; warm: a second tab of the same
  browser, which has the runtime and the model in its HTTP cache).
* **Model load**: LiteRT.js's WebAssembly fetched and compiled (runtime), the model file fetched and compiled
  (model), and run once on a blank frame (first_run). The server is fresh: its warm start (TensorFlow and the
  models, for the other mode) still competes for the cores while the cold figure is taken.
* **Per image**: from picking the file to the probabilities (decode, Pillow-exact resize, inference, gate),
  as the component measures it, for the shipped examples and a seeded sample of the model's test split.
* **Parity**: the browser's raw probabilities and gate score against the server's ``core.serving.predict.Predictor``
  on the same files (the server decodes and resizes with Pillow): top-1 agreement, largest differences,
  gate verdicts that differ.

Prints each figure with its n and the machine's load average: timings on a shared machine are noisy.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import live_server  # noqa: E402
from live_server import IDLE, launch_chromium, streamlit_server  # noqa: E402
from private_page import FRAME, PRIVATE_LABEL, classify  # noqa: E402


EXAMPLES = sorted((ROOT / "ui" / "assets" / "examples").glob("*.jpg"))
WAIT_MS = 300_000


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def test_images(n: int, seed: int) -> list:
    """A seeded sample of the default model's test split, as files of the dataset."""
    from core.dataset.data import load_dataset
    from core.contracts.paths import dataset_dir, default_model_dir

    split = pd.read_csv(default_model_dir() / "splits.csv")
    frame = load_dataset(dataset_dir()).set_index("image_id")
    ids = split.loc[split["split"] == "test", "image_id"]
    ids = ids[ids.isin(frame.index)].sample(n=n, random_state=seed).sort_values()
    return [Path(p) for p in frame.loc[ids, "path"]]


def open_to_first_result(page, base_url: str, first: Path) -> tuple:
    """Seconds from the click on the mode to the first probabilities; the component's frame."""
    page.goto(f"{base_url}/predict")
    page.wait_for_selector(IDLE)
    started = time.perf_counter()
    page.get_by_text(PRIVATE_LABEL, exact=True).click()
    frame = page.wait_for_selector(FRAME).content_frame()
    result = classify(frame, first)
    seconds = time.perf_counter() - started
    steps = json.loads(frame.get_attribute("body", "data-load-steps"))
    return seconds, frame, {k: v / 1000 for k, v in steps.items()}, result


def browser_results(base_url: str, files: list) -> dict:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        cold, frame, cold_load, _ = open_to_first_result(page, base_url, files[0])
        results = [classify(frame, path) for path in files]
        second = context.new_page()
        second.set_default_timeout(WAIT_MS)
        warm, _, warm_load, _ = open_to_first_result(second, base_url, files[0])
        browser.close()
    return {"cold": cold, "cold_load": cold_load, "warm": warm, "warm_load": warm_load, "results": results}


def server_results(files: list) -> tuple:
    from core.dataset.images import decode_upload
    from core.contracts.paths import default_model_dir
    from core.serving.predict import Predictor

    predictor = Predictor(default_model_dir())
    found = [predictor.predict(decode_upload(path.read_bytes())) for path in files]
    return np.stack([p.raw for p in found]), np.array([p.ood.score for p in found])


def report_parity(name: str, browser: list, raw: np.ndarray, scores: np.ndarray) -> None:
    probs = np.array([r["probabilities"] for r in browser])
    gates = np.array([r["gate"] for r in browser])
    same = probs.argmax(1) == raw.argmax(1)
    flips = int(np.sum((gates > 1.0) != (scores > 1.0)))
    print(f"parity, {name} (n = {len(probs)}): same top-1 {same.mean():.1%} ({same.sum()}/{len(same)}), "
          f"largest probability difference {np.abs(probs - raw).max():.2e}, "
          f"largest gate-score difference {np.abs(gates - scores).max():.2e}, gate verdicts that differ: {flips}")


def main() -> int:
    # On a loaded machine a fresh server can take longer than the tests' 60 s to answer: wait up to 5 minutes.
    live_server.wait_healthy = functools.partial(live_server.wait_healthy, deadline_s=300)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="test-split images (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tests = test_images(args.n, args.seed)
    files = EXAMPLES + tests
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"before: {load()}")
    with streamlit_server(env) as url:
        found = browser_results(url, files)
    print(f"after the browser runs: {load()}")
    ms = [r["ms"] for r in found["results"]]
    for name in ("cold", "warm"):
        steps = ", ".join(f"{k} {v:.2f} s" for k, v in found[f"{name}_load"].items())
        print(f"open to first result, {name} HTTP cache: {found[name]:.2f} s (model load: {steps})")
    print(f"per image, picking to probabilities (n = {len(ms)}): median {statistics.median(ms):.0f} ms, "
          f"min {min(ms):.0f}, max {max(ms):.0f}, 90th percentile {np.percentile(ms, 90):.0f}")
    raw, scores = server_results(files)
    k = len(EXAMPLES)
    report_parity("shipped examples", found["results"][:k], raw[:k], scores[:k])
    report_parity(f"test split sample, seed {args.seed}", found["results"][k:], raw[k:], scores[k:])
    report_parity("all", found["results"], raw, scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
