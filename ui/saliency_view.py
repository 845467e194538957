"""The "Where did the model look?" section of the Predict page: the original beside two methods' maps.

Maps are computed by :mod:`core.explaining.saliency` (cached per model, image content,
method and class) and drawn by :mod:`core.explaining.saliency.draw` at the image's own
aspect: a heat-map blend over the image by default, or iso-contours, with the
lesion outline (the dataset's mask, else the segmenter's) on top and a colour-scale
legend that matches what is drawn. Two images per row, so a map is half the page wide
(about 330 px in a 1,024-px window). Methods are named in plain words, their
technical names in the help. Each map downloads as the array ``lesionlab explain``
writes and as the picture shown.
"""

import io
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core.explaining import faithfulness, saliency
from core.dataset.images import to_model_input
from core.contracts.labels import CLASS_NAMES
from core.explaining.saliency import draw
from ui import segment_view
from ui.guard import guarded
from ui.loaders import load_predictor, model_mtime

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
STYLE_LABELS = {"contours": "Contour lines", "blend": "Heat map"}
# What each method shows, in the words of a reader who does not know the methods (keys: core.explaining.saliency.METHODS).
PLAIN_NAMES = {
    saliency.DEFAULT_METHOD: "Where the model looked (recommended)",
    "LayerCAM, stride 8": "Fine detail, from early layers",
    "LayerCAM, stride 16": "Medium detail, from middle layers",
    "LayerCAM, stride 32": "Coarse regions, from the last layers",
    "LayerCAM, fused strides 8+16+32": "Fine, medium and coarse combined",
    saliency.AGREEMENT: "Where fine and medium detail agree",
    "Grad-CAM, stride 8": "Fine detail, classic weighting",
    "Grad-CAM, stride 16": "Medium detail, classic weighting",
    COMPARE_METHOD: "Coarse regions, the classic map",
    "Integrated gradients": "Single pixels, from a blurred copy",
    "Grad-CAM++ (tf-keras-vis)": "Coarse regions, second-order weighting",
    f"Score-CAM (tf-keras-vis, N={saliency.cam.SCORECAM_MAX_N})": "Coarse regions, by masking the image (slow)",
    "SmoothGrad (tf-keras-vis)": "Single pixels, averaged over noisy copies",
}


@st.cache_resource(max_entries=2, show_spinner="Preparing saliency maps…")
def _explainer(path: str, mtime: int) -> saliency.Explainer:
    """The explainer of a folder's model, the two methods the page opens with traced once."""
    predictor = load_predictor(Path(path))
    explainer = saliency.Explainer.of(predictor.folder, predictor.model)
    blank = np.zeros((*predictor.input_size, 3), np.float32)
    for method in (saliency.DEFAULT_METHOD, COMPARE_METHOD):
        saliency.explain(explainer, blank, method, class_index=0)
    return explainer


def warm(model_dir: Path, mtime: int) -> None:
    """Fill the explainer cache of a model folder (the warm start calls this off the page)."""
    _explainer(str(Path(model_dir).resolve()), mtime)


@st.cache_data(max_entries=32, show_spinner="Computing the saliency map…")
def _model_map(path: str, mtime: int, digest: str, method: str, target: int, _x: np.ndarray) -> np.ndarray:
    """One map at the model input's size, cached by model, image content, method and class (``_x`` is not hashed)."""
    return saliency.explain(_explainer(path, mtime), _x, method, class_index=target)


@st.cache_data(max_entries=32, show_spinner="Computing deletion and insertion curves…")
def _curves(path: str, mtime: int, digest: str, method: str, target: int, _x, _map) -> tuple:
    predict_fn = load_predictor(Path(path)).predict_fn
    return (faithfulness.deletion_curve(predict_fn, _x, _map, class_index=target, steps=CURVE_STEPS),
            faithfulness.insertion_curve(predict_fn, _x, _map, class_index=target, steps=CURVE_STEPS))


def _class_label(code: str) -> str:
    return f"{code} · {CLASS_NAMES.get(code, code)}"


def plain_name(method: str) -> str:
    """A method's name for the page (its technical name when it has none)."""
    return PLAIN_NAMES.get(method, method)


def controls(predictor, prediction) -> dict:
    """Two methods, the class to explain, display style, colour map, opacity.

    The three choices take a row each: method and class names run to 50 characters, which half a
    1,024-px page cuts off.
    """
    names = list(saliency.METHODS)
    method_a = st.selectbox("Map", names, index=names.index(saliency.DEFAULT_METHOD), key=KEY_METHOD,
                            format_func=plain_name, help=_method_help())
    method_b = st.selectbox("Compare with", names, index=names.index(COMPARE_METHOD), key=KEY_METHOD_B,
                            format_func=plain_name, help="A second method, drawn below the first.  \n" + _method_help())
    classes = list(predictor.classes)
    target = st.selectbox("Explain class", classes, index=classes.index(prediction.predicted),
                          format_func=_class_label, key=f"{KEY_TARGET}_{prediction.predicted}")
    low = st.columns(3)
    style = low[0].radio("Display", draw.STYLES, index=draw.STYLES.index(draw.DEFAULT_STYLE),
                         format_func=STYLE_LABELS.get, horizontal=True, key=KEY_STYLE)
    cmap = low[1].radio("Colours", draw.CMAPS, horizontal=True, key=KEY_CMAP,
                        help="viridis and inferno are perceptually uniform; jet exaggerates some steps.")
    opacity = low[2].slider("Heat-map opacity", 0.0, 1.0, 0.45, 0.05, key=KEY_OPACITY, disabled=style != "blend")
    return {"methods": (method_a, method_b), "target": classes.index(target), "style": style, "cmap": cmap,
            "opacity": opacity}


def _method_help() -> str:
    return "  \n".join(f"**{plain_name(m.name)}** ({m.name}): {m.about}" for m in saliency.METHODS.values())


def show(model_dir: Path, predictor, image, prediction, mtime: int, predicted_mask=None) -> None:
    """Original and two maps side by side, legend, mask scores, downloads, faithfulness curves.

    ``predicted_mask`` (the segmenter's lesion mask, when there is one) adds each map's mass inside it.
    """
    options = controls(predictor, prediction)
    x = to_model_input(image.rgb, predictor.input_size)
    base = (str(Path(model_dir).resolve()), mtime, image.digest)
    maps = [_model_map(*base, method, options["target"], _x=x) for method in options["methods"]]
    border, outlined = lesion_border(image, predicted_mask)
    top, bottom = st.columns(2), st.columns(2)
    original = draw.upscale(image.rgb, DISPLAY_WIDTH)
    if border is not None:
        original = draw.draw_outline(original, border, width=draw.line_width(original))
    top[0].image(original, caption="Original" + outlined, width="stretch")
    with bottom[0]:
        _legend(options)
    target_code = predictor.classes[options["target"]]
    for k, (col, method, model_map) in enumerate(zip((top[1], bottom[1]), options["methods"], maps)):
        picture = draw.render(image.rgb, model_map, style=options["style"], cmap=options["cmap"],
                              opacity=options["opacity"], mask=border, min_width=DISPLAY_WIDTH)
        col.image(picture, caption=f"{plain_name(method)} · explaining {target_code}", width="stretch")
        with col:
            _scores(model_map, image.mask)
            segment_view.saliency_energy_caption(model_map, predicted_mask, plain_name(method))
            _downloads(image, method, model_map, picture, key=f"predict_map_{k}")
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


def _scores(model_map: np.ndarray, mask) -> None:
    if model_map.max() == 0:
        st.info("The map is empty: nothing in this layer raises the class's score.")
    if mask is None:
        return
    hit = saliency.pointing_game(model_map, mask)
    share = saliency.energy_inside(model_map, mask)
    st.caption(f"Against the lesion mask: peak {'inside' if hit else 'outside'} the lesion; "
               f"{share:.0%} of the map's mass inside it.")


def _legend(options: dict) -> None:
    """The colour bar of what is drawn: steps for contour lines, a continuous scale for the heat map."""
    lines = options["style"] == "contours"
    st.image(draw.legend(options["cmap"], width=640, height=28, discrete=lines), width="stretch")
    if lines:
        levels = ", ".join(f"{level:g}" for level in draw.CONTOUR_LEVELS)
        what = (f"Lines at {levels} of the map's maximum, each in its colour on the bar; each line encloses the "
                "pixels at least that strong, so the innermost lines mark what raised the class's score most. "
                "Nothing is drawn below the lowest level (grey).")
    else:
        what = "Each pixel is tinted by its share of the map's maximum: 0 = nothing, 1 = the strongest evidence."
    st.caption(f"**Colour scale.** {what} Methods: the help (?) of **Map** gives each one's technical name.")


def _downloads(image, method: str, model_map: np.ndarray, picture: np.ndarray, key: str) -> None:
    """A map as float32 ``.npy`` at the image's own size (as ``core.explaining.explain`` writes it), and its picture as PNG."""
    stem = f"{Path(image.name).stem}_{method_slug(method)}"
    buffer = io.BytesIO()
    np.save(buffer, draw.resize_map(model_map, image.rgb.shape[:2]))
    st.download_button("Download the map (.npy, float32)", buffer.getvalue(), file_name=f"{stem}.npy",
                       mime="application/octet-stream", on_click="ignore", icon=":material/download:",
                       key=f"{key}_npy")
    st.download_button("Download the picture (PNG)", _png(picture), file_name=f"{stem}.png", mime="image/png",
                       on_click="ignore", icon=":material/download:", key=f"{key}_png")


def method_slug(method: str) -> str:
    """A method's name as a file-name part: ``LayerCAM, stride 16`` → ``layercam-stride-16``."""
    return "-".join("".join(c if c.isalnum() else " " for c in method.lower()).split())


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
    st.markdown(f"**Is the first map ({plain_name(method)}) faithful?** Deletion blurs the most salient pixels first; insertion "
                "restores them on a blurred copy. A faithful map makes the probability drop fast / rise fast.")
    if st.toggle("Draw the deletion and insertion curves (42 more forward passes, about a second)", key=KEY_CURVES):
        deletion, insertion = _curves(*base, method, options["target"], _x=x, _map=model_map)
        st.plotly_chart(curves_figure(deletion, insertion), width="stretch", key="predict_curves")


@guarded("The saliency map")
def show_section(model_dir: Path, predictor, image, prediction, predicted_mask=None) -> None:
    """The saliency section: two methods side by side over ``image`` (a :class:`ui.predict.InputImage`).

    ``predicted_mask`` (the segmenter's lesion mask) adds each map's energy inside the predicted lesion.
    """
    show(model_dir, predictor, image, prediction, model_mtime(model_dir), predicted_mask)
