"""Evaluate page: predicting an external test set and picking an earlier external result."""

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from core import evaluate, modelio, paths
from ui.evaluate.common import KEY_EXTERNAL, Source, mtime


def external_source(model: evaluate.Evaluable) -> Source | None:
    """Form to predict an external test set, and a picker of earlier results of this model."""
    if not modelio.is_model_dir(model.path):
        st.info(f"`{model.path}` has no `model.keras`, so it cannot predict an external test set.")
        return None
    results = external_results(model.path)
    with st.expander("Predict an external test set (image folder + ISIC ground-truth CSV)", expanded=not results):
        inputs = _external_inputs()
        if inputs and st.button("Predict", type="primary", key="evaluate_external_run"):
            out = _run_external(model.path, *inputs)
            if out is not None:
                st.session_state[KEY_EXTERNAL] = str(out)
                results = external_results(model.path)
    if not results:
        st.info("No external predictions for this model yet.")
        return None
    names = [str(r) for r in results]
    if st.session_state.get(KEY_EXTERNAL) not in names:
        st.session_state[KEY_EXTERNAL] = names[0]
    chosen = Path(st.selectbox("External result", names, key=KEY_EXTERNAL, format_func=_describe_result))
    return Source(model, "external", chosen / evaluate.SPLIT_FILES["external"], chosen / evaluate.TRUTH_FILE)


def external_results(model_dir: Path) -> list:
    """Earlier external predictions of a model folder, newest first."""
    root = paths.cache_dir() / "external"
    if not root.is_dir():
        return []
    wanted = str(Path(model_dir).resolve())
    found = [p for p in root.iterdir() if (p / "source.json").is_file() and (p / evaluate.SPLIT_FILES["external"]).is_file()]
    mine = [p for p in found if pd.read_json(p / "source.json", typ="series").get("model") == wanted]
    return sorted(mine, key=lambda p: mtime(p / "source.json"), reverse=True)


def _describe_result(folder: str) -> str:
    source = pd.read_json(Path(folder) / "source.json", typ="series")
    return f"{Path(source['truth']).name} · {source['n']} images · {source['created']}"


def _external_inputs() -> tuple | None:
    """(images folder, truth CSV) from typed paths or from uploads saved to the cache."""
    mode = st.radio("Input", ["Folder paths", "Upload files"], horizontal=True, key="evaluate_external_mode")
    if mode == "Folder paths":
        images = st.text_input("Image folder", key="evaluate_external_images")
        truth = st.text_input("Ground-truth CSV (ISIC one-hot `image,MEL,NV,…` or `image_id,dx`)", key="evaluate_external_truth")
        return (Path(images).expanduser(), Path(truth).expanduser()) if images and truth else None
    truth_file = st.file_uploader("Ground-truth CSV", type=["csv"], key="evaluate_upload_truth")
    image_files = st.file_uploader("Images", type=["jpg", "jpeg", "png"], accept_multiple_files=True,
                                   key="evaluate_upload_images")
    if truth_file is None or not image_files:
        return None
    return _save_uploads(truth_file, image_files)


def _save_uploads(truth_file, image_files) -> tuple:
    digest = hashlib.sha256(truth_file.getvalue())
    for f in image_files:
        digest.update(f.name.encode())
        digest.update(str(f.size).encode())
    folder = paths.cache_dir() / "uploads" / digest.hexdigest()[:16]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "truth.csv").write_bytes(truth_file.getvalue())
    for f in image_files:
        (folder / "images" / Path(f.name).name).write_bytes(f.getvalue())
    return folder / "images", folder / "truth.csv"


def _run_external(model_dir: Path, images: Path, truth: Path) -> Path | None:
    """Predict with a progress bar; returns the output folder, or None after showing the error."""
    key = "|".join([str(Path(model_dir).resolve()), str(mtime(Path(model_dir) / modelio.MODEL_FILE)),
                    str(images.resolve()), str(truth.resolve())])
    out = paths.cache_dir() / "external" / f"{Path(model_dir).name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    bar = st.progress(0.0, text="Loading the model…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Predicted {done} of {total} images")

    try:
        evaluate.evaluate_external(model_dir, images, truth, out, progress=progress)
    except (OSError, ValueError) as err:
        bar.empty()
        st.error(f"Could not predict the external test set: {err}")
        return None
    bar.progress(1.0, text="Done")
    return out


def source_for(model: evaluate.Evaluable, split: str) -> Source | None:
    """The source of a model and split; for ``external`` the form and result picker decide."""
    if split == "external":
        return external_source(model)
    return Source(model, split, model.path / evaluate.SPLIT_FILES[split])
