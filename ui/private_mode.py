"""Predict's private mode: the shipped model and its gate run in the visitor's browser.

The front-end (``ui/private_component``) decodes, resizes and classifies the picked
image with LiteRT.js (WebAssembly) and hands back numbers only: the model's seven raw
probabilities and the gate's score. This module serves the component and its model
file, checks those numbers, and draws the verdict from them. It never imports
TensorFlow: a server that has not loaded the Keras model serves private mode alone.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import streamlit.components.v1 as components

from core.serving import export, metadata_branch, private_export
from core.serving.calibration import temperature_status
from core.dataset.images import DISPLAY_MAX_SIDE, INTERACTIVE_MAX_PIXELS
from core.contracts.labels import CLASS_NAMES, DESCRIPTIONS, MALIGNANT
from core.serving.modelio import MODEL_FILE, input_size, read_metadata
from core.serving.predict import calibrate

FRONTEND = Path(__file__).resolve().parent / "private_component"
RUNTIME = FRONTEND / "node_modules" / "@litertjs" / "core" / "wasm"
SERVER, PRIVATE = "On the server", "Private (on this device)"
MODES = (SERVER, PRIVATE)
KEY_MODE = "predict_where"
KEY_COMPONENT = "predict_private"
KEY_SHOW_ANYWAY = "predict_private_show_anyway"

WHAT_STAYS = (
    "**Stays on this device:** the picture, its pixels, its file name and the activation map. The browser "
    "decodes and resizes the image and runs the model and the dermatoscopy check itself "
    "(LiteRT.js, WebAssembly), with files this app served when the mode opened.\n\n"
    "**Goes to the server:** seven probabilities and one check score (numbers only), so that this page can "
    "write the verdict. Nothing else is sent: no image, no thumbnail, no name."
)


def unavailable_reason(model_dir: Path) -> str | None:
    """Why private mode cannot run for ``model_dir`` on this installation, or None when it can."""
    if not RUNTIME.is_dir():
        return ("Private mode needs its browser runtime, installed by the set-up (`bash .ci/setup`, which runs "
                "`npm ci` in ui/private_component); npm was not available when this installation was set up.")
    make = f"make it with `lesionlab private-export --model {model_dir}`."
    if not _export_matches(str(model_dir), (Path(model_dir) / MODEL_FILE).stat().st_mtime_ns):
        return f"This model has no private-mode export made from its current model.keras; {make}"
    return None


@st.cache_data(max_entries=4, show_spinner=False)
def _export_matches(model_dir: str, mtime: int) -> bool:
    """True when the folder's private export and its card exist and were made from its ``model.keras``.

    ``mtime`` (of model.keras) is only a cache key.
    """
    path = private_export.private_path(Path(model_dir))
    try:
        card = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    made_from = (card.get("source_model") or {}).get("model_sha256")
    return path.is_file() and made_from == export.model_sha256(Path(model_dir))


def _declare(model_dir: Path):
    """The component, and the URL (relative to its frame) of the model file, served by this app too."""
    component = components.declare_component("private_predict", path=str(FRONTEND))
    components.declare_component("private_model", path=str(private_export.private_path(model_dir).parent))
    return component, f"../{__name__}.private_model/{private_export.private_path(model_dir).name}"


def component_args(model_dir: Path, meta: dict) -> dict:
    """What the browser needs to feed and read the model: sizes, limits, gate threshold, map shape."""
    height, width = input_size(meta)
    return {"height": height, "width": width, "classes": len(meta["classes"]),
            "threshold": float(meta["ood"]["threshold"]), "cam_shape": [math.ceil(height / 32), math.ceil(width / 32)],
            "max_side": DISPLAY_MAX_SIDE, "max_pixels": INTERACTIVE_MAX_PIXELS}


def read_result(value, classes) -> tuple | None:
    """``(raw probabilities, gate score)`` from what the browser returned, or None when it is not that.

    Anything but a dict of exactly the expected numbers is refused, so the server never keeps
    anything else a modified page might send.
    """
    if not isinstance(value, dict) or set(value) != {"probabilities", "gate", "n"}:
        return None
    probs, gate = value["probabilities"], value["gate"]
    if not isinstance(probs, list) or len(probs) != len(classes) or not isinstance(gate, (int, float)):
        return None
    raw = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(raw)) or raw.min() < 0 or abs(raw.sum() - 1) > 1e-3 or not math.isfinite(gate):
        return None
    return raw, float(gate)


def show(model_dir: Path) -> None:
    """The private mode: what stays on the device, the component, then the verdict from its numbers."""
    st.info(WHAT_STAYS, icon=":material/lock:")
    reason = unavailable_reason(model_dir)
    if reason:
        st.warning(reason, icon=":material/block:")
        return
    meta = read_metadata(model_dir)
    component, model_url = _declare(model_dir)
    value = component(model_url=model_url, **component_args(model_dir, meta), key=KEY_COMPONENT, default=None)
    st.caption("Saliency maps other than this activation map (Grad-CAM and the other methods) and the lesion "
               "outline need the image on the server: use the other mode for them."
               + (" This mode classifies from the image alone: it asks for no age, sex or body site, so none of "
                  "them reaches the server either." if metadata_branch.path_in(model_dir).is_file() else ""))
    result = read_result(value, meta["classes"])
    if value is not None and result is None:
        st.error("The browser returned something other than the expected numbers; nothing was shown.")
    if result is not None:
        show_verdict(model_dir, meta, *result)


def show_verdict(model_dir: Path, meta: dict, raw: np.ndarray, gate: float) -> None:
    """The gate, then the class, malignancy and all (calibrated when the model has a temperature) probabilities."""
    threshold = float(meta["ood"]["threshold"])
    check = (f"Dermatoscopy check (computed in your browser): {gate:.2f} × the threshold; 1 or more means "
             "unlike the HAM10000 images the model learnt from.")
    if gate > threshold:
        st.error("**This does not look like a dermatoscopic image.** The model has only ever seen dermatoscope "
                 "photographs of pigmented skin lesions; no diagnosis or probabilities are shown for it.",
                 icon=":material/block:")
        st.caption(check)
        if not st.toggle("Show the prediction anyway", key=KEY_SHOW_ANYWAY):
            return
    status = temperature_status(meta, model_dir)
    probs = calibrate(raw, status["applied"])
    classes = list(meta["classes"])
    top = classes[int(np.argmax(probs))]
    st.subheader(f"{top} · {CLASS_NAMES.get(top, top)}")
    st.write(DESCRIPTIONS.get(top, ""))
    malignant = sum(p for c, p in zip(classes, probs) if c in MALIGNANT)
    st.metric("Malignant (mel + bcc + akiec)", f"{malignant:.1%}")
    st.dataframe(pd.DataFrame({"class": [f"{c} · {CLASS_NAMES.get(c, c)}" for c in classes],
                               "probability": probs}).sort_values("probability", ascending=False),
                 hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                     "probability", format="percent", min_value=0.0, max_value=1.0)})
    st.caption(status["text"] + (" " + check if gate <= threshold else ""))
