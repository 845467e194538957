"""Streamlit helpers of the Predict page: cached model and explainer, inputs, result panels.

Uploads stay in memory (Streamlit keeps them in RAM; decoding works on bytes).
Memory stays bounded under hostile uploads: an image is refused above
``core.images.INTERACTIVE_MAX_PIXELS`` and reduced to at most
``DISPLAY_MAX_SIDE`` pixels right after decoding, so maps and overlays are
drawn at display size; batch files and zip members are decoded one at a time.
The model and its explainer are cached per (folder, modification time), so a
retrained model is picked up and at most two models stay in memory.
"""

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from core import faithfulness, saliency
from core.data import DatasetError
from core.images import UPLOAD_TYPES, ImageError, count_zip_members, read_mask, to_model_input, zip_members
from core.images import decode_upload as decode_upload_pixels
from core.labels import CLASS_NAMES, DESCRIPTIONS
from core.modelio import METADATA_FILE, MODEL_FILE, ModelFolderError, input_size, read_metadata
from core.paths import default_model_dir
from core.predict import Predictor, available_models, predict_sources
from ui import segment_view
from ui.frame import NOT_A_DEVICE, dataset_table
from ui.guard import guarded, public

# Session-state keys of this page, in one place.
KEY_MODEL = "predict_model"
KEY_SOURCE = "predict_source"
KEY_UPLOAD = "predict_upload"
KEY_CAMERA = "predict_camera"
KEY_SAMPLE_CLASS = "predict_sample_class"
KEY_SAMPLE_ID = "predict_sample_id"
KEY_TTA = "predict_tta"
KEY_METHOD = "predict_method"
KEY_TARGET = "predict_target"
KEY_OPACITY = "predict_opacity"
KEY_BATCH = "predict_batch_files"

SOURCES = ("Upload", "Camera", "Dataset sample")
SAMPLES_PER_CLASS = 200
CURVE_STEPS = 20


@dataclass
class InputImage:
    """The image being explained, with what the dataset knows about it."""

    name: str
    rgb: np.ndarray
    true_dx: str | None = None
    mask: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """A short content hash: the cache key of maps computed on this image."""
        return hashlib.sha1(self.rgb.tobytes() + str(self.rgb.shape).encode()).hexdigest()[:16]


def model_mtime(model_dir: Path) -> int:
    """Newest modification time (ns) of the model files: part of every cache key."""
    return max((Path(model_dir) / f).stat().st_mtime_ns for f in (MODEL_FILE, METADATA_FILE))


@st.cache_resource(max_entries=2, show_spinner="Loading the model…")
def _predictor(path: str, mtime: int) -> Predictor:
    """The model of a folder, warmed up; ``mtime`` is only a cache key."""
    predictor = Predictor(Path(path))
    predictor.warmup()
    return predictor


@st.cache_resource(max_entries=2, show_spinner="Preparing Grad-CAM…")
def _explainer(path: str, mtime: int) -> saliency.Explainer:
    """The explainer of a folder's model, its fast Grad-CAM traced once."""
    predictor = _predictor(path, mtime)
    explainer = saliency.Explainer(predictor.model, predictor.meta["last_conv_layer"])
    saliency.gradcam_fast(explainer, np.zeros((*predictor.input_size, 3), np.float32), 0)
    return explainer


def load_predictor(model_dir: Path) -> Predictor:
    """The cached, warmed-up :class:`Predictor` of ``model_dir``; an unusable folder stops the page with a message."""
    try:
        return _predictor(str(Path(model_dir).resolve()), model_mtime(model_dir))
    except ModelFolderError as err:
        st.error(f"This model cannot be used: {public(err)}")
        st.stop()


def load_explainer(model_dir: Path) -> saliency.Explainer:
    """The cached :class:`core.saliency.Explainer` of ``model_dir``."""
    return _explainer(str(Path(model_dir).resolve()), model_mtime(model_dir))


def _model_label(path: Path) -> str:
    try:
        meta = read_metadata(path)
    except ModelFolderError:
        return f"{path.name} (unreadable metadata)"
    kind = "default model" if path == default_model_dir() else f"run {path.name}"
    height, width = input_size(meta)
    return f"{kind} · {meta.get('arch', '?')} · {width}×{height} px"


def pick_model() -> Path | None:
    """Model picker (default model first); None, with an explanation, when there is none."""
    models = available_models()
    if not models:
        st.info(
            f"No model yet. The shipped model is expected in `{default_model_dir()}` "
            "(or set HAM_DEFAULT_MODEL); finished runs of the Train page appear here too."
        )
        return None
    return st.selectbox("Model", models, format_func=_model_label, key=KEY_MODEL)


def device_notice() -> None:
    """The visible "not a medical device" notice."""
    st.warning(NOT_A_DEVICE, icon="⚠️")


def decode_upload(data: bytes, name: str) -> InputImage | None:
    """Decode uploaded bytes; shows a clear error and returns None when they are not usable."""
    try:
        return InputImage(name=name, rgb=decode_upload_pixels(data))
    except ImageError as err:
        st.error(f"Cannot use **{name}**: {err}")
        return None


def _dataset():
    try:
        return dataset_table()
    except DatasetError:
        return None


def pick_input() -> InputImage | None:
    """Upload, camera or dataset sample (offered only when the dataset exists)."""
    frame = _dataset()
    sources = SOURCES if frame is not None else SOURCES[:2]
    source = st.radio("Image source", sources, horizontal=True, key=KEY_SOURCE)
    if source == "Upload":
        upload = st.file_uploader("Dermatoscopic image", type=list(UPLOAD_TYPES), key=KEY_UPLOAD)
        return decode_upload(upload.getvalue(), upload.name) if upload else None
    if source == "Camera":
        shot = st.camera_input("Take a picture", key=KEY_CAMERA)
        return decode_upload(shot.getvalue(), "camera.jpg") if shot else None
    return _pick_sample(frame)


def _pick_sample(frame: pd.DataFrame) -> InputImage | None:
    """A dataset image chosen by class and id, with its true label and lesion mask."""
    usable = frame[frame["path"] != ""]
    left, right = st.columns(2)
    dx = left.selectbox("True class", sorted(usable["dx"].unique()), format_func=_class_label, key=KEY_SAMPLE_CLASS)
    rows = usable[usable["dx"] == dx].sample(frac=1.0, random_state=0).head(SAMPLES_PER_CLASS)
    image_id = right.selectbox("Image", rows["image_id"].tolist(), key=KEY_SAMPLE_ID)
    row = rows.set_index("image_id").loc[image_id]
    image = decode_upload(Path(row["path"]).read_bytes(), image_id)
    if image is None:
        return None
    image.true_dx = dx
    try:
        image.mask = read_mask(row["mask_path"]) if row["mask_path"] else None
    except (OSError, ValueError, SyntaxError):
        st.caption("The lesion mask of this image is unreadable; shown without its outline.")
    return image


def _class_label(code: str) -> str:
    return f"{code} · {CLASS_NAMES.get(code, code)}"


def probability_figure(prediction) -> go.Figure:
    """Horizontal bars of all class probabilities, the predicted class highlighted."""
    codes = list(prediction.classes)
    colours = ["#d62728" if c == prediction.predicted else "#1f77b4" for c in codes]
    fig = go.Figure(
        go.Bar(x=prediction.probabilities, y=[_class_label(c) for c in codes], orientation="h",
               marker_color=colours, text=[f"{p:.1%}" for p in prediction.probabilities], textposition="auto")
    )
    fig.update_layout(xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability"},
                      yaxis={"autorange": "reversed"}, height=300, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


@guarded("The prediction")
def show_prediction(predictor: Predictor, image: InputImage, tta: bool):
    """Prediction panel: class, description, malignancy, calibration, OOD, all probabilities."""
    prediction = predictor.predict(image.rgb, tta=tta)
    left, right = st.columns([2, 3])
    with left:
        st.subheader(_class_label(prediction.predicted))
        st.write(DESCRIPTIONS.get(prediction.predicted, ""))
        if image.true_dx:
            verdict = "✅ matches" if image.true_dx == prediction.predicted else "❌ differs from"
            st.write(f"True label (dataset): **{_class_label(image.true_dx)}** — the prediction {verdict} it.")
        st.metric("Malignant (mel + bcc + akiec)", f"{prediction.malignant:.1%}",
                  help="Sum of the probabilities of the malignant classes; benign = the rest.")
        st.caption(f"Benign: {1 - prediction.malignant:.1%}")
        st.table(pd.DataFrame(prediction.top_k(3), columns=["class", "probability"]).assign(
            probability=lambda t: t["probability"].map("{:.1%}".format)))
    with right:
        st.plotly_chart(probability_figure(prediction), width="stretch", key="predict_probs")
        st.caption(_calibration_text(predictor, tta))
    _ood_panel(prediction)
    return prediction


def _calibration_text(predictor: Predictor, tta: bool) -> str:
    views = " Averaged over 8 flips/rotations (TTA)." if tta else ""
    if predictor.temperature is None:
        return "Uncalibrated: the model's own softmax (model.json has no temperature)." + views
    return f"Calibrated with temperature scaling, T = {predictor.temperature:.3f} (fitted on validation)." + views


def _ood_panel(prediction) -> None:
    ood = prediction.ood
    if ood.method == "feature_distance":
        text = (f"Distance to the training images in the model's feature space: {ood.score:.2f} × the threshold; "
                "images beyond 1 are flagged (about 99 % of HAM10000 validation images stay below).")
        reason = "its features are far from every training image"
    else:
        source = {
            "metadata": "fitted on HAM10000 validation images (model.json)",
            "validation predictions": "5th percentile of the validation images' scores (predictions_val.csv)",
            "default": "a default guess: this model has no fitted OOD threshold",
        }[ood.source]
        text = f"Confidence score (max softmax) {ood.score:.2f}, threshold {ood.threshold:.2f} — {source}."
        reason = "low confidence"
    if ood.flagged:
        st.warning("This image looks unlike the dermatoscopic images the model was trained on "
                   f"({reason}); treat the result with extra caution. " + text, icon="🛑")
    else:
        st.caption("Out-of-distribution check passed. " + text)


@st.cache_data(max_entries=32, show_spinner="Computing the saliency map…")
def _saliency_map(path: str, mtime: int, digest: str, method: str, target: int, _x: np.ndarray) -> np.ndarray:
    """One saliency map, cached by model, image content, method and class (``_x`` is not hashed)."""
    return saliency.explain(_explainer(path, mtime), _x, method, target)


@st.cache_data(max_entries=32, show_spinner="Computing deletion and insertion curves…")
def _curves(path: str, mtime: int, digest: str, method: str, target: int, _x, _map) -> tuple:
    predict_fn = _predictor(path, mtime).predict_fn
    return (faithfulness.deletion_curve(predict_fn, _x, _map, target, steps=CURVE_STEPS),
            faithfulness.insertion_curve(predict_fn, _x, _map, target, steps=CURVE_STEPS))


def saliency_controls(predictor: Predictor, prediction) -> dict:
    """Method, target class, opacity and colour map; the predicted class is the default target."""
    cols = st.columns([3, 3, 2, 2])
    method = cols[0].selectbox("Method", list(saliency.METHODS), key=KEY_METHOD,
                               help="Grad-CAM (fast) is instant; the others take one to twenty seconds.")
    classes = list(predictor.classes)
    target = cols[1].selectbox("Explain class", classes, index=classes.index(prediction.predicted),
                               format_func=_class_label, key=f"{KEY_TARGET}_{prediction.predicted}")
    opacity = cols[2].slider("Opacity", 0.0, 1.0, 0.45, 0.05, key=KEY_OPACITY)
    cmap = cols[3].radio("Colours", ("jet", "inferno"), horizontal=True)
    return {"method": method, "target": classes.index(target), "opacity": opacity, "cmap": cmap}


@guarded("The saliency map")
def show_saliency(model_dir: Path, predictor: Predictor, image: InputImage, prediction, predicted_mask=None) -> None:
    """Original, heat map and overlay side by side, PNG download, faithfulness curves.

    ``predicted_mask`` (the segmenter's lesion mask) adds the map's energy inside the predicted lesion.
    """
    options = saliency_controls(predictor, prediction)
    key = (str(Path(model_dir).resolve()), model_mtime(model_dir), image.digest, options["method"], options["target"])
    x = to_model_input(image.rgb, predictor.input_size)
    saliency_map = _saliency_map(*key, _x=x)
    heat = saliency.colorize(saliency.resize_map(saliency_map, image.rgb.shape[:2]), options["cmap"])
    blended = saliency.overlay(image.rgb, saliency_map, options["opacity"], options["cmap"])
    original = image.rgb
    if image.mask is not None:
        original, blended = (saliency.draw_outline(a, image.mask) for a in (original, blended))
    cols = st.columns(3)
    outlined = " (lesion outline in green)" if image.mask is not None else ""
    cols[0].image(original, caption="Original" + outlined, width="stretch")
    cols[1].image(heat, caption=f"{options['method']} · {predictor.classes[options['target']]}", width="stretch")
    cols[2].image(blended, caption="Overlay" + outlined, width="stretch")
    if saliency_map.max() == 0:
        st.info("The map is empty: nothing in the last conv layer raises this class's score.")
    cols[2].download_button("Download overlay (PNG)", _png(blended), file_name=f"{Path(image.name).stem}_overlay.png",
                            mime="image/png", on_click="ignore")
    _mask_scores(saliency_map, image.mask)
    segment_view.saliency_energy_caption(saliency_map, predicted_mask, options["method"])
    show_curves(*_curves(*key, _x=x, _map=saliency_map))


def _mask_scores(saliency_map: np.ndarray, mask) -> None:
    if mask is None:
        return
    hit = faithfulness.pointing_game(saliency_map, mask)
    share = faithfulness.energy_in_mask(saliency_map, mask)
    st.caption(f"Against the lesion mask: the map's peak is {'inside' if hit else 'outside'} the lesion; "
               f"{share:.0%} of the map's mass lies inside it.")


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


def show_curves(deletion, insertion) -> None:
    """The faithfulness section: curves plus a one-line reading guide."""
    st.markdown("**Is the map faithful?** Deletion blurs the most salient pixels first; insertion restores "
                "them on a blurred copy. A faithful map makes the probability drop fast / rise fast.")
    st.plotly_chart(curves_figure(deletion, insertion), width="stretch", key="predict_curves")


def upload_sources(files):
    """Yield ``(name, bytes | ImageError)`` for uploaded images and the images inside uploaded zips.

    One at a time: a zip member is extracted only when the previous one has
    been decoded and reduced, so a zip of many huge members never sits in memory at once.
    """
    for upload in files:
        if not upload.name.lower().endswith(".zip"):
            yield upload.name, upload.getvalue()
            continue
        try:
            yield from ((f"{upload.name}!{name}", data) for name, data in zip_members(upload.getvalue()))
        except ImageError as err:
            yield upload.name, err


def count_sources(files) -> int:
    """How many entries :func:`upload_sources` yields, without extracting any zip member."""
    zips = [f for f in files if f.name.lower().endswith(".zip")]
    return len(files) - len(zips) + sum(max(1, count_zip_members(f.getvalue())) for f in zips)


def _with_progress(sources, total: int, bar):
    """Pass ``sources`` through, moving ``bar`` after each one."""
    for i, item in enumerate(sources, start=1):
        yield item
        bar.progress(min(1.0, i / max(1, total)), text=f"Classified {i} of {total}")


@guarded("Batch prediction")
def batch_mode(predictor: Predictor) -> None:
    """Several images or zips → a predictions table with a progress bar and a CSV download."""
    files = st.file_uploader("Images or zip files", type=[*UPLOAD_TYPES, "zip"], accept_multiple_files=True,
                             key=KEY_BATCH)
    tta = st.toggle("Test-time augmentation", value=False, key="predict_batch_tta")
    if not files or not st.button(f"Classify {len(files)} file(s)", type="primary"):
        return
    skipped, bar = [], st.progress(0.0, text="Classifying…")
    sources = _with_progress(upload_sources(files), count_sources(files), bar)
    table = predict_sources(predictor, sources, tta=tta, on_skip=lambda n, m: skipped.append((n, m)),
                            decode=decode_upload_pixels)
    for name, message in skipped:
        st.error(f"Skipped **{name}**: {message}")
    if table.empty:
        st.warning("No readable image among the uploaded files.")
        return
    calibrated = "calibrated" if predictor.temperature is not None else "uncalibrated"
    st.caption(f"{len(table)} image(s) classified; {calibrated} probabilities.")
    st.dataframe(table, hide_index=True, column_config=_probability_columns(predictor.classes))
    st.download_button("Download predictions (CSV)", table.to_csv(index=False, float_format="%.6f"),
                       file_name="predictions.csv", mime="text/csv", on_click="ignore")


def _probability_columns(classes) -> dict:
    return {c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f") for c in classes}
