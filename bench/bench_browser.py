"""What a user feels, timed in a real browser: Predict's time to interactive and first prediction, Explore's filters.

Run from the project root, with the full dataset::

    HAM10000_DIR=/path/to/ham10000 .venv/bin/python bench/bench_browser.py [--servers 3] [--changes 8]

Each round starts a fresh server as the README does (``python -m ui.serve``) on a free port and drives headless Chromium
(/usr/bin/chromium, never a downloaded browser) through it, the way an educator and a data scientist would:

  * **Predict, after Home**: open the app (Home), click Predict in the sidebar as soon as Home shows;
    seconds from the click until the image source can be used (the page's script is idle). The warm start
    (ui/warm.py) loads TensorFlow and the model in the background from the server's start on.
  * **Predict, cold deep link**: a fresh server opened straight at /Predict (the warm start still running).
  * **First prediction with its map**: upload one of the example images right after Predict is usable;
    seconds until the probabilities, the outline and both saliency maps are drawn (the faithfulness curves
    are drawn on request, not timed; on a fresh server this still waits for the warm start to finish). Then a second, different image,
    and a third in a new browser session once the server is warm: what a class sees when the app was
    opened a minute before.
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

from live_server import IDLE, launch_chromium, streamlit_server  # noqa: E402

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
    """Seconds from opening /Predict on a fresh server to a usable page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start = time.perf_counter()
    page.goto(f"{url}/Predict", wait_until="domcontentloaded")
    _predict_ready(page)
    elapsed = time.perf_counter() - start
    page.close()
    return elapsed


def prediction_with_map(page, image: Path) -> float:
    """Seconds from choosing a file to its probabilities, outline and saliency images all drawn."""
    delete = page.locator('[data-testid="stFileUploaderDeleteBtn"] button')
    if delete.count():  # clear the previous image first, so its result cannot pass for the new one
        delete.first.click()
        page.wait_for_function("!document.body.innerText.includes('Malignant (mel + bcc + akiec)')", timeout=WAIT_MS)
        _idle(page)
    # Note every script run from now on, so the wait below cannot end on the page as it was before the upload.
    page.evaluate("""() => {
        clearInterval(window.__watch);
        window.__ran = false;
        const app = document.querySelector('[data-testid="stApp"]');
        window.__watch = setInterval(() => {
            if (app.getAttribute('data-test-script-state') === 'running') window.__ran = true;
        }, 2);
    }""")
    start = time.perf_counter()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(image))
    page.get_by_text(image.name).first.wait_for(timeout=WAIT_MS)
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
    return time.perf_counter() - start


def prediction_in_new_session(browser, url: str, image: Path) -> float:
    """Seconds to a first prediction with its map in a new session on a server that has finished warming."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/Predict", wait_until="domcontentloaded")
    _predict_ready(page)
    elapsed = prediction_with_map(page, image)
    page.close()
    return elapsed


def explore_changes(browser, url: str, changes: int) -> list:
    """Milliseconds per diagnosis-pill click on Explore, after one untimed warm-up click."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/Explore", wait_until="domcontentloaded")
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
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    results = {"after_home": [], "cold": [], "first": [], "second": [], "new_session": [], "explore": []}
    print(f"load average before: {os.getloadavg()}", flush=True)
    with sync_playwright() as p:
        browser = launch_chromium(p)
        for _ in range(args.servers):
            with streamlit_server(_env()) as url:
                elapsed, page = predict_after_home(browser, url)
                _record(results, "after_home", elapsed)
                _record(results, "first", prediction_with_map(page, EXAMPLES[4]))
                _record(results, "second", prediction_with_map(page, EXAMPLES[1]))
                page.close()
                _record(results, "new_session", prediction_in_new_session(browser, url, EXAMPLES[2]))
                _record(results, "explore", *explore_changes(browser, url, args.changes))
            with streamlit_server(_env()) as url:
                _record(results, "cold", predict_cold(browser, url))
        browser.close()
    print(_line("Predict time to interactive, clicked right after Home", results["after_home"], "s"))
    print(_line("Predict time to interactive, cold deep link to /Predict", results["cold"], "s"))
    print(_line("first prediction with its map (upload 200x150 JPEG)", results["first"], "s"))
    print(_line("second prediction with its map", results["second"], "s"))
    print(_line("first prediction of a new session on a warm server", results["new_session"], "s"))
    print(_line("Explore filter change, full dataset", results["explore"], "ms"))
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
