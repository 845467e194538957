"""Benchmark the Home page's first render and the Explore page's filter change.

Run from the project root, with the full dataset::

    HAM10000_DIR=/path/to/ham10000 .venv/bin/python bench/bench_explore.py [--repeats 15] [--browser]

Prints:
  * Home first render with ``AppTest`` in a fresh interpreter (cold: every import paid), then warm;
  * with ``--browser``: a real ``streamlit run`` server, seconds until it answers its health check,
    and seconds until Chromium shows the Home page's title (needs Playwright and /usr/bin/chromium);
  * filter change on the full table: ``core.dataset.explore.page_aggregates`` (filter + every aggregate
    the page draws), median over the repeats, for several filters;
  * the same change driven through the Explore page with ``AppTest`` (adds widgets and plotly figures).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.dataset import data, explore  # noqa: E402
from core.contracts.paths import dataset_dir  # noqa: E402

COLD_HOME = """
import sys, time
from streamlit.testing.v1 import AppTest
start = time.perf_counter()
at = AppTest.from_file({app!r}, default_timeout=60).run()
cold = time.perf_counter() - start
start = time.perf_counter()
at.run()
print(cold, time.perf_counter() - start, "tensorflow" in sys.modules, len(at.exception))
"""

FILTERS = {
    "no filter": explore.Filters(),
    "one class": explore.Filters(classes=("mel",)),
    "class+sex+age": explore.Filters(classes=("mel", "nv", "bkl"), sexes=("male",), age_range=(30, 70)),
    "site+dx_type, no missing ages": explore.Filters(sites=("back", "face"), dx_types=("histo",),
                                                     age_range=(0, 85), include_missing_age=False),
}


def home_first_render() -> None:
    """Cold and warm AppTest render of app.py in a fresh interpreter."""
    script = COLD_HOME.format(app=str(ROOT / "app.py"))
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    cold, warm, has_tf, errors = out.stdout.split()
    print(f"home (AppTest, fresh process): first render {float(cold):.2f} s, rerun {float(warm) * 1000:.0f} ms, "
          f"tensorflow imported: {has_tf}, exceptions: {errors}")


def filter_change(frame, repeats: int) -> None:
    """Median time of filter + aggregates on the full table."""
    for name, filters in FILTERS.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = explore.page_aggregates(frame, filters)
            times.append(time.perf_counter() - start)
        print(f"filter change '{name}' ({result['overview']['images']:,} rows): "
              f"median {statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")


def page_filter_change(repeats: int) -> None:
    """Median rerun time of the Explore page when the site filter changes (AppTest)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).switch_page("app_pages/explore.py")
    start = time.perf_counter()
    at.run()
    print(f"explore page (AppTest): first render {time.perf_counter() - start:.2f} s")
    times = []
    for k in range(repeats):
        at.multiselect(key="explore_sites").set_value([("face", "back", "trunk")[k % 3]])
        start = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - start)
    print(f"explore page (AppTest): filter change rerun median {statistics.median(times) * 1000:.0f} ms")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def browser_first_render() -> None:
    """Start ``streamlit run app.py``, time its health check and the title in Chromium."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port)]
    start = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = f"http://127.0.0.1:{port}/_stcore/health"
        while True:
            try:
                with urllib.request.urlopen(health, timeout=1):
                    break
            except OSError:
                if time.perf_counter() - start > 60:
                    raise
                time.sleep(0.1)
        print(f"streamlit run: healthy after {time.perf_counter() - start:.2f} s")
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)
            page = browser.new_page()
            start = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("heading", name="HAM10000 Lesion Lab").wait_for(timeout=60000)
            print(f"home (browser, fresh server): title visible after {time.perf_counter() - start:.2f} s")
            second = browser.new_page()
            start = time.perf_counter()
            second.goto(f"http://127.0.0.1:{port}/")
            second.get_by_role("heading", name="HAM10000 Lesion Lab").wait_for(timeout=60000)
            print(f"home (browser, second tab): title visible after {time.perf_counter() - start:.2f} s")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--browser", action="store_true", help="also time a real server in Chromium")
    args = parser.parse_args()
    root = dataset_dir()
    start = time.perf_counter()
    frame = data.load_dataset(root)
    print(f"dataset {root}: {len(frame):,} rows loaded in {(time.perf_counter() - start) * 1000:.0f} ms")
    home_first_render()
    filter_change(frame, args.repeats)
    page_filter_change(min(args.repeats, 7))
    if args.browser:
        browser_first_render()


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
