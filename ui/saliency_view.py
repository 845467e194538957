"""The "Where did the model look?" section of the Predict page: two methods side by side.

Maps are computed by :mod:`core.saliency` (cached per model, image content,
method and class) and drawn by :mod:`core.saliency.draw` at the image's own
aspect: iso-contours over the image by default, or a heat-map blend, with the
lesion outline (the dataset's mask, else the segmenter's) on top and a colour-scale legend. The map
offered for download is the one ``python -m core.explain`` writes.
"""

import io
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core import faithfulness, saliency
from core.images import to_model_input
from core.labels import CLASS_NAMES
from core.saliency import draw
from ui import segment_view

KEY_METHOD = "predict_method"
KEY_METHOD_B = "predict_method_b"
KEY_TARGET = "predict_target"
KEY_STYLE = "predict_style"
KEY_CMAP = "predict_cmap"
KEY_OPACITY = "predict_opacity"
KEY_CURVES = "predict_curves_on"

COMPARE_METHOD = "Grad-CAM, stride 32"
CURVE_STEPS = 20
DISPLAY_WIDTH = 480  # images are drawn at least this wide, so contour lines stay thin
STYLE_LABELS = {"contours": "Iso-contours", "blend": "Heat-map blend"}


@st.cache_resource(max_entries=2, show_spinner="Preparing saliency maps…")
def _explainer(path: str, mtime: int) -> saliency.Explainer:
    """The explainer of a folder's model, the two methods the page opens with traced once."""
    from ui.predict import load_predictor

    predictor = load_predictor(Path(path))
    explainer = saliency.Explainer.of(predictor.folder, predictor.model)
    blank = np.zeros((*predictor.input_size, 3), np.float32)
    for method in (saliency.DEFAULT_METHOD, COMPARE_METHOD):
        saliency.explain(explainer, blank, method, 0)
    return explainer


def warm(model_dir: Path, mtime: int) -> None:
    """Fill the explainer cache of a model folder (the warm start calls this off the page)."""
    _explainer(str(Path(model_dir).resolve()), mtime)


@st.cache_data(max_entries=32, show_spinner="Computing the saliency map…")
def _model_map(path: str, mtime: int, digest: str, method: str, target: int, _x: np.ndarray) -> np.ndarray:
    """One map at the model input's size, cached by model, image content, method and class (``_x`` is not hashed)."""
    return saliency.explain(_explainer(path, mtime), _x, method, target)


@st.cache_data(max_entries=32, show_spinner="Computing deletion and insertion curves…")
def _curves(path: str, mtime: int, digest: str, method: str, target: int, _x, _map) -> tuple:
    from ui.predict import load_predictor

    predict_fn = load_predictor(Path(path)).predict_fn
    return (faithfulness.deletion_curve(predict_fn, _x, _map, target, steps=CURVE_STEPS),
            faithfulness.insertion_curve(predict_fn, _x, _map, target, steps=CURVE_STEPS))


def _class_label(code: str) -> str:
    return f"{code} · {CLASS_NAMES.get(code, code)}"


def controls(predictor, prediction) -> dict:
    """Two methods, the class to explain, display style, colour map, opacity."""
    names = list(saliency.METHODS)
    top = st.columns([3, 3, 3])
    method_a = top[0].selectbox("Left map", names, index=names.index(saliency.DEFAULT_METHOD), key=KEY_METHOD,
                                help=_method_help())
    method_b = top[1].selectbox("Right map", names, index=names.index(COMPARE_METHOD), key=KEY_METHOD_B,
                                help="A second method to compare with.")
    classes = list(predictor.classes)
    target = top[2].selectbox("Explain class", classes, index=classes.index(prediction.predicted),
                              format_func=_class_label, key=f"{KEY_TARGET}_{prediction.predicted}")
    low = st.columns([3, 3, 3])
    style = low[0].radio("Display", draw.STYLES, format_func=STYLE_LABELS.get, horizontal=True, key=KEY_STYLE)
    cmap = low[1].radio("Colours", draw.CMAPS, horizontal=True, key=KEY_CMAP,
                        help="viridis and inferno are perceptually uniform; jet exaggerates some steps.")
    opacity = low[2].slider("Blend opacity", 0.0, 1.0, 0.45, 0.05, key=KEY_OPACITY, disabled=style != "blend")
    return {"methods": (method_a, method_b), "target": classes.index(target), "style": style, "cmap": cmap,
            "opacity": opacity}


def _method_help() -> str:
    return "  \n".join(f"**{m.name}**: {m.about}" for m in saliency.METHODS.values())


def show(model_dir: Path, predictor, image, prediction, mtime: int, predicted_mask=None) -> None:
    """Original and two maps side by side, legend, mask scores, downloads, faithfulness curves.

    ``predicted_mask`` (the segmenter's lesion mask, when there is one) adds each map's mass inside it.
    """
    options = controls(predictor, prediction)
    x = to_model_input(image.rgb, predictor.input_size)
    base = (str(Path(model_dir).resolve()), mtime, image.digest)
    maps = [_model_map(*base, method, options["target"], _x=x) for method in options["methods"]]
    border, outlined = lesion_border(image, predicted_mask)
    cols = st.columns(3)
    original = draw.upscale(image.rgb, DISPLAY_WIDTH)
    if border is not None:
        original = draw.draw_outline(original, border, width=draw.line_width(original))
    cols[0].image(original, caption="Original" + outlined, width="stretch")
    target_code = predictor.classes[options["target"]]
    for col, method, model_map in zip(cols[1:], options["methods"], maps):
        picture = draw.render(image.rgb, model_map, options["style"], options["cmap"], options["opacity"],
                              border, min_width=DISPLAY_WIDTH)
        col.image(picture, caption=f"{method} · {target_code}", width="stretch")
        _scores(col, model_map, image.mask)
        with col:
            segment_view.saliency_energy_caption(model_map, predicted_mask, method)
    _legend(options)
    _downloads(image, options, maps[0], border)
    faithfulness_section(base, options, x, maps[0])


def lesion_border(image, predicted_mask=None) -> tuple:
    """``(mask, caption)``: the lesion border to draw over the maps, in white, and what it is.

    The dataset's mask when the image has one; else the segmenter's, unless the
    segmentation section's outline is switched off or it found no lesion.
    """
    if image.mask is not None:
        return image.mask, " · white line: lesion border (dataset mask)"
    shown = st.session_state.get(segment_view.KEY_OUTLINE, True)
    if predicted_mask is not None and predicted_mask.any() and shown:
        return predicted_mask, " · white line: predicted lesion border"
    return None, ""


def _scores(col, model_map: np.ndarray, mask) -> None:
    if model_map.max() == 0:
        col.info("The map is empty: nothing in this layer raises the class's score.")
    if mask is None:
        return
    hit = saliency.pointing_game(model_map, mask)
    share = saliency.energy_inside(model_map, mask)
    col.caption(f"Against the lesion mask: peak {'inside' if hit else 'outside'} the lesion; "
                f"{share:.0%} of the map's mass inside it.")


def _legend(options: dict) -> None:
    left, right = st.columns([2, 3])
    left.image(draw.legend(options["cmap"]), width="stretch")
    what = ("Each line encloses the pixels whose value is at least that share of the map's maximum; "
            "the innermost lines mark what raised the class's score most."
            if options["style"] == "contours" else "Colour shows each pixel's share of the map's maximum.")
    right.caption(f"Colour scale: 0 = nothing, 1 = the map's maximum. {what}")


def _downloads(image, options: dict, model_map: np.ndarray, border=None) -> None:
    """The left map as float32 ``.npy`` at the image's own size (as ``core.explain`` writes it) and as PNG."""
    stem = Path(image.name).stem
    full = draw.resize_map(model_map, image.rgb.shape[:2])
    buffer = io.BytesIO()
    np.save(buffer, full)
    picture = draw.render(image.rgb, model_map, options["style"], options["cmap"], options["opacity"], border)
    left, right = st.columns(2)
    left.download_button("Download the left map (.npy, float32)", buffer.getvalue(), file_name=f"{stem}.npy",
                         mime="application/octet-stream", on_click="ignore")
    right.download_button("Download the left picture (PNG)", _png(picture), file_name=f"{stem}_saliency.png",
                          mime="image/png", on_click="ignore")


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def curves_figure(deletion, insertion) -> go.Figure:
    """Deletion and insertion curves with their AUCs in the legend."""
    fig = go.Figure()
    for curve, hint, colour in ((deletion, "lower is better", "#d62728"), (insertion, "higher is better", "#2ca02c")):
        fig.add_trace(go.Scatter(x=curve.fractions, y=curve.scores, mode="lines+markers", line={"color": colour},
                                 name=f"{curve.kind} · AUC {curve.auc:.3f} ({hint})"))
    fig.update_layout(xaxis={"title": "share of pixels removed / inserted, most salient first", "tickformat": ".0%"},
                      yaxis={"title": "class probability (uncalibrated)", "range": [0, 1.02]}, height=320,
                      margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": 1.12})
    return fig


def faithfulness_section(base: tuple, options: dict, x: np.ndarray, model_map: np.ndarray) -> None:
    """The faithfulness check of the left map: a reading guide, and its curves on request.

    The curves take 42 forward passes (most of a prediction's time), so they are
    drawn when asked; the toggle keeps its state for the session.
    """
    method = options["methods"][0]
    st.markdown(f"**Is the left map ({method}) faithful?** Deletion blurs the most salient pixels first; insertion "
                "restores them on a blurred copy. A faithful map makes the probability drop fast / rise fast.")
    if st.toggle("Draw the deletion and insertion curves (42 more forward passes, about a second)", key=KEY_CURVES):
        deletion, insertion = _curves(*base, method, options["target"], _x=x, _map=model_map)
        st.plotly_chart(curves_figure(deletion, insertion), width="stretch", key="predict_curves")
