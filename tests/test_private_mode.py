"""Predict's private mode: the browser classifies, the server gets numbers only.

The browser test runs the shipped model in headless Chromium (LiteRT.js from ui/private_component/node_modules,
installed by .ci/setup) and records every request and WebSocket frame the page sends.
"""

import base64
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_server import CHROMIUM, PROJECT, launch_chromium, streamlit_server

from core.serving import private_export
from core.contracts.paths import default_model_dir
from ui import private_mode

EXAMPLE = PROJECT / "ui" / "assets" / "examples" / "mel_ISIC_0024481.jpg"
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
WAIT_MS = 300_000


def test_only_the_expected_numbers_are_read_back():
    probs = [0.1, 0.1, 0.1, 0.1, 0.4, 0.1, 0.1]
    raw, gate = private_mode.read_result({"probabilities": probs, "gate": 0.5, "n": 1}, CLASSES)
    assert np.allclose(raw, probs) and gate == 0.5
    refused = [
        None, "text", {"probabilities": probs, "gate": 0.5, "n": 1, "image": "data:image/png;base64,AAAA"},
        {"probabilities": probs[:6], "gate": 0.5, "n": 1}, {"probabilities": probs, "gate": "1", "n": 1},
        {"probabilities": [float("nan")] * 7, "gate": 0.5, "n": 1}, {"probabilities": [0.5] * 7, "gate": 0.5, "n": 1},
    ]
    for value in refused:
        assert private_mode.read_result(value, CLASSES) is None, value


def test_the_component_args_follow_the_model_folder():
    from core.serving.modelio import read_metadata

    args = private_mode.component_args(default_model_dir(), read_metadata(default_model_dir()))
    assert (args["height"], args["width"], args["classes"]) == (144, 192, 7)
    assert args["cam_shape"] == [5, 6] and args["threshold"] == 1.0


def test_private_mode_alone_never_imports_tensorflow():
    """What the page does for private mode (reasons, arguments, the verdict's calibration) runs without TensorFlow."""
    code = (
        "import sys; from pathlib import Path; import numpy as np\n"
        "from ui import private_mode; from core.serving.modelio import read_metadata; from core.serving.predict import calibrate\n"
        "d = Path('models/default'); meta = read_metadata(d)\n"
        "private_mode.component_args(d, meta); assert private_mode.unavailable_reason(d) is None\n"
        "calibrate(np.full(7, 1 / 7), 1.4)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def _fragments(data: bytes) -> list:
    """Byte and base64 fragments of a file from across its length: any copy of the file sent would contain them."""
    chunks = [data[i:i + 48] for i in range(0, len(data) - 48, max(len(data) // 12, 48))]
    encoded = []
    for shift in range(3):  # base64 of a slice depends on its alignment: try all three
        text = base64.b64encode(data[shift:]).decode()
        encoded += [text[i:i + 48].encode() for i in range(0, len(text) - 48, max(len(text) // 12, 48))]
    return chunks + encoded


def _browser_ready() -> str | None:
    if not Path(CHROMIUM).exists():
        return "Chromium not installed (Debian package chromium)"
    if not private_mode.RUNTIME.is_dir():
        return "private mode's browser runtime is not installed (npm was not available to .ci/setup)"
    if private_mode.unavailable_reason(default_model_dir()) is not None:
        return "the default model has no private-mode export"
    return None


@pytest.mark.timeout(900)
@pytest.mark.skipif(_browser_ready() is not None, reason=str(_browser_ready()))
def test_the_browser_classifies_refuses_a_photo_and_sends_no_image(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    from PIL import Image
    from private_page import Traffic, classify, open_private_mode, verdict_shown
    from sklearn.datasets import load_sample_image

    from core.dataset.images import decode_upload
    from core.serving.predict import Predictor

    photo = tmp_path / "holiday_photo.jpg"  # flower.jpg: china.jpg was among the gate's fitting negatives
    Image.fromarray(load_sample_image("flower.jpg")).save(photo, quality=90)
    env = {**os.environ, "HAM_READ_ONLY": "1", "HAM_RUNS_DIR": str(tmp_path / "runs"),
           "HAM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(PROJECT)}
    with streamlit_server(env) as url, playwright.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1024, "height": 900})
        page.set_default_timeout(WAIT_MS)
        traffic = Traffic(page)
        frame = open_private_mode(page, url)
        assert frame.get_attribute("#status", "data-state") == "ready", frame.inner_text("#status")
        example = classify(frame, EXAMPLE)
        page.get_by_text("Malignant (mel + bcc + akiec)").first.wait_for()
        page.screenshot(path=str(tmp_path / "private.png"), full_page=True)
        refused = classify(frame, photo)
        page.get_by_text("This does not look like a dermatoscopic image").first.wait_for()
        assert not verdict_shown(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()

    server = Predictor(default_model_dir())
    expected = server.predict(decode_upload(EXAMPLE.read_bytes()))
    assert int(np.argmax(example["probabilities"])) == int(np.argmax(expected.raw))
    assert np.abs(np.asarray(example["probabilities"]) - expected.raw).max() < 1e-3
    assert example["gate"] <= 1.0 < refused["gate"]

    sent = traffic.sent()
    assert traffic.frames, "no WebSocket frame was recorded"
    outside = [u for u in traffic.urls if not (u.startswith(url) or u.startswith(("data:", "blob:")))]
    assert not outside, f"requests left the app: {outside[:5]}"
    for name, data in (("example", EXAMPLE.read_bytes()), ("photo", photo.read_bytes())):
        for fragment in _fragments(data):
            assert not any(fragment in blob for blob in sent), f"bytes of the {name} image were sent"
    assert not any(b"ISIC_0024481" in blob or b"holiday_photo" in blob for blob in sent), "a file name was sent"
    assert max(len(blob) for blob in traffic.frames + traffic.bodies) < 8_000, "a large payload was sent"


@pytest.mark.timeout(600)
def test_the_exported_graph_gives_the_servers_probabilities_and_gate_score(tmp_path):
    """The three outputs of the private export, run by LiteRT, against the server's Predictor on a tiny model."""
    pytest.importorskip("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter
    from tiny_models import save_ood_model_folder, skin_like

    from core.serving import export
    from core.serving.predict import Predictor

    folder = save_ood_model_folder(tmp_path / "model")
    exported = private_export.build(folder)
    interpreter = Interpreter(model_content=exported.content)
    interpreter.allocate_tensors()
    server = Predictor(folder)
    rng = np.random.default_rng(1)
    skin = np.clip(np.rint(skin_like(rng, 3)), 0, 255).astype(np.uint8)  # pixels, as a decoded upload has
    images = np.concatenate([skin, rng.integers(0, 256, (2, *server.input_size, 3), dtype=np.uint8)])
    for rgb in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], rgb[None].astype(np.float32))
        interpreter.invoke()
        outputs = {int(np.prod(o["shape"])): interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()}
        expected = server.predict(rgb)
        assert np.abs(outputs[len(CLASSES)][0] - expected.raw).max() < 1e-5
        assert max(outputs[2][0]) == pytest.approx(expected.ood.score, rel=1e-4, abs=1e-5)
    assert exported.card["source_model"]["model_sha256"] == export.model_sha256(folder)


def test_a_folder_without_a_statistics_gate_is_refused(tmp_path):
    import json

    from core.serving import export
    meta = json.loads((default_model_dir() / "model.json").read_text())
    meta["ood"] = {"method": "max_softmax", "threshold": 0.5}
    (tmp_path / "model.keras").write_bytes(b"")
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(export.ExportError, match="feature_statistics"):
        private_export.build(tmp_path)
