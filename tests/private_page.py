"""Drive Predict's private mode in a real browser, and record what the browser sends (for the test and the bench)."""

import json
import re
from pathlib import Path

from live_server import IDLE

PRIVATE_LABEL = "Private (on this device)"
FRAME = 'iframe[title*="private_predict"]'


class Traffic:
    """Every request and every WebSocket frame a page sends, as bytes, with the URL of each request."""

    def __init__(self, page):
        self.urls, self.bodies, self.frames = [], [], []
        page.on("request", self._request)
        page.on("websocket", lambda ws: ws.on("framesent", self._frame))

    def _request(self, request):
        self.urls.append(request.url)
        self.bodies.append(request.post_data_buffer or b"")

    def _frame(self, payload):
        self.frames.append(payload.encode("utf-8") if isinstance(payload, str) else bytes(payload))

    def sent(self) -> list:
        """Everything sent: request URLs and bodies, WebSocket frames."""
        return [url.encode("utf-8") for url in self.urls] + self.bodies + self.frames


def open_private_mode(page, base_url: str):
    """Open Predict, switch to private mode; returns the component's frame once its model is ready (or failed)."""
    page.goto(f"{base_url}/predict")
    page.wait_for_selector(IDLE)
    page.get_by_text(PRIVATE_LABEL, exact=True).click()
    frame = page.wait_for_selector(FRAME).content_frame()
    frame.wait_for_selector('#status[data-state="ready"], #status[data-state="error"]')
    return frame


def classify(frame, path: Path) -> dict:
    """Pick ``path`` in the component; the browser's result: raw probabilities, gate score, n, milliseconds."""
    before = json.loads(frame.get_attribute("body", "data-result") or '{"n": 0}')["n"]
    frame.set_input_files("#file", str(path))
    frame.wait_for_function(f"JSON.parse(document.body.dataset.result || '{{\"n\": 0}}').n > {before}")
    return json.loads(frame.get_attribute("body", "data-result"))


def verdict_shown(page) -> bool:
    """True when the page, idle, shows a verdict (the malignancy metric)."""
    page.wait_for_selector(IDLE)
    return page.get_by_text(re.compile(r"^Malignant \(mel")).count() > 0
