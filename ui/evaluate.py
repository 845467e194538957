"""Streamlit helpers of the Evaluate page: pickers, cached loaders and one function per panel.

Every number is computed from a predictions CSV (``core.evaluate``), never by
running the model, except for an external test set, which is predicted once into
``<cache_dir>/external/<model>-<hash>/`` and read from there like any other split.
Cached loaders are keyed by path and modification time.
"""

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core import calibration, evaluate, metrics, modelio, paths
from core.data import DatasetError
from ui import evaluate_figures as figs
from ui.frame import dataset_table

# Session-state keys of this page (ids and small values only).
KEY_MODEL = "evaluate_model"
KEY_SPLIT = "evaluate_split"
KEY_POSITIVE = "evaluate_positive"
KEY_THRESHOLD = "evaluate_threshold"
KEY_TARGET = "evaluate_target_sensitivity"
KEY_CELL_TRUE = "evaluate_cell_true"
KEY_CELL_PRED = "evaluate_cell_pred"
KEY_CELL_EVENT = "evaluate_cell_last_selection"
KEY_COMPARE = "evaluate_compare"
KEY_EXTERNAL = "evaluate_external_result"

N_BOOT = 1000
SEED = 0
SPLIT_LABELS = {"val": "validation", "test": "test", "external": "external test set"}
MAX_CELL_IMAGES = 12


@dataclass(frozen=True)
class Source:
    """One evaluable set of predictions: a model folder and a split."""

    model: evaluate.Evaluable
    split: str
    csv: Path
    truth: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.model.name} · {SPLIT_LABELS[self.split]}"


# ---------------------------------------------------------------- loaders


def _mtime(path: Path) -> int:
    return Path(path).stat().st_mtime_ns


@st.cache_data(max_entries=32, show_spinner=False)
def _read_predictions(csv: str, mtime: int, classes: tuple) -> pd.DataFrame:
    """``core.evaluate.read_predictions`` behind the cache; ``mtime`` is only a key."""
    return evaluate.read_predictions(Path(csv), classes)


@st.cache_data(max_entries=8, show_spinner=False)
def _read_metadata(model_dir: str, mtime: int) -> dict:
    return modelio.read_metadata(Path(model_dir))


def model_metadata(model_dir: Path) -> dict:
    """``model.json`` of a model folder, cached by its modification time."""
    return _read_metadata(str(model_dir), _mtime(Path(model_dir) / modelio.METADATA_FILE))


def classes_of(source: Source) -> list:
    """The class codes of the source's model, in output order."""
    return list(model_metadata(source.model.path)["classes"])


def load_source(source: Source) -> pd.DataFrame:
    """The validated predictions of a source (cached); raises ``PredictionsError``."""
    return _read_predictions(str(source.csv), _mtime(source.csv), tuple(classes_of(source)))


@st.cache_data(max_entries=32, show_spinner="Bootstrapping confidence intervals…")
def _headline(csv: str, mtime: int, classes: tuple, positive: str, threshold: float) -> pd.DataFrame:
    preds = evaluate.read_predictions(Path(csv), classes)
    y_true, probs = evaluate.arrays(preds, classes)
    return metrics.headline(y_true, probs, classes, positive=positive, threshold=threshold, n_boot=N_BOOT, seed=SEED)


def headline_table(source: Source, positive: str, threshold: float) -> pd.DataFrame:
    """Headline metrics with bootstrap intervals of a source (cached)."""
    return _headline(str(source.csv), _mtime(source.csv), tuple(classes_of(source)), positive, round(threshold, 4))


@st.cache_data(max_entries=8, show_spinner=False)
def _read_truth_table(csv: str, mtime: int) -> pd.DataFrame:
    return pd.read_csv(csv, dtype={"image_id": str})


def image_table(source: Source) -> pd.DataFrame | None:
    """Image paths and metadata for a source: the dataset for val/test, the truth table for external."""
    if source.truth is not None:
        return _read_truth_table(str(source.truth), _mtime(source.truth)) if source.truth.is_file() else None
    try:
        return dataset_table()
    except DatasetError:
        return None


# ---------------------------------------------------------------- pickers


def evaluable_models() -> list:
    """Model folders with predictions (a directory listing: cheap, never cached)."""
    return evaluate.list_evaluable()


def source_for(model: evaluate.Evaluable, split: str) -> Source | None:
    """The source of a model and split; for ``external`` the form and result picker decide."""
    if split == "external":
        return external_source(model)
    return Source(model, split, model.path / evaluate.SPLIT_FILES[split])


def no_models_message() -> None:
    """Explain that nothing can be evaluated yet, and how to change that."""
    st.warning(
        "No model with saved predictions was found. Evaluation reads `predictions_val.csv` / "
        f"`predictions_test.csv` from the shipped model (`{paths.default_model_dir()}`) or from finished "
        f"training runs under `{paths.runs_dir()}`. Train a model on the Train page, or set "
        "`HAM_DEFAULT_MODEL` / `HAM_RUNS_DIR`."
    )


def pick_model(models: list) -> evaluate.Evaluable:
    """Selectbox of evaluable models, the shipped default first."""
    names = [m.name for m in models]
    if st.session_state.get(KEY_MODEL) not in names:
        st.session_state[KEY_MODEL] = names[0]
    name = st.selectbox("Model", names, key=KEY_MODEL, help="The shipped model and every finished run with predictions.")
    return models[names.index(name)]


def pick_split(model: evaluate.Evaluable) -> str:
    """Radio of the model's splits plus the external test set; test is preselected when present."""
    options = [s for s in ("val", "test") if s in model.splits] + ["external"]
    if st.session_state.get(KEY_SPLIT) not in options:
        st.session_state[KEY_SPLIT] = "test" if "test" in options else options[0]
    return st.radio("Split", options, key=KEY_SPLIT, horizontal=True, format_func=SPLIT_LABELS.get)


def positive_class(classes: list) -> str:
    """The class of the operating point: the user's choice, else melanoma, else the first class."""
    chosen = st.session_state.get(KEY_POSITIVE)
    if chosen in classes:
        return chosen
    return "mel" if "mel" in classes else classes[0]


def threshold() -> float:
    """The operating threshold chosen on the operating-point tab (0.5 until moved)."""
    return float(st.session_state.get(KEY_THRESHOLD, 0.5))


def fmt_ci(value: float, low: float, high: float) -> str:
    """``0.812 [0.781, 0.842]``; intervals left out when not computed."""
    if np.isnan(value):
        return "n/a"
    if np.isnan(low) or np.isnan(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def split_caption(source: Source, n: int) -> str:
    """The split and size every number on the page refers to."""
    return f"**{source.label}** · n = {n:,} images"


def figure_download(fig, name: str, key: str) -> None:
    """Buttons that download a figure as self-contained HTML, and as PNG when kaleido is installed.

    Files are built only when clicked. PNG export needs the optional ``kaleido``
    package and a Chrome or Chromium on the machine.
    """
    left, right = st.columns(2)
    left.download_button(
        "Download figure (HTML)", data=lambda: fig.to_html(include_plotlyjs=True, full_html=True),
        file_name=f"{name}.html", mime="text/html", key=key, on_click="ignore",
    )
    if png_export_available():
        right.download_button(
            "Download figure (PNG)", data=lambda: fig.to_image(format="png", scale=2),
            file_name=f"{name}.png", mime="image/png", key=f"{key}_png", on_click="ignore",
        )


def png_export_available() -> bool:
    """True when plotly can write PNG through the optional kaleido package."""
    return importlib.util.find_spec("kaleido") is not None


# ---------------------------------------------------------------- external test set


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
    return sorted(mine, key=lambda p: _mtime(p / "source.json"), reverse=True)


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
    key = "|".join([str(Path(model_dir).resolve()), str(_mtime(Path(model_dir) / modelio.MODEL_FILE)),
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


# ---------------------------------------------------------------- panels


def summary_panel(source: Source, preds: pd.DataFrame) -> None:
    """Headline metrics with bootstrap 95 % intervals."""
    classes = classes_of(source)
    positive, t = positive_class(classes), threshold()
    table = headline_table(source, positive, t)
    st.markdown(split_caption(source, len(preds)))
    columns = st.columns(3)
    for i, row in table.iterrows():
        with columns[i % 3]:
            st.metric(row["label"], f"{row['value']:.3f}" if np.isfinite(row["value"]) else "n/a")
            st.caption(f"95 % CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}] · n = {row['n']:,}")
    st.caption(
        f"Intervals: percentile bootstrap over images, {N_BOOT} resamples, seed {SEED}. "
        f"{positive} sensitivity/specificity call a case {positive} when p({positive}) ≥ {t:.2f} "
        "(change the threshold on the Operating point tab). Balanced accuracy is the ISIC 2018 metric "
        "(mean per-class recall)."
    )


def confusion_panel(source: Source, preds: pd.DataFrame) -> None:
    """Confusion matrix (counts and row shares); a selected cell shows its images."""
    classes = classes_of(source)
    y_true, probs = evaluate.arrays(preds, classes)
    counts = metrics.confusion_counts(y_true, metrics.predicted_labels(probs), len(classes))
    normalised = metrics.row_normalise(counts)
    st.markdown(split_caption(source, len(preds)) + " · rows: true class, columns: predicted (arg-max)")
    fig = figs.confusion_figure(counts, normalised, classes, f"Confusion matrix — {source.label}, n = {len(preds)}")
    event = st.plotly_chart(fig, key="evaluate_confusion_chart", on_select="rerun", selection_mode=("points", "box"))
    keys = _cell_keys(source)
    _apply_cell_selection(event, classes, keys)
    figure_download(fig, f"confusion_{source.split}", "evaluate_dl_confusion")
    st.caption("Drag a small box over a cell (or pick the cell below) to see its images.")
    true_class, pred_class = _cell_pickers(classes, counts, keys)
    mask = (preds["dx"] == true_class).to_numpy() & (metrics.predicted_labels(probs) == classes.index(pred_class))
    _cell_images(source, preds[mask], classes, true_class, pred_class)


def _cell_keys(source: Source) -> tuple:
    """Selectbox keys per source, so a cell picked on one split never leaks into another."""
    suffix = hashlib.sha256(str(source.csv).encode()).hexdigest()[:10]
    return f"{KEY_CELL_TRUE}_{suffix}", f"{KEY_CELL_PRED}_{suffix}"


def _apply_cell_selection(event, classes: list, keys: tuple) -> None:
    """Copy a newly clicked heatmap cell into the two cell selectboxes."""
    points = event.get("selection", {}).get("points", []) if event else []
    cells = [(p.get("y"), p.get("x")) for p in points if p.get("x") in classes and p.get("y") in classes]
    if cells and cells[0] != st.session_state.get(KEY_CELL_EVENT):
        st.session_state[KEY_CELL_EVENT] = cells[0]
        st.session_state[keys[0]], st.session_state[keys[1]] = cells[0]


def _cell_pickers(classes: list, counts: np.ndarray, keys: tuple) -> tuple:
    """Two selectboxes naming a cell; the largest off-diagonal cell is the default."""
    if st.session_state.get(keys[0]) not in classes or st.session_state.get(keys[1]) not in classes:
        off = counts.copy()
        np.fill_diagonal(off, -1)
        i, j = np.unravel_index(int(off.argmax()), off.shape)
        st.session_state[keys[0]], st.session_state[keys[1]] = classes[i], classes[j]
    left, right = st.columns(2)
    true_class = left.selectbox("True class", classes, key=keys[0])
    pred_class = right.selectbox("Predicted class", classes, key=keys[1])
    return true_class, pred_class


def _cell_images(source: Source, cell: pd.DataFrame, classes: list, true_class: str, pred_class: str) -> None:
    st.markdown(f"**{len(cell)} images** with true class **{true_class}** predicted as **{pred_class}**")
    if cell.empty:
        return
    table = image_table(source)
    found = dict(zip(table["image_id"].astype(str), table["path"].astype(str))) if table is not None else {}
    shown = cell.assign(confidence=cell[pred_class]).sort_values("confidence", ascending=False).head(MAX_CELL_IMAGES)
    if not found:
        st.info("Images are not available (dataset not found), so only their probabilities are listed.")
    columns = st.columns(4)
    for i, (_, row) in enumerate(shown.iterrows()):
        top = row[classes].astype(float).sort_values(ascending=False).head(3)
        caption = f"{row['image_id']} · true {row['dx']} · " + ", ".join(f"{c} {p:.2f}" for c, p in top.items())
        path = found.get(row["image_id"], "")
        with columns[i % 4]:
            if path and Path(path).is_file():
                st.image(path, caption=caption, width="stretch")
            else:
                st.caption(caption)
    st.dataframe(shown[["image_id", "dx", *classes]], hide_index=True, width="stretch")


def class_table_panel(source: Source, preds: pd.DataFrame) -> None:
    """Per-class ISIC metrics with their macro average."""
    classes = classes_of(source)
    y_true, probs = evaluate.arrays(preds, classes)
    table = metrics.class_table(y_true, probs, classes)
    table.loc["macro"] = metrics.macro_average(table)
    st.markdown(split_caption(source, len(preds)))
    st.dataframe(table.style.format(precision=3).format("{:.0f}", subset=["support"]), width="stretch")
    st.caption(
        "Sensitivity, specificity, PPV, NPV and F1 are one-vs-rest counts of the arg-max prediction. "
        "AUC and AP use the class probability; auc_sens_80 is ISIC's ROC AUC above 80 % sensitivity "
        "(raw area where TPR ≥ 0.8; 1 = perfect, 0.18 = chance). Macro = unweighted mean over classes."
    )


def curves_panel(source: Source, preds: pd.DataFrame) -> None:
    """ROC and precision-recall curves per class."""
    classes = classes_of(source)
    y_true, probs = evaluate.arrays(preds, classes)
    table = metrics.class_table(y_true, probs, classes)
    st.markdown(split_caption(source, len(preds)))
    left, right = st.columns(2)
    roc = figs.roc_figure(metrics.roc_curves(y_true, probs, classes), table["auc"].to_dict(),
                          f"ROC, one vs rest — {source.label}, n = {len(preds)}")
    pr = figs.pr_figure(metrics.pr_curves(y_true, probs, classes), table["ap"].to_dict(),
                        f"Precision-recall — {source.label}, n = {len(preds)}")
    with left:
        st.plotly_chart(roc, key="evaluate_roc_chart")
        figure_download(roc, f"roc_{source.split}", "evaluate_dl_roc")
    with right:
        st.plotly_chart(pr, key="evaluate_pr_chart")
        figure_download(pr, f"pr_{source.split}", "evaluate_dl_pr")


def operating_point_panel(source: Source, preds: pd.DataFrame) -> None:
    """Sensitivity, specificity and PPV at a threshold, and the threshold reaching a target sensitivity."""
    classes = classes_of(source)
    st.session_state[KEY_POSITIVE] = positive_class(classes)
    st.session_state.setdefault(KEY_THRESHOLD, 0.5)
    st.session_state.setdefault(KEY_TARGET, 0.9)
    st.markdown(split_caption(source, len(preds)))
    left, right = st.columns(2)
    positive = left.selectbox("Class", classes, key=KEY_POSITIVE, format_func=lambda c: f"{c} (positive)")
    t = left.slider("Threshold on p(class)", 0.0, 1.0, step=0.01, key=KEY_THRESHOLD)
    y_bin = (preds["dx"] == positive).to_numpy()
    scores = preds[positive].to_numpy(dtype=np.float64)
    point = metrics.operating_point(y_bin, scores, t)
    _point_metrics(left, point, f"at threshold {t:.2f}")
    target = right.slider("Target sensitivity", 0.5, 1.0, step=0.01, key=KEY_TARGET)
    reached = metrics.threshold_for_sensitivity(y_bin, scores, target)
    if np.isnan(reached):
        right.info(f"No {positive} images in this split.")
        return
    right.metric("Threshold reaching the target", f"{reached:.4f}")
    _point_metrics(right, metrics.operating_point(y_bin, scores, reached), f"at threshold {reached:.4f}")
    st.caption(
        f"A case is called {positive} when p({positive}) ≥ threshold. Of all thresholds reaching the target "
        f"sensitivity, the highest (best specificity) is shown. {int(y_bin.sum())} {positive} images of {len(preds)}."
    )


def _point_metrics(container, point: dict, where: str) -> None:
    a, b, c, d = container.columns(4)
    a.metric("Sensitivity", _fmt(point["sensitivity"]))
    b.metric("Specificity", _fmt(point["specificity"]))
    c.metric("PPV", _fmt(point["ppv"]))
    d.metric("NPV", _fmt(point["npv"]))
    container.caption(f"{where}: TP {point['tp']}, FP {point['fp']}, FN {point['fn']}, TN {point['tn']}")


def _fmt(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


@st.cache_data(max_entries=8, show_spinner="Fitting the temperature…")
def _fit_temperature(csv: str, mtime: int, classes: tuple) -> float:
    preds = evaluate.read_predictions(Path(csv), classes)
    y_true, probs = evaluate.arrays(preds, classes)
    return calibration.fit_temperature(probs, y_true)


def calibration_panel(source: Source, preds: pd.DataFrame) -> None:
    """Reliability before and after temperature scaling fitted on validation; save the temperature."""
    classes = classes_of(source)
    meta = model_metadata(source.model.path)
    val_csv = source.model.path / evaluate.SPLIT_FILES["val"]
    y_true, probs = evaluate.arrays(preds, classes)
    st.markdown(split_caption(source, len(preds)))
    fitted = _fit_temperature(str(val_csv), _mtime(val_csv), tuple(classes)) if val_csv.is_file() else None
    tables = {"uncalibrated": calibration.reliability(probs, y_true)}
    if fitted:
        tables[f"T = {fitted:.3f} (fitted on validation)"] = calibration.reliability(
            calibration.apply_temperature(probs, fitted), y_true)
    fig = figs.reliability_figure(tables, f"Reliability (top label, 15 bins) — {source.label}, n = {len(preds)}")
    st.plotly_chart(fig, key="evaluate_reliability_chart")
    figure_download(fig, f"reliability_{source.split}", "evaluate_dl_reliability")
    st.dataframe(calibration.calibration_summary(probs, y_true, fitted).style.format(precision=4), hide_index=True)
    _temperature_controls(source, meta, fitted)


def _temperature_controls(source: Source, meta: dict, fitted: float | None) -> None:
    stored = meta.get("temperature")
    st.caption(
        "ECE: top-label, 15 equal-width confidence bins. Brier: multiclass (0 best, 2 worst). "
        f"Stored temperature in model.json: {stored if stored is not None else 'none'}. "
        "Calibrated probabilities are softmax(log(p) / T); Predict applies the stored T."
    )
    if fitted is None:
        st.info("No validation predictions in this model folder, so no temperature can be fitted.")
        return
    if source.split == "val":
        st.caption("This is the split the temperature was fitted on: judge it on test or external data.")
    if st.button(f"Save T = {fitted:.3f} into model.json", key="evaluate_save_temperature"):
        try:
            calibration.save_temperature(source.model.path, fitted)
        except (OSError, ValueError) as err:
            st.error(f"Could not save the temperature: {err}")
        else:
            st.success(f"Saved temperature {fitted:.3f} into {source.model.path / modelio.METADATA_FILE}.")


@st.cache_data(max_entries=16, show_spinner="Auditing subgroups…")
def _subgroups(preds: pd.DataFrame, groups: pd.DataFrame, classes: tuple, positive: str, t: float) -> pd.DataFrame:
    y_true, probs = evaluate.arrays(preds, classes)
    return metrics.subgroup_audit(y_true, probs, groups, classes, positive=positive, threshold=t, seed=SEED)


def subgroup_panel(source: Source, preds: pd.DataFrame) -> None:
    """Headline metrics by sex, age band, body site and dx type, with n and intervals."""
    classes = classes_of(source)
    table = image_table(source)
    if table is None:
        st.info("No metadata for these images (dataset not found: set HAM10000_DIR), so no subgroup audit.")
        return
    merged = preds.merge(table[["image_id", "sex", "age", "localization", "dx_type"]], on="image_id", how="inner")
    groups = pd.DataFrame({"sex": merged["sex"], "age_band": metrics.age_band(merged["age"]),
                           "localization": merged["localization"], "dx_type": merged["dx_type"]})
    informative = [c for c in groups if set(groups[c].fillna("unknown").astype(str)) != {"unknown"}]
    st.markdown(split_caption(source, len(preds)) + f" · {len(merged):,} matched with metadata")
    if merged.empty or not informative:
        st.info("These images have no sex, age, body-site or dx-type metadata, so no subgroup audit.")
        return
    positive, t = positive_class(classes), threshold()
    audit = _subgroups(merged[preds.columns], groups[informative], tuple(classes), positive, round(t, 4))
    for grouping, part in audit.groupby("grouping", sort=False):
        st.markdown(f"**By {grouping}**")
        st.dataframe(_audit_display(part, positive), hide_index=True, width="stretch")
    st.caption(f"Bootstrap 95 % intervals (500 resamples per group). {positive} sensitivity/specificity at "
               f"threshold {t:.2f}. Small groups have wide intervals: read n before the value.")


def _audit_display(part: pd.DataFrame, positive: str) -> pd.DataFrame:
    shown = part[["group", "n"] + ([f"n_{positive}"] if f"n_{positive}" in part else [])].copy()
    for metric, label in (("balanced_accuracy", "balanced accuracy"), (f"sensitivity_{positive}",
                          f"{positive} sensitivity"), (f"specificity_{positive}", f"{positive} specificity")):
        if metric in part:
            shown[label] = [fmt_ci(v, lo, hi) for v, lo, hi in
                            zip(part[metric], part[f"{metric}_low"], part[f"{metric}_high"])]
    shown["macro AUC"] = part["macro_auc"].map(_fmt)
    return shown


def compare_panel(models: list, source: Source) -> None:
    """Headline metrics and overlaid ROC curves of several runs on the same split."""
    if source.split == "external":
        st.info("Comparison works on the validation and test splits saved in each model folder.")
        return
    candidates = [m for m in models if source.split in m.splits]
    names = [m.name for m in candidates]
    if len(names) < 2:
        st.info(f"Only one model has {SPLIT_LABELS[source.split]} predictions: nothing to compare yet.")
        return
    default = [n for n in st.session_state.get(KEY_COMPARE, []) if n in names] or names[:2]
    st.session_state[KEY_COMPARE] = default
    chosen = st.multiselect(f"Runs to compare on the {SPLIT_LABELS[source.split]} split", names, key=KEY_COMPARE)
    sources = [Source(m, source.split, m.path / evaluate.SPLIT_FILES[source.split]) for m in candidates if m.name in chosen]
    if len(sources) < 2:
        st.info("Pick two or more runs.")
        return
    _warn_different_splits(sources)
    positive = positive_class(classes_of(source))
    st.dataframe(_comparison_table(sources, positive, threshold()), hide_index=True, width="stretch")
    class_name = st.selectbox("ROC curves of class", classes_of(source), index=classes_of(source).index(positive),
                              key="evaluate_compare_class")
    curves = {}
    for s in sources:
        preds = load_source(s)
        y_true, probs = evaluate.arrays(preds, classes_of(s))
        roc = metrics.roc_curves(y_true, probs, classes_of(s))
        curves[f"{s.model.name} (n = {len(preds)})"] = roc[roc["class"] == class_name]
    fig = figs.compare_roc_figure(curves, f"ROC of {class_name}, {SPLIT_LABELS[source.split]} split")
    st.plotly_chart(fig, key="evaluate_compare_chart")
    figure_download(fig, f"compare_roc_{class_name}", "evaluate_dl_compare")


def _comparison_table(sources: list, positive: str, t: float) -> pd.DataFrame:
    rows = []
    for s in sources:
        table = headline_table(s, positive, t)
        row = {"run": s.model.name, "split": SPLIT_LABELS[s.split], "n": int(table["n"].iloc[0])}
        row.update({r["label"]: fmt_ci(r["value"], r["ci_low"], r["ci_high"]) for _, r in table.iterrows()})
        rows.append(row)
    return pd.DataFrame(rows)


def _warn_different_splits(sources: list) -> None:
    hashes = {model_metadata(s.model.path).get("split_sha256") for s in sources}
    if len(hashes) > 1:
        st.warning("These runs were evaluated on different splits (split_sha256 differs): "
                   "their numbers come from different images and are not directly comparable.")


@st.cache_data(max_entries=16, show_spinner="Computing all metrics…")
def _metrics_csv(csv: str, mtime: int, classes: tuple, split: str, positive: str, t: float) -> bytes:
    preds = evaluate.read_predictions(Path(csv), classes)
    tidy = evaluate.metrics_frame(preds, classes, split, positive=positive, threshold=t, n_boot=N_BOOT, seed=SEED)
    return tidy.to_csv(index=False).encode("utf-8")


def export_panel(source: Source, preds: pd.DataFrame) -> None:
    """Downloads: metrics CSV, ISIC submission CSV, predictions and confusion matrix."""
    classes = classes_of(source)
    positive, t = positive_class(classes), threshold()
    st.markdown(split_caption(source, len(preds)))
    stem = f"{source.model.name.split(' ')[0]}_{source.split}"
    metrics_csv = _metrics_csv(str(source.csv), _mtime(source.csv), tuple(classes), source.split, positive, round(t, 4))
    st.download_button("Metrics CSV (headline with 95 % CI, per class, macro)", metrics_csv,
                       file_name=f"metrics_{stem}.csv", mime="text/csv", key="evaluate_dl_metrics")
    try:
        submission = evaluate.submission_frame(preds, classes).to_csv(index=False, float_format="%.6f")
    except evaluate.PredictionsError as err:
        st.info(f"No ISIC submission: {err}")
    else:
        st.download_button("ISIC submission CSV (image, MEL, NV, BCC, AKIEC, BKL, DF, VASC)", submission,
                           file_name=f"isic_submission_{stem}.csv", mime="text/csv", key="evaluate_dl_submission")
    y_true, probs = evaluate.arrays(preds, classes)
    counts = metrics.confusion_counts(y_true, metrics.predicted_labels(probs), len(classes))
    confusion = pd.DataFrame(counts, index=pd.Index(classes, name="true"), columns=classes)
    st.download_button("Confusion matrix CSV (counts)", confusion.to_csv(), file_name=f"confusion_{stem}.csv",
                       mime="text/csv", key="evaluate_dl_confusion_csv")
    st.download_button("Predictions CSV", preds.to_csv(index=False), file_name=f"predictions_{stem}.csv",
                       mime="text/csv", key="evaluate_dl_predictions")
    formats = "HTML or PNG" if png_export_available() else "HTML (PNG needs the optional kaleido package)"
    st.caption(f"Figures download as {formats} from the buttons under each chart.")
