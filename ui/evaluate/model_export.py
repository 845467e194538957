"""Evaluate page, Export tab: the model as a TFLite file for private, on-device inference.

A ready-made export shipped in the model folder (``export/model_<quantisation>.tflite``)
is offered as it is, with the parity figures saved in its card. Otherwise the file
is converted on request (TensorFlow is imported then), cached per model file and
quantisation, and its parity is measured on a sample of the model's own
validation predictions when the dataset is present.
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.serving import export, modelio

from core.contracts import paths
from core.serving.calibration import format_temperature
from core.evaluation.evaluate import Evaluable
from ui.evaluate.common import SPLIT_LABELS, mtime
from ui.guard import heavy_job

KEY_QUANTIZE = "evaluate_export_quantize"
KEY_BUILT = "evaluate_export_built"  # list of "path|quantisation" the user asked to convert
CHOICES = {
    "none": "float32 (exact)",
    "float16": "float16 (half the size)",
    "dynamic": "int8 weights (dynamic range)",
    "int8": "full int8 (calibrated on training images)",
}


@st.cache_data(max_entries=4, show_spinner=False)
def _build(model_dir: str, model_mtime: int, quantize: str) -> export.Export:
    """``core.serving.export.build`` behind the cache; ``model_mtime`` is only a key.

    int8's kernel rounding, the long part, shows a progress bar layer by layer; the bar is
    made and emptied here, so that a cached result replays nothing.
    """
    if quantize != "int8":
        return export.build(Path(model_dir), quantize=quantize)
    bar = st.progress(0.0, text="Rounding the int8 kernels…")

    def progress(done: int, total: int, layer: str) -> None:
        bar.progress(done / total, text=f"Rounding the int8 kernels: layer {done} of {total} ({layer})")

    try:
        return export.build(Path(model_dir), quantize=quantize, progress=progress)
    finally:
        bar.empty()


@st.cache_data(max_entries=8, show_spinner=False)
def _saved(model_dir: str, model_mtime: int, saved_mtime: int, quantize: str) -> export.Export | None:
    """``core.serving.export.load_saved`` behind the cache; the two mtimes are only keys."""
    return export.load_saved(Path(model_dir), quantize)


def tflite_panel(model: Evaluable) -> None:
    """Pick a quantisation, get the ``.tflite`` file and its JSON card, see how closely it agrees."""
    st.subheader("On-device model (TFLite)")
    st.caption("For apps that must not send an image anywhere: the model runs on the phone or laptop with "
               "LiteRT (TensorFlow Lite). The preprocessing is inside the file; feed RGB pixels 0..255.")
    model_file = model.path / modelio.MODEL_FILE
    if not model_file.is_file():
        st.info(f"{model.name} has predictions but no {modelio.MODEL_FILE}: there is nothing to export.")
        return
    quantize = st.radio("Quantisation", list(CHOICES), format_func=CHOICES.get, horizontal=True, key=KEY_QUANTIZE)
    saved = export.saved_path(model.path, quantize)
    saved_mtime = mtime(saved) if saved.is_file() else 0
    ready = _saved(str(model.path), mtime(model_file), saved_mtime, quantize)
    if ready is not None:
        st.caption(f"Ready-made: `{saved.relative_to(model.path)}` ships with this model "
                   f"(converted {ready.card.get('created', 'at an unknown time')}).")
    result = ready or _requested(model, quantize)
    if result is not None:
        _show(model, quantize, result)


def _requested(model: Evaluable, quantize: str) -> export.Export | None:
    """The converted file once the user asked for it (kept across reruns), else a button (none in read-only mode)."""
    if paths.read_only():  # a conversion holds a core for minutes and hundreds of MB: not for any visitor
        st.info("This read-only demo converts no model: only the ready-made exports shipped with a model are "
                "offered here. Where the app is not read-only, or with `lesionlab export`, any quantisation "
                "can be converted.")
        return None
    token = f"{model.path}|{quantize}"
    if token not in st.session_state.setdefault(KEY_BUILT, []):
        st.button("Convert to TFLite", key="evaluate_export_convert", on_click=_request, args=(token,))
        note = (f" int8 first rounds each layer's kernel on {export.REPRESENTATIVE_IMAGES} training images so as to "
                "keep its output, which takes about a minute more.") if quantize == "int8" else ""
        st.caption(f"Conversion imports TensorFlow and takes about a minute on a 2-core CPU.{note}")
        return None
    with heavy_job("The conversion") as allowed:
        if not allowed:
            st.session_state[KEY_BUILT].remove(token)  # offer the button again
            return None
        with st.spinner(f"Converting {model.name} ({CHOICES[quantize]}) and measuring parity…"):
            try:
                return _build(str(model.path), mtime(model.path / modelio.MODEL_FILE), quantize)
            except export.ExportError as err:
                st.session_state[KEY_BUILT].remove(token)  # offer the button again
                st.error(f"Cannot export: {err}")
                return None


def _request(token: str) -> None:
    """Remember that the user asked for this conversion (a button is true for one run only)."""
    st.session_state.setdefault(KEY_BUILT, []).append(token)


def _show(model: Evaluable, quantize: str, result: export.Export) -> None:
    """Parity figures, feeding instructions and the two downloads."""
    card = result.card
    st.dataframe(parity_table(card, (model.path / modelio.MODEL_FILE).stat().st_size), hide_index=True)
    figures = card.get("parity") or {}
    if "n" not in figures:
        st.info(f"Parity not measured: {figures.get('not_measured', 'no figures saved with this file')}.")
    else:
        st.caption(f"Parity against {figures.get('reference', 'the Keras model')}: "
                   f"{SPLIT_LABELS.get(figures.get('split'), figures.get('split'))} split, n = {figures['n']:,}.")
    calibration = card.get("calibration_images") or {}
    if calibration:
        rounding = (calibration.get("rounding") or {}).get("what", "the converter's own rounding")
        split = SPLIT_LABELS.get(calibration.get("split"), calibration.get("split", "?"))
        st.caption(f"Calibrated on {calibration.get('n', '?')} images of the model's {split} "
                   f"split; {rounding}.")
    temperature = card.get("temperature")
    calibrate = "its output is the model's own softmax (no temperature)"
    if temperature:
        calibrate = (f"calibrate its output with temperature T = {format_temperature(temperature)}: "
                     "p = softmax(log(output) / T)")
    st.caption(f"How to feed it: {card['how_to_feed']} Then {calibrate}. The JSON card says all this for an app.")
    stem = f"{model.path.name}_{quantize}"
    left, right = st.columns(2)
    left.download_button("Download the model (.tflite)", result.content, file_name=f"{stem}.tflite",
                         mime="application/octet-stream", key="evaluate_dl_tflite", on_click="ignore")
    right.download_button("Download its card (.json)", result.card_json, file_name=f"{stem}.json",
                          mime="application/json", key="evaluate_dl_tflite_card", on_click="ignore")


def parity_table(card: dict, keras_bytes: int) -> pd.DataFrame:
    """The card's figures as a two-column table (``figure``, ``value``): quantisation, input, size
    against the Keras file and the parity figures. Upright, so that it fits the page."""
    figures = card.get("parity") or {}
    measured = "n" in figures
    rows = {
        "quantisation": CHOICES.get(card["quantization"], card["quantization"]),
        "input (h × w)": f"{card['input']['height']} × {card['input']['width']}",
        "size": f"{card['bytes'] / 1e6:.2f} MB ({card['bytes'] / keras_bytes:.0%} of model.keras)",
        "split": SPLIT_LABELS.get(figures.get("split"), figures.get("split", "–")),
        "n": f"{figures['n']:,}" if measured else "–",
        "top-1 agreement with Keras": f"{figures['top1_agreement']:.1%}" if measured else "not measured",
        "largest probability difference": f"{figures['max_abs_diff']:.2g}" if measured else "not measured",
    }
    return pd.DataFrame({"figure": list(rows), "value": list(rows.values())})
