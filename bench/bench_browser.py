"""What a user feels, timed in a real browser: Predict's time to interactive and first prediction, Explore's filters.

Run from the project root, with the full dataset::

    HAM10000_DIR=/path/to/ham10000 .venv/bin/python bench/bench_browser.py [--servers 3] [--changes 8]

Each round starts a fresh server as the README does (``python -m ui.serve``) on a free port and drives headless Chromium
(/usr/bin/chromium, never a downloaded browser) through it, the way an educator and a data scientist would:

  * **Predict, after Home**: open the app (Home), click Predict in the sidebar as soon as Home shows;
    seconds from the click until the image source can be used (the page's script is idle). The warm start
    (ui/warm.py) loads TensorFlow and the model in the background from the server's start on.
  * **Predict, cold deep link**: a fresh server opened straight at /predict (the warm start still running).
  * **First prediction with its map**: upload one of the example images right after Predict is usable;
    seconds until the probabilities, the outline and both saliency maps are drawn (the faithfulness curves
    are drawn on request, not timed; on a fresh server this still waits for the warm start to finish). Then a second, different image,
    and a third in a new browser session once the server is warm: what a class sees when the app was
    opened a minute before.
  * **Fresh server, first prediction**: a visitor opens /predict ``--fresh-delay`` seconds (10) after the
    server was launched and uploads an example at once: seconds to a usable page, then from the upload to
    the verdict (probabilities) and to the full result with its maps.
  * **Explore filter change**: click a diagnosis pill; milliseconds from the click until the new numbers,
    charts and thumbnails are drawn (script idle, nothing stale, every image loaded, two frames painted).

Prints the median, min and max of each with its n, and the machine's load average: timings on a shared
machine are noisy, read them with the load.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_server import IDLE, WATCH_RUNS, launch_chromium, streamlit_server  # noqa: E402

EXAMPLES = sorted((ROOT / "ui" / "assets" / "examples").glob("*.jpg"))
PILLS = ["MEL", "NV", "BKL", "MEL", "BCC", "NV", "BKL", "BCC", "DF", "DF", "AKIEC", "AKIEC"]
WAIT_MS = 300_000

# Click a sidebar pill and wait, inside the page, until the rerun is drawn: script idle, no stale
# element, every <img> loaded, the first metric changed, then two painted frames.
SETTLE_JS = """async ([label, before]) => {
  const metric = () => document.querySelector('[data-testid="stMetricValue"]')?.innerText;
  const button = [...document.querySelectorAll('[data-testid="stSidebar"] button')]
    .find(b => b.innerText.trim() === label);
  const frame = () => new Promise(resolve => requestAnimationFrame(resolve));
  const t0 = performance.now();
  button.click();
  while (performance.now() - t0 < 60000) {
    await frame();
    const idle = document.querySelector('[data-testid="stApp"]').getAttribute('data-test-script-state') === 'notRunning';
    const stale = document.querySelector('[data-stale="true"]');
    const loaded = [...document.querySelectorAll('img')].every(img => img.complete);
    if (idle && !stale && loaded && metric() !== before) {
      await frame(); await frame();
      return performance.now() - t0;
    }
  }
  return -1;
}"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _idle(page) -> None:
    page.wait_for_selector(IDLE, timeout=WAIT_MS)


def _predict_ready(page) -> None:
    page.get_by_text("Image source").first.wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stFileUploaderDropzone"]').first.wait_for(timeout=WAIT_MS)
    _idle(page)


def predict_after_home(browser, url: str) -> tuple:
    """Seconds from clicking Predict (right after Home renders) to a usable Predict page, and the page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url, wait_until="domcontentloaded")
    page.locator("h1").filter(has_text="HAM10000 Lesion Lab").first.wait_for(timeout=WAIT_MS)
    _idle(page)
    start = time.perf_counter()
    page.locator('[data-testid="stSidebar"] a', has_text="Predict").click()
    _predict_ready(page)
    return time.perf_counter() - start, page


def predict_cold(browser, url: str) -> float:
    """Seconds from opening /predict on a fresh server to a usable page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(f"{url}/predict", wait_until="domcontentloaded")
    _predict_ready(page)
    elapsed = time.perf_counter() - start
    page.close()
    return elapsed


def prediction_with_map(page, image: Path) -> float:
    """Seconds from choosing a file to its probabilities, outline and saliency images all drawn."""
    return prediction_times(page, image)[1]


def prediction_times(page, image: Path) -> tuple:
    """Seconds from choosing a file to its verdict (the probabilities), and to the full result with its maps."""
    delete = page.locator('[data-testid="stFileUploaderDeleteBtn"] button')
    if delete.count():  # clear the previous image first, so its result cannot pass for the new one
        delete.first.click()
        page.wait_for_function("!document.body.innerText.includes('Malignant (mel + bcc + akiec)')", timeout=WAIT_MS)
        _idle(page)
    page.evaluate(WATCH_RUNS)  # the waits below cannot end on the page as it was before the upload
    start = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(image))
    page.get_by_text(image.name).first.wait_for(timeout=WAIT_MS)
    page.wait_for_function("""() => window.__ran && (document.body.innerText.includes('Malignant (mel + bcc + akiec)')
        || document.body.innerText.includes('does not look like'))""", timeout=WAIT_MS)
    verdict = time.perf_counter() - start
    page.wait_for_function(
        """() => {
            if (!window.__ran) return false;
            const app = document.querySelector('[data-testid="stApp"]');
            const text = document.body.innerText;
            const verdict = text.includes('Malignant (mel + bcc + akiec)') || text.includes('does not look like');
            const maps = text.includes('Deletion blurs the most salient pixels') || text.includes('does not look like');
            const images = [...document.querySelectorAll('img')].every(img => img.complete);
            return verdict && maps && images && !document.querySelector('[data-stale="true"]')
                && app.getAttribute('data-test-script-state') === 'notRunning';
        }""",
        timeout=WAIT_MS,
    )
    return verdict, time.perf_counter() - start


def fresh_server_prediction(browser, delay: float) -> tuple:
    """A visitor who opens /predict ``delay`` s after the server was launched and uploads an example at once.

    Returns seconds from opening to a usable page, then from the upload to the verdict and to the full result.
    """
    launched = time.monotonic()
    with streamlit_server(_env()) as url:
        time.sleep(max(0.0, launched + delay - time.monotonic()))  # the visitor arrives at launch + delay
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        start = time.perf_counter()
        page.goto(f"{url}/predict", wait_until="domcontentloaded")
        _predict_ready(page)
        ready = time.perf_counter() - start
        verdict, full = prediction_times(page, EXAMPLES[4])
        page.close()
    return ready, verdict, full


def prediction_in_new_session(browser, url: str, image: Path) -> float:
    """Seconds to a first prediction with its map in a new session on a server that has finished warming."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/predict", wait_until="domcontentloaded")
    _predict_ready(page)
    elapsed = prediction_with_map(page, image)
    page.close()
    return elapsed


def explore_changes(browser, url: str, changes: int) -> list:
    """Milliseconds per diagnosis-pill click on Explore, after one untimed warm-up click."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/explore", wait_until="domcontentloaded")
    page.get_by_text("Images per class").first.wait_for(timeout=WAIT_MS)
    _idle(page)
    timings = []
    for k, label in enumerate(PILLS[: changes + 1]):
        before = page.locator('[data-testid="stMetricValue"]').first.inner_text()
        ms = page.evaluate(SETTLE_JS, [label, before])
        if ms < 0:
            raise TimeoutError(f"Explore did not settle after clicking {label}")
        if k:  # the first click pays one-off costs (plotly.js start-up, caches)
            timings.append(ms)
    page.close()
    return timings


def warm_server_rounds(browser, url: str, results: dict, changes: int) -> None:
    """Predict after Home, two predictions, a new session's first one, Explore's filter changes: one server."""
    elapsed, page = predict_after_home(browser, url)
    _record(results, "after_home", elapsed)
    _record(results, "first", prediction_with_map(page, EXAMPLES[4]))
    _record(results, "second", prediction_with_map(page, EXAMPLES[1]))
    page.close()
    _record(results, "new_session", prediction_in_new_session(browser, url, EXAMPLES[2]))
    _record(results, "explore", *explore_changes(browser, url, changes))


def _record(results: dict, name: str, *values: float) -> None:
    """Keep a measurement and show it at once (a long run on a busy machine shows its progress)."""
    results[name] += values
    print(f"  {name}: {', '.join(f'{v:.2f}' for v in values)}  (load {os.getloadavg()[0]:.1f})", flush=True)


def _line(name: str, values: list, unit: str, scale: float = 1.0) -> str:
    if not values:
        return f"{name}: not measured (n = 0)"
    values = [v * scale for v in values]
    return (f"{name}: median {statistics.median(values):.2f} {unit} "
            f"(min {min(values):.2f}, max {max(values):.2f}, n = {len(values)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=3, help="fresh servers per measurement (default 3)")
    parser.add_argument("--changes", type=int, default=8, help="timed filter changes per server (default 8)")
    parser.add_argument("--fresh-delay", type=float, default=10.0,
                        help="seconds between a fresh server's launch and the visitor's first prediction (default 10)")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the cold deep link and the fresh server's first prediction")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    results = {"after_home": [], "cold": [], "first": [], "second": [], "new_session": [], "explore": [],
               "fresh_ready": [], "fresh_verdict": [], "fresh_full": []}
    print(f"load average before: {os.getloadavg()}", flush=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for _ in range(args.servers):
            if not args.cold_only:
                with streamlit_server(_env()) as url:
                    warm_server_rounds(browser, url, results, args.changes)
            with streamlit_server(_env()) as url:
                _record(results, "cold", predict_cold(browser, url))
            ready, verdict, full = fresh_server_prediction(browser, args.fresh_delay)
            _record(results, "fresh_ready", ready)
            _record(results, "fresh_verdict", verdict)
            _record(results, "fresh_full", full)
        browser.close()
    print(_line("Predict time to interactive, clicked right after Home", results["after_home"], "s"))
    print(_line("Predict time to interactive, cold deep link to /predict", results["cold"], "s"))
    print(_line("first prediction with its map (upload 200x150 JPEG)", results["first"], "s"))
    print(_line("second prediction with its map", results["second"], "s"))
    print(_line("first prediction of a new session on a warm server", results["new_session"], "s"))
    print(_line("Explore filter change, full dataset", results["explore"], "ms"))
    fresh = f"server launched {args.fresh_delay:.0f} s before"
    print(_line(f"Predict time to interactive, {fresh}", results["fresh_ready"], "s"))
    print(_line(f"first verdict (probabilities) after the upload, {fresh}", results["fresh_verdict"], "s"))
    print(_line(f"first full result with its maps after the upload, {fresh}", results["fresh_full"], "s"))
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
