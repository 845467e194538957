"""The app in a real browser (headless Chromium): deep links on a fresh server, the sidebar, and the
interactions AppTest cannot see (URL round trip, one-click confusion cell, lesion dialog, example images,
a segmentation run launched from the Train page).

Waits are on conditions (an element, the script going idle, the address bar), never on the clock:
how fast things are is bench/bench_browser.py's job.
"""

import os
import re
from pathlib import Path

import pytest
from live_server import CHROMIUM, IDLE, PROJECT, launch_chromium, streamlit_server

from core.serving import calibration, modelio

from core.contracts import predictions
PAGES = [  # (url path, the page's own title)
    ("", "HAM10000 Lesion Lab"),
    ("explore", "Explore HAM10000"),
    ("train", "Train a model"),
    ("evaluate", "Evaluate"),
    ("predict", "Predict"),
]
SIDEBAR = ["Home", "Explore", "Train", "Evaluate", "Predict"]
WAIT_MS = 300_000  # generous: a shared 2-core machine under load; the waits are on conditions
RUN_WAIT_MS = 1_800_000  # a tiny training run launched from the Train page, start to done

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (Debian package chromium)")


@pytest.fixture
def server_env(tmp_path):
    from conftest import write_tiny_dataset

    data = os.environ.get("HAM10000_DIR")
    if not data or not Path(data, "HAM10000_metadata.csv").is_file():
        data = str(write_tiny_dataset(tmp_path / "ham10000"))
    return {**os.environ, "HAM10000_DIR": data, "HAM_RUNS_DIR": str(tmp_path / "runs"),
            "HAM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


@pytest.fixture
def browser_page(server_env):
    """A fresh server and a Chromium tab: yields ``(page, base_url)``."""
    playwright = pytest.importorskip("playwright.sync_api")
    with streamlit_server(server_env) as url, playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        yield _new_page(browser), url
        browser.close()


def _new_page(browser, width: int = 1400):
    """A tab whose waits default to ``WAIT_MS``: a busy server may take longer than Playwright's 30 s to answer."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.set_default_navigation_timeout(WAIT_MS)
    return page


def _settle(page) -> None:
    """Wait until the app has finished its run (the script state attribute flips back to notRunning)."""
    page.wait_for_selector(IDLE, timeout=WAIT_MS)


def _sidebar_labels(page) -> list:
    """The sidebar's page links, read once all of them are drawn (links may appear after the run ends)."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stSidebar"] a')).to_have_count(len(SIDEBAR), timeout=WAIT_MS)
    return [text.split("\n")[-1].strip() for text in page.locator('[data-testid="stSidebar"] a').all_inner_texts()]


def _images_metric(page):
    """The value of Explore's "Images" metric. The browser draws the page's metrics one by one for a while after
    the script run ends, not always in page order, so read it by its label, never as "the first metric"."""
    label = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(r"^\s*Images\s*$"))
    return page.locator('[data-testid="stMetric"]', has=label).locator('[data-testid="stMetricValue"]')


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("path", "expected"), PAGES, ids=[p or "home" for p, _ in PAGES])
def test_deep_link_on_a_fresh_server_renders_the_page(path, expected, browser_page, tmp_path):
    page, url = browser_page
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
    page.locator("h1").filter(has_text=expected).first.wait_for(timeout=WAIT_MS)
    _settle(page)
    page.wait_for_load_state("networkidle")  # the favicon and icons are fetched after the page is drawn
    assert page.get_by_text("Page not found").count() == 0
    # nothing is fetched from outside the app (a page's Material icon as its favicon came from fonts.gstatic.com)
    assert [u for u in requested if not u.startswith((url, "data:", "blob:"))] == []
    page.screenshot(path=str(tmp_path / f"{path or 'home'}.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert _sidebar_labels(page) == SIDEBAR
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0  # Streamlit's own list ("app", …) is hidden


@pytest.mark.timeout(900)
def test_the_sidebar_opens_every_page_at_its_address_with_its_tab_title(browser_page):
    from urllib.parse import urlparse

    from playwright.sync_api import expect

    page, url = browser_page
    page.goto(url, wait_until="domcontentloaded")
    expect(page).to_have_title("HAM10000 Lesion Lab", timeout=WAIT_MS)
    for (path, expected), label in zip(PAGES[1:] + PAGES[:1], SIDEBAR[1:] + SIDEBAR[:1]):  # ending back on Home
        _settle(page)
        page.locator('[data-testid="stSidebar"] a', has_text=re.compile(rf"{label}$")).click()
        page.wait_for_url(lambda u: urlparse(u).path == f"/{path}", timeout=WAIT_MS)
        page.locator("h1").filter(has_text=expected).first.wait_for(timeout=WAIT_MS)
        title = f"{label} · HAM10000 Lesion Lab" if path else "HAM10000 Lesion Lab"
        expect(page).to_have_title(title, timeout=WAIT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.timeout(900)
def test_explore_filters_and_lesion_survive_reload_back_and_a_pasted_link(browser_page):
    from playwright.sync_api import expect

    page, url = browser_page
    page.goto(f"{url}/explore", wait_until="domcontentloaded")
    page.get_by_text("Images per class").first.wait_for(timeout=WAIT_MS)
    _settle(page)
    everything = _images_metric(page).inner_text()
    page.locator('[data-testid="stSidebar"] button', has_text=re.compile(r"^MEL$")).click()
    page.wait_for_url(re.compile(r"explore_classes=MEL"), timeout=WAIT_MS)
    expect(_images_metric(page)).not_to_have_text(everything, timeout=WAIT_MS)
    _settle(page)
    melanomas = _images_metric(page).inner_text()

    page.get_by_role("button", name=re.compile(r"^Lesion HAM_")).first.click()  # opens a dialog over the page
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=WAIT_MS)
    page.wait_for_url(re.compile(r"image=ISIC_"), timeout=WAIT_MS)
    expect(dialog.get_by_text(re.compile(r"image\(s\) of the same lesion"))).to_have_count(1, timeout=WAIT_MS)
    assert dialog.is_visible() and dialog.bounding_box()["y"] < 1000  # in the visible window
    opened = page.url

    page.reload(wait_until="domcontentloaded")  # reload: filters and dialog come back
    page.get_by_role("dialog").wait_for(timeout=WAIT_MS)
    _settle(page)
    expect(_images_metric(page)).to_have_text(melanomas, timeout=WAIT_MS)

    page.go_back()  # the lesion was one history entry: Back closes it and keeps the filter
    page.wait_for_url(lambda u: "image=" not in u, timeout=WAIT_MS)
    page.get_by_role("dialog").wait_for(state="detached", timeout=WAIT_MS)
    _settle(page)
    expect(_images_metric(page)).to_have_text(melanomas, timeout=WAIT_MS)
    assert "explore_classes=MEL" in page.url

    fresh = _new_page(page.context.browser)  # a pasted link in a new window: a new session, same view
    fresh.goto(opened, wait_until="domcontentloaded")
    fresh.get_by_role("dialog").wait_for(timeout=WAIT_MS)
    _settle(fresh)
    expect(_images_metric(fresh)).to_have_text(melanomas, timeout=WAIT_MS)


@pytest.mark.timeout(900)
def test_the_lesion_dialogs_close_button_closes_it(browser_page):
    page, url = browser_page
    page.goto(f"{url}/explore", wait_until="domcontentloaded")
    page.get_by_role("button", name=re.compile(r"^Lesion HAM_")).first.wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_role("button", name=re.compile(r"^Lesion HAM_")).first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(re.compile(r"image\(s\) of the same lesion")).wait_for(timeout=WAIT_MS)
    page.wait_for_url(re.compile(r"image=ISIC_"), timeout=WAIT_MS)
    _settle(page)
    dialog.locator("[data-testid^=stBaseButton]", has_text="Close").click()  # the page's button, not the corner ×
    page.get_by_role("dialog").wait_for(state="detached", timeout=WAIT_MS)
    page.wait_for_url(lambda u: "image=" not in u, timeout=WAIT_MS)
    _settle(page)
    assert page.get_by_role("dialog").count() == 0


# Every element of the page that clips its text (an ellipsis, hidden or clipped overflow, a select box's
# input) and holds more text than it shows, and every chart label drawn outside its chart.
CUT_OFF = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const found = [];
  for (const el of main.querySelectorAll('*')) {
    if (el.clientWidth === 0) continue;
    const style = getComputedStyle(el);
    const clips = style.textOverflow === 'ellipsis' || ['hidden', 'clip'].includes(style.overflowX);
    const text = (el.tagName === 'INPUT' ? el.value : el.innerText || '').trim();
    if (clips && text && el.scrollWidth > el.clientWidth + 1)
      found.push(`${text.slice(0, 60)} (${el.scrollWidth} px in ${el.clientWidth} px)`);
  }
  for (const chart of main.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg')) {
    const box = chart.getBoundingClientRect();
    for (const label of chart.querySelectorAll('text')) {
      const r = label.getBoundingClientRect();
      if (r.width && (r.left < box.left - 1 || r.right > box.right + 1)) found.push(`chart: ${label.textContent}`);
    }
  }
  return found;
}"""

# (caption start, rendered width) of every image on the page.
IMAGE_WIDTHS = """() => [...document.querySelectorAll('[data-testid="stImage"]')].map(
  image => [image.innerText.trim(), image.querySelector('img').getBoundingClientRect().width])"""

# The width the page's content may fill: the main block without its padding.
CONTENT_WIDTH = """() => { const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const style = getComputedStyle(main);
  return main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight); }"""


@pytest.mark.timeout(1200)
def test_nothing_is_cut_off_at_1024_px(browser_page, tmp_path):
    """Predict with an example image and every tab of Evaluate in a 1,024-px window: no label, value or select
    box holds more text than it shows, and the saliency maps are at least as wide as the image panel above."""
    page, url = browser_page
    page = _new_page(page.context.browser, width=1024)
    _open_an_example(page, url)
    page.get_by_text("Where did the model look?").first.wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_text("Download the picture (PNG)").nth(1).wait_for(timeout=WAIT_MS)  # both maps are drawn
    page.screenshot(path=str(tmp_path / "predict_1024.png"), full_page=True)
    assert page.evaluate(CUT_OFF) == []
    widths = page.evaluate(IMAGE_WIDTHS)
    maps = [w for caption, w in widths if "explaining" in caption]
    panels = [w for caption, w in widths if caption.startswith(("Lesion outline", "Original"))]
    assert len(maps) == 2 and panels and min(maps) >= max(panels) - 1, widths
    column = page.evaluate(CONTENT_WIDTH)
    assert min(maps) >= 0.45 * column, (maps, column)  # two a row, where three a row left each 180 px

    page.goto(f"{url}/evaluate", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Summary").wait_for(timeout=WAIT_MS)
    _settle(page)
    for tab in ("Summary", "Confusion", "Per class", "Operating point", "Calibration", "Subgroups", "Export"):
        page.get_by_role("tab", name=tab).click()
        _settle(page)
        assert page.evaluate(CUT_OFF) == [], tab
    assert page.get_by_text("Positive predictive value").count() >= 1


@pytest.mark.timeout(900)
def test_one_click_on_a_confusion_cell_selects_it(browser_page):
    page, url = browser_page
    page.goto(f"{url}/evaluate", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Confusion").wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_role("tab", name="Confusion").click()
    caption = page.get_by_text(re.compile(r"images with true class")).first
    caption.wait_for(timeout=WAIT_MS)
    before = caption.inner_text()
    plot = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first
    plot.wait_for(timeout=WAIT_MS)
    box = _steady_box(page, plot)
    n = 7  # the shipped model's classes: akiec bcc bkl df mel nv vasc
    page.mouse.click(box["x"] + box["width"] * 5.5 / n, box["y"] + box["height"] * 4.5 / n)  # true mel, predicted nv
    page.wait_for_function(
        "document.body.innerText.includes('with true class mel predicted as nv')", timeout=WAIT_MS)
    assert before != caption.inner_text()


def _steady_box(page, locator) -> dict:
    """The element's box once two reads 100 ms apart agree: a chart in a tab just shown may still be laid out."""
    box, previous = locator.bounding_box(), None
    while box != previous:
        page.wait_for_timeout(100)
        box, previous = locator.bounding_box(), box
    return box


def _open_an_example(page, url: str) -> None:
    """Predict with its first shipped example image chosen (no upload)."""
    page.goto(f"{url}/predict", wait_until="domcontentloaded")
    page.get_by_text("Example images").first.wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_text("Example images").first.click()
    page.get_by_text("CC BY-NC 4.0").first.wait_for(timeout=WAIT_MS)


@pytest.mark.timeout(900)
def test_predict_example_image_without_uploading(browser_page):
    page, url = browser_page
    _open_an_example(page, url)
    _settle(page)
    verdict = page.get_by_text("Malignant (mel + bcc + akiec)").or_(page.get_by_text("does not look like"))
    verdict.first.wait_for(timeout=WAIT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.timeout(900)
def test_a_photo_meets_the_gate_before_any_verdict(server_env, tmp_path):
    """Upload scikit-learn's flower photo: the page says it is not dermatoscopic and shows no verdict."""
    playwright = pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect
    from PIL import Image
    from sklearn.datasets import load_sample_image
    from tiny_models import save_ood_model_folder

    flower = tmp_path / "flower.jpg"
    Image.fromarray(load_sample_image("flower.jpg")).save(flower, quality=90)
    model = save_ood_model_folder(tmp_path / "model")
    with streamlit_server({**server_env, "HAM_DEFAULT_MODEL": str(model)}) as url, playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = _new_page(browser)
        page.goto(f"{url}/predict", wait_until="domcontentloaded")
        page.locator("h1").filter(has_text="Predict").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        page.locator('input[type="file"]').first.set_input_files(str(flower), timeout=WAIT_MS)
        page.get_by_text("This does not look like a dermatoscopic image").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        page.screenshot(path=str(tmp_path / "gate.png"), full_page=True)
        expect(page.get_by_text("Show the prediction anyway")).to_have_count(1, timeout=WAIT_MS)
        assert page.get_by_text("Malignant (mel + bcc + akiec)").count() == 0
        assert page.get_by_text("Where did the model look?").count() == 0
        page.get_by_text("Show the prediction anyway").click()
        page.get_by_text("Malignant (mel + bcc + akiec)").first.wait_for(timeout=WAIT_MS)
        expect(page.get_by_text("Shown on request")).to_have_count(1, timeout=WAIT_MS)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()


@pytest.mark.timeout(900)
def test_an_uploaded_original_gets_the_lesion_outline_and_measurements(server_env, tmp_path):
    """A 600×450 original through the shipped classifier and segmenter: outline and ABCD measurements appear."""
    playwright = pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect
    data = Path(server_env["HAM10000_DIR"])
    originals = sorted((data.parent / "ham10000_originals").rglob("ISIC_*.jpg"))
    if not originals:
        pytest.skip(f"the 600×450 originals are not beside the dataset ({data.parent / 'ham10000_originals'})")
    env = {**server_env, "HAM_SEGMENTER": str(PROJECT / "models" / "segmenter")}
    env.pop("HAM_DEFAULT_MODEL", None)
    with streamlit_server(env) as url, playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = _new_page(browser)
        page.goto(f"{url}/predict", wait_until="domcontentloaded")
        page.locator("h1").filter(has_text="Predict").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        page.locator('input[type="file"]').first.set_input_files(str(originals[0]), timeout=WAIT_MS)
        verdict = page.get_by_text("Malignant (mel + bcc + akiec)").or_(page.get_by_text("Show the prediction anyway"))
        verdict.first.wait_for(timeout=WAIT_MS)
        _settle(page)
        if page.get_by_text("Show the prediction anyway").count():  # the gate: ask to see the result anyway
            page.get_by_text("Show the prediction anyway").click()
        page.get_by_text("predicted in yellow").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        page.screenshot(path=str(tmp_path / "outline.png"), full_page=True)
        page.get_by_text("Border compactness").first.wait_for(timeout=WAIT_MS)
        expect(page.get_by_text("ABCD").first).to_be_attached(timeout=WAIT_MS)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()


@pytest.mark.timeout(300)
def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(server_env, monkeypatch):
    """The port is free when chosen, but another process may bind it first: the server retries elsewhere."""
    import socket
    import urllib.request

    import live_server

    with socket.socket() as squatter:
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, live_server.free_port()])
        monkeypatch.setattr(live_server, "free_port", lambda: next(ports))
        with live_server.streamlit_server(server_env) as url:
            assert not url.endswith(f":{taken}")
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=30) as answer:
                assert answer.status == 200


MISS = "ISIC_0024481"  # the shipped example the shipped model gets wrong (a melanoma it calls bkl)


def _percentages(text: str) -> dict:
    """``{class: "49.6%"}`` from text such as ``bkl 49.6%, nv 25.3%`` or a table's ``bkl\t49.6%`` rows."""
    return dict(re.findall(r"\b(akiec|bcc|bkl|df|mel|nv|vasc)\s+(\d+\.\d%)", text))


def _predict_example(page, url: str, image_id: str) -> dict:
    """Predict's top-3 probabilities of a shipped example image, picked by its label.

    No wait for the script to go idle once an example is shown: the saliency maps below the verdict may take
    minutes on a loaded machine, and the verdict is drawn before them.
    """
    page.goto(f"{url}/predict", wait_until="domcontentloaded")
    page.get_by_text("Example images").first.wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_text("Example images").first.click()
    page.get_by_text("CC BY-NC 4.0").first.wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Example image").click()
    option = page.get_by_role("option", name=re.compile(image_id))
    assert "the model gets this one wrong (it says bkl)" in option.inner_text()  # the miss says so on the picker
    option.click()
    # the table of this image, not the one left from the first example (stale until the rerun replaces it)
    page.wait_for_function("""() => {
        const table = document.querySelector('[data-testid="stTable"]');
        const fresh = table && table.closest('[data-stale]')?.getAttribute('data-stale') === 'false';
        return fresh && document.body.innerText.includes('True label (dataset): mel · Melanoma');
    }""", timeout=WAIT_MS)
    return _percentages(page.locator('[data-testid="stTable"]').first.inner_text())


@pytest.mark.timeout(900)
def test_the_same_image_shows_the_same_probabilities_on_predict_and_evaluate(browser_page, tmp_path):
    page, url = browser_page
    on_predict = _predict_example(page, url, MISS)
    page.screenshot(path=str(tmp_path / "predict.png"), full_page=True)
    assert len(on_predict) == 3 and max(on_predict, key=lambda c: float(on_predict[c][:-1])) == "bkl"

    page.goto(f"{url}/evaluate", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Confusion").wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_role("tab", name="Confusion").click()
    box = page.get_by_label("Find an image of this split by its id")
    box.fill(MISS)
    box.press("Enter")
    found = page.get_by_text(re.compile(rf"^{MISS} · true mel · ")).first
    found.wait_for(timeout=WAIT_MS)
    on_evaluate = _percentages(found.inner_text())
    assert {c: on_evaluate[c] for c in on_predict} == on_predict  # the same figures, to the shown 0.1 %
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert on_evaluate == {c: predictions.percent(p) for c, p in zip(classes, _served(MISS, classes))}
    calibrated = page.get_by_text(re.compile(r"^Calibrated with temperature scaling, T = \d\.\d{3}, fitted on n = "))
    assert calibrated.count() >= 1  # the page says once, in Predict's words, which probabilities these are
    page.screenshot(path=str(tmp_path / "evaluate.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0


@pytest.mark.timeout(900)
def test_a_downloaded_batch_csv_reads_with_pandas_defaults(browser_page, tmp_path):
    import numpy as np
    import pandas as pd

    page, url = browser_page
    examples = PROJECT / "ui" / "assets" / "examples"
    files = [tmp_path / f"{MISS}.jpg", tmp_path / "=1+2.jpg"]
    files[0].write_bytes((examples / f"mel_{MISS}.jpg").read_bytes())
    files[1].write_bytes((examples / "nv_ISIC_0024319.jpg").read_bytes())
    page.goto(f"{url}/predict", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Batch").wait_for(timeout=WAIT_MS)
    _settle(page)
    page.get_by_role("tab", name="Batch").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Images or zip files")
    uploader.locator('input[type="file"]').set_input_files([str(f) for f in files], timeout=WAIT_MS)
    page.get_by_role("button", name="Classify 2 file(s)").click()
    button = page.get_by_role("button", name="Download predictions (CSV)")
    button.wait_for(timeout=WAIT_MS)
    _settle(page)
    with page.expect_download(timeout=WAIT_MS) as download:
        button.click()
    path = tmp_path / "predictions.csv"
    download.value.save_as(path)

    table = pd.read_csv(path)  # pandas' defaults, as a user would
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert list(table.columns) == ["image_id", "dx_pred", "ood_flag", "ood_score", *classes,
                                   "calibration", "temperature", "temperature_n"]
    assert sorted(table["image_id"]) == ["'=1+2", MISS]  # a file name a spreadsheet would run is neutralised
    meta = modelio.read_metadata(PROJECT / "models" / "default")
    assert set(table["calibration"]) == {"calibrated"} and set(table["temperature_n"]) == {meta["temperature_n"]}
    np.testing.assert_allclose(table["temperature"], meta["temperature"], atol=1e-6)
    row = table.set_index("image_id").loc[MISS]
    np.testing.assert_allclose(row[classes].to_numpy(float), _served(MISS, classes), atol=1e-4)  # what Evaluate shows
    assert row["dx_pred"] == "bkl"


def _served(image_id: str, classes: list):
    """The shipped model's saved test probabilities of one image, calibrated as every page serves them."""
    meta = modelio.read_metadata(PROJECT / "models" / "default")
    saved = predictions.read(PROJECT / "models" / "default" / predictions.FILES["test"], classes).set_index("image_id")
    return calibration.calibrate(saved.loc[image_id, classes].to_numpy(float), meta["temperature"])


def _fill_number(page, label: str, value) -> None:
    """Type into the number field labelled ``label`` and wait for the rerun it causes."""
    field = page.locator('[data-testid="stNumberInput"]').filter(has_text=label).locator("input")
    field.fill(str(value))
    field.press("Enter")
    _settle(page)


@pytest.mark.timeout(2400)
def test_a_segmentation_run_launched_from_the_train_page_finishes(server_env, tmp_path):
    """Task segmentation with the form's defaults, 1 epoch at 32 px (height 0: square) on a tiny generated dataset:
    the run is listed as a segmentation run, names its phases and ends done, at a 1,024-px window."""
    playwright = pytest.importorskip("playwright.sync_api")
    from conftest import write_tiny_dataset
    from playwright.sync_api import expect

    env = {**server_env, "HAM10000_DIR": str(write_tiny_dataset(tmp_path / "tiny"))}
    with streamlit_server(env) as url, playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = _new_page(browser)
        page.set_viewport_size({"width": 1024, "height": 900})
        page.goto(f"{url}/train", wait_until="domcontentloaded")
        page.locator("h1").filter(has_text="Train a model").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Task").first.click()
        page.get_by_role("option", name=re.compile("Segmentation")).click()
        page.get_by_text("Freeze encoder below").first.wait_for(timeout=WAIT_MS)
        _settle(page)
        for label, value in (("Epochs", 1), ("Input width", 32), ("Input height", 0)):
            _fill_number(page, label, value)
        page.get_by_role("button", name=re.compile("Launch training")).click()
        table = page.locator('[data-testid="stDataFrame"]').first
        expect(table).to_contain_text("segmentation", timeout=WAIT_MS)
        ended = page.locator("h4").filter(has_text=re.compile(r"segmentation.* — (done|failed|crashed|stopped)"))
        # a whole (tiny) training: minutes on a loaded machine, so a longer wait, still on a condition;
        # .first because while the page redraws, the run's old heading can stand beside the new one for a moment
        expect(ended.first).to_be_visible(timeout=RUN_WAIT_MS)
        _settle(page)
        page.screenshot(path=str(tmp_path / "train_segmentation.png"), full_page=True)
        heading = page.locator("h4").filter(has_text=re.compile("segmentation"))
        expect(heading).to_have_count(1)
        expect(heading).to_contain_text("— done")
        expect(page.get_by_text("Val Dice").first).to_be_visible()
        assert page.get_by_role("button", name=re.compile("Resume")).count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
