"""Evaluate page: predicting an external test set and picking one of this session's results.

External sets come from uploads, or from folders under the roots the operator
allows (``HAM_EXTERNAL_ROOTS``, see ``core.dataset.uploads``; not in read-only mode). Uploads
and results live in the session's private temporary folder, so one visitor never
sees another's images, and the folder goes away with the session. Messages show no
server path. Predicting writes nothing persistent, so uploads stay available in
read-only mode.

Work per visitor is bounded before anything is parsed: a truth CSV above
``MAX_TRUTH_BYTES`` or with more than ``MAX_EXTERNAL_IMAGES`` rows is refused from
its size and its line count (larger sets belong to ``lesionlab evaluate``);
one prediction runs per session, and changing any input or pressing Stop cancels it.
"""

import logging
import stat
from pathlib import Path

import pandas as pd
import streamlit as st

from core.evaluation import evaluate

from core.serving import modelio

from core.contracts import paths

from core.dataset import uploads
from core.dataset.images import decode_upload
from ui.evaluate.common import KEY_EXTERNAL, Source, mtime
from ui.guard import heavy_job
from ui.text import plain

KEY_WORKSPACE = "evaluate_workspace"  # the session's core.dataset.uploads.Workspace
KEEP_RESULTS = 3  # results kept per session; older ones (and their uploads) are removed
MAX_EXTERNAL_IMAGES = 2000  # rows of a truth CSV (each an image to predict) per request from the page
MAX_TRUTH_BYTES = 2 * 1024 * 1024  # ~10x what 2,000 ISIC one-hot rows take
SERVER_FOLDER = "Folder on the server"
log = logging.getLogger(__name__)


def external_source(model: evaluate.Evaluable) -> Source | None:
    """Form to predict an external test set, and a picker of this session's results for this model."""
    if not modelio.is_model_dir(model.path):
        st.info(f"Model {model.name} has no `model.keras`, so it cannot predict an external test set.")
        return None
    results = external_results(model.path)
    with st.expander("Predict an external test set (image folder + ISIC ground-truth CSV)", expanded=not results):
        inputs = _external_inputs()
        if inputs and st.button("Predict", type="primary", key="evaluate_external_run"):
            with heavy_job("The prediction of an external test set") as allowed:
                out = _run_external(model.path, *inputs) if allowed else None
            if out is not None:
                st.session_state[KEY_EXTERNAL] = str(out)
                results = external_results(model.path)
    if not results:
        st.info("No external predictions for this model in this session yet.")
        return None
    names = [str(r) for r in results]
    if st.session_state.get(KEY_EXTERNAL) not in names:
        st.session_state[KEY_EXTERNAL] = names[0]
    chosen = Path(st.selectbox("External result", names, key=KEY_EXTERNAL, format_func=_describe_result))
    return Source(model, "external", chosen / evaluate.SPLIT_FILES["external"], chosen / evaluate.TRUTH_FILE)


def workspace() -> uploads.Workspace:
    """The session's private temporary folder (created on first use, recreated if removed)."""
    current = st.session_state.get(KEY_WORKSPACE)
    if current is None or not current.alive:
        current = uploads.Workspace(prefix="ham-evaluate-")
        st.session_state[KEY_WORKSPACE] = current
    return current


def external_results(model_dir: Path) -> list:
    """This session's external predictions of a model folder, newest first."""
    root = workspace().path
    wanted = str(Path(model_dir).resolve())
    found = [p for p in root.glob("result-*") if (p / evaluate.SOURCE_FILE).is_file()
             and (p / evaluate.SPLIT_FILES["external"]).is_file()]
    mine = [p for p in found if pd.read_json(p / evaluate.SOURCE_FILE, typ="series").get("model") == wanted]
    return sorted(mine, key=lambda p: mtime(p / evaluate.SOURCE_FILE), reverse=True)


def _describe_result(folder: str) -> str:
    source = pd.read_json(Path(folder) / evaluate.SOURCE_FILE, typ="series")
    return f"{Path(source['truth']).name} · {source['n']} images · {source['created']}"


def _external_inputs() -> tuple | None:
    """(images, truth CSV) as typed folders under the allowed roots, or as uploads (saved on Predict)."""
    modes = ["Upload files"] if paths.read_only() else ["Upload files", SERVER_FOLDER]
    mode = st.radio("Input", modes, horizontal=True, key="evaluate_external_mode")
    st.caption(f"Up to {MAX_EXTERNAL_IMAGES:,} images per set here (truth CSV up to {MAX_TRUTH_BYTES // 2**20} MB); "
               "larger sets: `lesionlab evaluate`. Changing any input or pressing Stop cancels a prediction.")
    if mode == SERVER_FOLDER:
        return _typed_inputs()
    truth_file = st.file_uploader("Ground-truth CSV", type=["csv"], key="evaluate_upload_truth")
    image_files = st.file_uploader("Images", type=["jpg", "jpeg", "png"], accept_multiple_files=True,
                                   key="evaluate_upload_images")
    if truth_file is None or not image_files:
        return None
    problem = truth_size_problem(truth_file.size, lambda: truth_file.getvalue()) or _count_problem(len(image_files))
    if problem:
        st.error(f"Refused: {problem}")
        return None
    return truth_file, image_files


def truth_size_problem(size: int, read) -> str | None:
    """Why a truth CSV is too large for the page (None when it is not), from its size, then its line count.

    ``read`` returns the file's bytes; it is called only when the size is under ``MAX_TRUTH_BYTES``,
    and the lines are counted without parsing anything.
    """
    if size > MAX_TRUTH_BYTES:
        return (f"the ground-truth CSV has {size / 2**20:,.1f} MB, more than the {MAX_TRUTH_BYTES // 2**20} MB "
                "this page reads; use `lesionlab evaluate` for large sets.")
    content = read()
    rows = content.count(b"\n") - 1 + (not content.endswith(b"\n"))  # lines minus the header
    return _count_problem(rows, "rows in the ground-truth CSV")


def _count_problem(count: int, what: str = "images") -> str | None:
    if count <= MAX_EXTERNAL_IMAGES:
        return None
    return (f"{count:,} {what}, more than the {MAX_EXTERNAL_IMAGES:,} this page predicts per set; "
            "use `lesionlab evaluate` for large sets.")


def _server_truth_problem(path: Path) -> str | None:
    """:func:`truth_size_problem` of a typed CSV, and a refusal of anything but a regular file (a FIFO would hang)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        return "the ground-truth CSV is not a regular file."
    def read() -> bytes:
        with open(path, "rb") as handle:
            return handle.read(MAX_TRUTH_BYTES + 1)
    return truth_size_problem(info.st_size, read)


def _typed_inputs() -> tuple | None:
    """Typed paths, resolved and checked against ``HAM_EXTERNAL_ROOTS`` before anything is read."""
    if not uploads.external_roots():
        st.info("This server accepts uploaded external sets only.")
        return None
    st.caption("Only folders inside the folders this server allows (HAM_EXTERNAL_ROOTS; by default the "
               "dataset folder) can be read. Relative paths start in the first of them.")
    images = st.text_input("Image folder", key="evaluate_external_images")
    truth = st.text_input("Ground-truth CSV (ISIC one-hot `image,MEL,NV,…` or `image_id,dx`)", key="evaluate_external_truth")
    if not (images and truth):
        return None
    if "\x00" in images + truth:
        st.error("A typed path contains a NUL character, which no file name can hold: type the path again.")
        return None
    try:
        resolved = uploads.resolve_external(images, "image folder"), uploads.resolve_external(truth, "ground-truth CSV")
        problem = _server_truth_problem(resolved[1]) if resolved[1].exists() else None
    except uploads.OutsideRootsError as err:
        st.error(str(err))
        return None
    except (OSError, ValueError) as err:  # too long, not readable: named without its path
        st.error(f"Cannot read that path: {plain(public_message(err))}")
        return None
    if problem:
        st.error(f"Refused: {problem}")
        return None
    return resolved


def _save_uploads(folder: Path, truth_file, image_files) -> tuple:
    """Write the uploaded CSV and images into ``folder`` (of the session workspace)."""
    ws = workspace()
    images = folder / "images"
    images.mkdir(parents=True)
    truth = ws.save_upload(folder, truth_file.name, truth_file.getvalue())
    for f in image_files:
        ws.save_upload(images, f.name, f.getvalue())
    return images, truth


def _new_result_folder() -> Path:
    """A fresh ``result-<k>`` folder of the workspace; results beyond ``KEEP_RESULTS`` are removed."""
    ws = workspace()
    existing = sorted(ws.path.glob("result-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in existing[: max(0, len(existing) - KEEP_RESULTS + 1)]:
        ws.remove(old.name)
    number = int(existing[-1].name.split("-")[1]) + 1 if existing else 1
    return ws.fresh(f"result-{number}")


def _run_external(model_dir: Path, first, second) -> Path | None:
    """Predict with a progress bar into this session's workspace; returns the result folder, or None after an error."""
    out = _new_result_folder()
    bar = st.progress(0.0, text="Loading the model…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / total, text=f"Predicted {done} of {total} images")

    try:
        typed = isinstance(first, Path)
        images, truth = (first, second) if typed else _save_uploads(out / "upload", first, second)
        evaluate.evaluate_external(model_dir, images, truth, out_dir=out, progress=progress, decode=decode_upload,
                                   roots=uploads.external_roots() if typed else None)
    except (OSError, ValueError) as err:
        bar.empty()
        log.warning("external test set refused: %s", err)
        st.error(f"Could not predict the external test set: {plain(public_message(err), max_chars=400)}")
        workspace().remove(out.name)
        return None
    except BaseException:  # cancelled (Stop, a changed input, a closed tab): no half-written result stays
        workspace().remove(out.name)
        raise
    bar.progress(1.0, text="Done")
    return out


def public_message(err: BaseException) -> str:
    """An error's message with the session folder and every other server path removed."""
    return uploads.redact_paths(str(err), {workspace().path: "upload"})


def source_for(model: evaluate.Evaluable, split: str) -> Source | None:
    """The source of a model and split; for ``external`` the form and result picker decide."""
    if split == "external":
        return external_source(model)
    return Source(model, split, model.path / evaluate.SPLIT_FILES[split])
