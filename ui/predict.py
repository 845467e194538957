"""Streamlit helpers of the Predict page: cached model and explainer, inputs, result panels.

Uploads stay in memory (Streamlit keeps them in RAM; decoding works on bytes).
Memory stays bounded under hostile uploads: an image is refused above
``core.dataset.images.INTERACTIVE_MAX_PIXELS`` and reduced to at most
``DISPLAY_MAX_SIDE`` pixels right after decoding, so maps and overlays are
drawn at display size; batch files and zip members are decoded one at a time.
The model and its explainer are cached per (folder, modification time), so a
retrained model is picked up and at most two models stay in memory.
"""

import hashlib
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.dataset import leakage
from core.contracts import predictions as contract
from core.dataset.data import DatasetError
from core.dataset.images import UPLOAD_TYPES, ImageError, count_zip_members, read_mask, zip_sources
from core.dataset.images import decode_upload as decode_upload_pixels
from core.contracts.labels import CLASS_NAMES, DESCRIPTIONS
from core.serving import metadata_branch
from core.serving.modelio import ModelFolderError, input_size, read_metadata
from core.contracts.paths import default_model_dir
from core.serving.predict import Predictor, available_models, predict_sources, tta_count
from ui.loaders import dataset_table, load_predictor, model_mtime
from ui.guard import guarded, heavy_job
from ui.text import NOT_A_DEVICE, folder_named, plain

# Session-state keys of this page, in one place.
KEY_MODEL = "predict_model"
KEY_SOURCE = "predict_source"
KEY_UPLOAD = "predict_upload"
KEY_CAMERA = "predict_camera"
KEY_SAMPLE_CLASS = "predict_sample_class"
KEY_SAMPLE_ID = "predict_sample_id"
KEY_EXAMPLE = "predict_example"
KEY_TTA = "predict_tta"
KEY_BATCH = "predict_batch_files"
KEY_SHOW_ANYWAY = "predict_show_anyway"
KEY_AGE = "predict_age"
KEY_SEX = "predict_sex"
KEY_SITE = "predict_site"

SOURCES = ("Upload", "Camera", "Dataset sample")
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
SAMPLES_PER_CLASS = 200


@dataclass
class InputImage:
    """The image being explained, with what the dataset knows about it."""

    name: str
    rgb: np.ndarray
    true_dx: str | None = None
    mask: np.ndarray | None = None
    recorded: dict | None = None  # the dataset's age, sex and site of a dataset sample

    @property
    def digest(self) -> str:
        """A short content hash: the cache key of maps computed on this image."""
        return hashlib.sha1(self.rgb.tobytes() + str(self.rgb.shape).encode()).hexdigest()[:16]


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
            f"No model yet. The shipped model is expected in {folder_named(default_model_dir(), 'HAM_DEFAULT_MODEL')} "
            "(set HAM_DEFAULT_MODEL to move it); finished runs of the Train page appear here too."
        )
        return None
    return st.selectbox("Model", models, format_func=_model_label, key=KEY_MODEL)


def device_notice() -> None:
    """The visible "not a medical device" notice."""
    st.warning(NOT_A_DEVICE, icon=":material/warning:")


def decode_upload(data: bytes, name: str) -> InputImage | None:
    """Decode uploaded bytes; shows a clear error and returns None when they are not usable."""
    try:
        return InputImage(name=name, rgb=decode_upload_pixels(data))
    except ImageError as err:
        st.error(f"Cannot use **{plain(name)}**: {plain(err)}")
        return None


def _dataset():
    try:
        return dataset_table()
    except DatasetError:
        return None


def pick_input(model_dir: Path | None = None) -> InputImage | None:
    """Upload, camera, shipped example (labelled with ``model_dir``'s saved test verdicts) or dataset sample
    (offered only when the dataset exists)."""
    frame = _dataset()
    sources = [*SOURCES[:2], EXAMPLE_SOURCE] + ([SOURCES[2]] if frame is not None else [])
    source = st.radio("Image source", sources, horizontal=True, key=KEY_SOURCE)
    if source == EXAMPLE_SOURCE:
        return _pick_example(model_dir)
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
    left, right = st.columns([2, 1])  # class names run to 50 characters; image ids to 12
    dx = left.selectbox("True class", sorted(usable["dx"].unique()), format_func=_class_label, key=KEY_SAMPLE_CLASS)
    rows = usable[usable["dx"] == dx].sample(frac=1.0, random_state=0).head(SAMPLES_PER_CLASS)
    image_id = right.selectbox("Image", rows["image_id"].tolist(), key=KEY_SAMPLE_ID)
    row = rows.set_index("image_id").loc[image_id]
    image = decode_upload(Path(row["path"]).read_bytes(), image_id)
    if image is None:
        return None
    image.true_dx = dx
    image.recorded = {"age": row.get("age"), "sex": row.get("sex"), "site": row.get("localization")}
    try:
        image.mask = read_mask(row["mask_path"]) if row["mask_path"] else None
    except (OSError, ValueError, SyntaxError):
        st.caption("The lesion mask of this image is unreadable; shown without its outline.")
    return image


EXAMPLE_SOURCE = "Example images"


def example_images() -> dict:
    """The example images shipped with the app (ui/assets/examples): ``image_id -> (true class, path)``."""
    folder = Path(__file__).resolve().parent / "assets" / "examples"
    found = {}
    for path in sorted(folder.glob("*_ISIC_*.jpg")):
        dx, image_id = path.stem.split("_", 1)
        found[image_id] = (dx, path)
    return found


@st.cache_data(max_entries=4, show_spinner=False)
def _saved_verdicts(path: str, mtime: int) -> dict:
    """``image_id -> predicted class`` from a model folder's saved test predictions; ``mtime`` is only a key."""
    try:
        frame = contract.read_frame(Path(path))
    except (contract.PredictionsError, OSError):
        return {}
    if contract.PREDICTED not in frame.columns:
        return {}
    return dict(zip(frame[contract.IMAGE_ID].astype(str), frame[contract.PREDICTED].astype(str)))


def example_verdicts(model_dir: Path | None) -> dict:
    """What ``model_dir`` predicted for each test image, read from its ``predictions_test.csv`` (empty without)."""
    path = Path(model_dir) / contract.FILES["test"] if model_dir else None
    if path is None or not path.is_file():
        return {}
    return _saved_verdicts(str(path.resolve()), path.stat().st_mtime_ns)


def example_label(dx: str, image_id: str, predicted: str | None) -> str:
    """The picker's label: the true diagnosis, and for a miss that the model gets it wrong."""
    label = f"{_class_label(dx)} · {image_id}"
    if predicted and predicted != dx:
        label += f" · the model gets this one wrong (it says {predicted})"
    return label


def _pick_example(model_dir: Path | None) -> InputImage | None:
    """One of the shipped example images (test split), with its true label; misses of the model come last."""
    examples = example_images()
    if not examples:
        st.info("No example images in this installation (ui/assets/examples).")
        return None
    verdicts = example_verdicts(model_dir)
    labels = {i: example_label(dx, i, verdicts.get(i)) for i, (dx, _) in examples.items()}
    order = sorted(examples, key=lambda i: (verdicts.get(i, examples[i][0]) != examples[i][0], examples[i][0], i))
    image_id = st.selectbox("Example image (true diagnosis)", order, key=KEY_EXAMPLE, format_func=labels.get)
    dx, path = examples[image_id]
    image = decode_upload(path.read_bytes(), image_id)
    if image is not None:
        image.true_dx = dx
    st.caption("HAM10000 test-split image, © ViDIR Group, Medical University of Vienna, CC BY-NC 4.0 "
               "(Tschandl et al., Sci. Data 5, 180161, 2018).")
    return image


def _class_label(code: str) -> str:
    return f"{code} · {CLASS_NAMES.get(code, code)}"


def probability_figure(prediction) -> go.Figure:
    """Horizontal bars of all class probabilities, the predicted class highlighted."""
    codes = list(prediction.classes)
    labels = [_wrapped_label(c) for c in codes]
    colours = ["#d62728" if c == prediction.predicted else "#1f77b4" for c in codes]
    fig = go.Figure(
        go.Bar(x=prediction.probabilities, y=labels, orientation="h", name="with " + ", ".join(prediction.metadata)
               if prediction.metadata else "probability", marker_color=colours,
               text=[contract.percent(p) for p in prediction.probabilities], textposition="auto")
    )
    if prediction.image_only is not None:
        fig.add_trace(go.Bar(x=prediction.image_only, y=labels, orientation="h", name="image alone",
                             marker_color="#b0b0b0", text=[contract.percent(p) for p in prediction.image_only],
                             textposition="auto"))
        fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.25})
    fig.update_layout(xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability"},
                      yaxis={"autorange": "reversed", "automargin": True},
                      height=340 if prediction.image_only is None else 480,
                      margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def _wrapped_label(code: str) -> str:
    """A class's axis label on at most two short lines: one long line is cut off in a narrow column."""
    return "<br>".join(textwrap.wrap(_class_label(code), width=28))


METADATA_HELP = (
    "Optional. Each field given moves the probabilities through the model's metadata branch: log-odds per "
    "age band, sex and body site, fitted on HAM10000's training images with the image model frozen. Left "
    "empty, the prediction is the image's alone, unchanged. The saliency maps below always explain the image."
)


def metadata_fields(predictor: Predictor, image: InputImage) -> dict:
    """Optional age, sex and site inputs when the model has a metadata branch; ``{}`` otherwise."""
    try:
        if predictor.metadata_branch is None:
            return {}
    except metadata_branch.MetadataBranchError as err:
        st.warning(f"The model's age/sex/site branch cannot be used ({plain(err)}); predictions use the image "
                   "alone.", icon=":material/warning:")
        return {}
    with st.expander("Age, sex and body site (optional)", icon=":material/person:"):
        st.caption(METADATA_HELP)
        if image.recorded:
            st.button("Use this image's recorded age, sex and site", on_click=_use_recorded, args=(image.recorded,),
                      key="predict_use_recorded")
        age_col, sex_col, site_col = st.columns([3, 3, 4])
        age = age_col.number_input("Age (years)", min_value=0, max_value=120, value=None, step=5, key=KEY_AGE,
                                   placeholder="not given")
        sex = sex_col.selectbox("Sex", metadata_branch.SEXES, index=None, placeholder="not given", key=KEY_SEX)
        site = site_col.selectbox("Body site", metadata_branch.SITES, index=None, placeholder="not given",
                                  key=KEY_SITE)
    return {"age": age, "sex": sex, "site": site}


def _use_recorded(recorded: dict) -> None:
    """Fill the metadata fields with a dataset sample's own record (a field the dataset lacks is cleared)."""
    age, sex, site = (recorded.get(k) for k in ("age", "sex", "site"))
    st.session_state[KEY_AGE] = None if metadata_branch.absent(age) else int(age)
    st.session_state[KEY_SEX] = None if metadata_branch.absent(sex) else str(sex)
    st.session_state[KEY_SITE] = None if metadata_branch.absent(site) else str(site)


@guarded("The prediction")
def show_prediction(predictor: Predictor, image: InputImage, tta: bool, metadata: dict | None = None):
    """The out-of-distribution gate, then the verdict: class, description, malignancy, all probabilities.

    ``metadata`` (from :func:`metadata_fields`) moves the probabilities when the model has a metadata branch.

    Returns:
        The :class:`core.serving.predict.Prediction`, or None when the image was flagged and the user has not
        asked to see the verdict anyway (the page then shows no probabilities and no maps either).
    """
    prediction = predictor.predict(image.rgb, tta=tta, metadata=metadata)
    if not ood_gate(prediction, image):
        return None
    left, right = st.columns([2, 3])
    with left:
        st.subheader(_class_label(prediction.predicted))
        st.write(DESCRIPTIONS.get(prediction.predicted, ""))
        if image.true_dx:
            _truth_line(predictor, image, prediction)
        st.metric("Malignant (mel + bcc + akiec)", f"{prediction.malignant:.1%}",
                  help="Sum of the probabilities of the malignant classes; benign = the rest.")
        st.caption(f"Benign: {1 - prediction.malignant:.1%}")
        st.table(pd.DataFrame(prediction.top_k(3), columns=["class", "probability"]).assign(
            probability=lambda t: t["probability"].map(contract.percent)))
    with right:
        st.plotly_chart(probability_figure(prediction), width="stretch", key="predict_probs")
        st.caption(_calibration_text(predictor, tta))
    if prediction.metadata:
        st.info(metadata_sentence(prediction), icon=":material/person:")
    if not prediction.ood.flagged:
        st.caption("Out-of-distribution check passed. " + prediction.ood.text)
    return prediction


def metadata_sentence(prediction) -> str:
    """What the metadata changed: the fields used and the image's own verdict beside the combined one."""
    given = ", ".join(f"{k} {v}" for k, v in prediction.metadata.items())
    alone = prediction.image_only
    top = int(np.argmax(alone))
    verdict = (f"The image alone says **{_class_label(prediction.classes[top])}** ({contract.percent(alone[top])})")
    same = prediction.classes[top] == prediction.predicted
    return (f"With {given}. {verdict}{', the same class' if same else ''}; the grey bars show the image alone. "
            "Age, sex and site only shift the odds learnt from HAM10000's patients.")


def _calibration_text(predictor: Predictor, tta: bool) -> str:
    n = tta_count(predictor.input_size)
    views = f" Averaged over {n} {'flips/rotations' if n == 8 else 'flips (the frame kept)'} (TTA)." if tta else ""
    return predictor.calibration["text"] + views


NOT_DERMOSCOPIC = (
    "**This does not look like a dermatoscopic image.** The model has only ever seen dermatoscope "
    "photographs of pigmented skin lesions; shown anything else it still names one of its seven classes, "
    "and that name means nothing. No diagnosis, probabilities or saliency maps are shown for it."
)


def ood_gate(prediction, image: InputImage) -> bool:
    """The gate before the verdict: True when the image passed, or the user asked to see the verdict anyway."""
    if not prediction.ood.flagged:
        return True
    st.error(NOT_DERMOSCOPIC, icon=":material/block:")
    st.caption(prediction.ood.text)
    if st.toggle("Show the prediction anyway", key=f"{KEY_SHOW_ANYWAY}_{image.digest}"):
        st.warning("Shown on request for an image flagged as unlike the training images: read it as the output "
                   "of a model outside its domain, not as a verdict.", icon=":material/warning:")
        return True
    return False


@st.cache_data(max_entries=4, show_spinner=False)
def _model_split(path: str, mtime: int) -> pd.DataFrame | None:
    """The split a model folder was trained on (None when it carries none); ``mtime`` is only a key."""
    return leakage.find_model_split(Path(path), read_metadata(Path(path)))


def _truth_line(predictor: Predictor, image: InputImage, prediction) -> None:
    """The dataset label against the prediction, with the image's split and a warning when the model saw it."""
    verdict = (":green[:material/check_circle:] matches" if image.true_dx == prediction.predicted
               else ":red[:material/cancel:] differs from")
    split = leakage.split_of(image.name, _model_split(str(predictor.model_dir.resolve()), model_mtime(predictor.model_dir)))
    where = f" (an image of the model's **{SPLIT_NAMES.get(split, split)}** split)" if split else ""
    st.write(f"True label (dataset): **{_class_label(image.true_dx)}** — the prediction {verdict} it{where}.")
    if split in ("train", "val"):
        st.warning(f"The model {'was trained on' if split == 'train' else 'was tuned on'} this image: "
                   "a match here says nothing about how it does on new images. Pick a test-split image for that.")
    elif split is None:
        st.caption("This model folder carries no split file, so whether it has seen this image is unknown.")


def upload_sources(files):
    """Yield ``(name, bytes | ImageError)`` for uploaded images and the images inside uploaded zips.

    One at a time: a zip member is extracted only when the previous one has
    been decoded and reduced, so a zip of many huge members never sits in memory at once.
    """
    for upload in files:
        if upload.name.lower().endswith(".zip"):
            yield from zip_sources(upload.name, upload.getvalue())
        else:
            yield upload.name, upload.getvalue()


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
def batch_mode(model_dir: Path) -> None:
    """Several images or zips → a predictions table with a progress bar and a CSV download."""
    files = st.file_uploader("Images or zip files", type=[*UPLOAD_TYPES, "zip"], accept_multiple_files=True,
                             key=KEY_BATCH)
    tta = st.toggle("Test-time augmentation", value=False, key="predict_batch_tta")
    if not files or not st.button(f"Classify {len(files)} file(s)", type="primary"):
        return
    with heavy_job("The batch prediction") as allowed:
        if allowed:
            _classify_batch(model_dir, files, tta)


def _classify_batch(model_dir: Path, files, tta: bool) -> None:
    predictor = load_predictor(model_dir)
    skipped, bar = [], st.progress(0.0, text="Classifying…")
    sources = _with_progress(upload_sources(files), count_sources(files), bar)
    table = predict_sources(predictor, sources, tta=tta, on_skip=lambda n, m: skipped.append((n, m)),
                            decode=decode_upload_pixels)
    for name, message in skipped:
        st.error(f"Skipped **{plain(name)}**: {plain(message)}")
    if table.empty:
        st.warning("No readable image among the uploaded files.")
        return
    flagged = int(table[contract.OOD_FLAG].sum())
    st.caption(f"{len(table)} image(s) classified. {predictor.calibration['text']} "
               f"{flagged} flagged as not looking dermatoscopic ({contract.OOD_FLAG} = 1): "
               "their predicted class means nothing.")
    shown = table.astype({contract.OOD_FLAG: bool})
    st.dataframe(shown, hide_index=True, column_config=_batch_columns(predictor.classes))
    csv = contract.to_csv(table, predictor.probabilities_kind, temperature=predictor.temperature,
                          n=predictor.calibration["n"])
    st.download_button("Download predictions (CSV)", csv, file_name="predictions.csv", mime="text/csv",
                       on_click="ignore")


def _batch_columns(classes) -> dict:
    columns = {c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f") for c in classes}
    columns[contract.OOD_FLAG] = st.column_config.CheckboxColumn(
        contract.OOD_FLAG, help="Flagged as unlike the dermatoscopic images the model learnt from")
    columns[contract.OOD_SCORE] = st.column_config.NumberColumn(
        contract.OOD_SCORE, format="%.2f", help="× the threshold: flagged above 1")
    return columns
