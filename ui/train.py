"""Streamlit pieces of the Train page: options form, run history and run monitor.

The run folder is the truth: nothing here caches status or metrics, and session
state holds only the id of the opened run (and of a run awaiting delete
confirmation), so a reload or a server restart reattaches to the active run.
"""

import io
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core import data, paths, runs

SELECTED_RUN = "train_selected_run"
CONFIRM_DELETE = "train_confirm_delete"
POLL_SECONDS = 2.0
LOG_LINES = 200

HELP = {
    "arch": "Network. small_cnn is a tiny net trained from scratch (fast, weak); mobilenet_v2 and "
    "mobilenet_v3_small are light ImageNet backbones; efficientnet_b0 is the most accurate and slowest.",
    "weights": "Initial weights. none: random. imagenet: Keras download (needs internet). "
    "offline-imagenet: a bundled MobileNetV2 ImageNet checkpoint, no network (mobilenet_v2 only).",
    "image_size": "Width of the model input in pixels; images are stretched to it. "
    "Larger sees more detail but trains roughly quadratically slower.",
    "image_height": "Height of the model input in pixels; 0 makes the input square. "
    "HAM10000 images are 4:3, so 144 for a width of 192 keeps the whole frame undistorted.",
    "label_smoothing": "Share of each one-hot target spread over the other classes; "
    "0.1 often calibrates and generalises better.",
    "epochs": "Total passes over the training images, warm-up included.",
    "warmup_epochs": "First epochs train only the new classifier head with the backbone frozen, "
    "so large early gradients do not wreck the pretrained features.",
    "unfreeze": "After warm-up, fine-tune only the top N backbone layers (0 = all layers). "
    "Fewer layers: faster and less over-fitting on small data.",
    "batch_size": "Images per gradient step. Larger is smoother but needs more memory.",
    "lr": "Learning rate during warm-up (head only).",
    "finetune_lr": "Peak learning rate after warm-up, decayed with a cosine schedule. "
    "Keep it ~10× below the warm-up rate to preserve pretrained features.",
    "dropout": "Share of features dropped before the classifier during training (regularisation).",
    "imbalance": "HAM10000 is 67% nevi. class_weight: weight the loss by inverse class frequency. "
    "oversample: draw every class equally often. focal: focal loss (gamma 2). none: plain loss.",
    "augment": "Random changes to training images. light: flips and 90° rotations. "
    "strong: also free rotation, zoom and colour jitter.",
    "seed": "Seed of the split, initialisation and sampling: same seed, same split and run.",
    "val_fraction": "Share of images (whole lesions) held out for validation: picks the best epoch.",
    "test_fraction": "Share of images (whole lesions) held out for the final test, never used in training.",
    "max_images": "Train on a lesion-grouped sample of about N images for a quick try (0 = all images).",
}


# ---------------------------------------------------------------- new run


def dataset_notice() -> bool:
    """Say so when there is no dataset; True when one was found."""
    root = paths.dataset_dir()
    if data.find_metadata(root) is not None:
        return True
    st.warning(
        f"No HAM10000 dataset found at `{root}`, so training cannot start. Set the environment "
        "variable `HAM10000_DIR` to a folder holding `HAM10000_metadata.csv` and the images "
        "(or fetch it with `python -m core.data download`), then restart the app."
    )
    return False


def _number(key: str, label: str, **kwargs):
    """A number input whose bounds come from the registry's option rules."""
    _, low, high = runs.OPTION_RULES[key]
    default = runs.DEFAULT_OPTIONS[key]
    return st.number_input(label, min_value=type(default)(low), max_value=type(default)(high),
                           value=default, help=HELP[key], key=f"train_opt_{key}", **kwargs)


def _choice(key: str, label: str, choices) -> str:
    return st.selectbox(label, choices, index=list(choices).index(runs.DEFAULT_OPTIONS[key]),
                        help=HELP[key], key=f"train_opt_{key}")


def options_form(enabled: bool = True) -> dict | None:
    """Draw the options form; return valid options when launched, else None.

    Validation errors are shown under the form and None is returned.
    """
    with st.form("train_options", border=False):
        model, schedule, sampling = st.columns(3)
        with model:
            st.markdown("**Model**")
            options = {"arch": _choice("arch", "Architecture", runs.ARCHS),
                       "weights": _choice("weights", "Initial weights", runs.WEIGHTS),
                       "image_size": _number("image_size", "Input width (px)", step=32),
                       "image_height": _number("image_height", "Input height (px, 0 = square)", step=16),
                       "dropout": _number("dropout", "Dropout", step=0.05),
                       "label_smoothing": _number("label_smoothing", "Label smoothing", step=0.05)}
        with schedule:
            st.markdown("**Schedule**")
            options |= {"epochs": _number("epochs", "Epochs"),
                        "warmup_epochs": _number("warmup_epochs", "Warm-up epochs"),
                        "unfreeze": _number("unfreeze", "Unfreeze top N layers (0 = all)"),
                        "batch_size": _number("batch_size", "Batch size", step=8),
                        "lr": _number("lr", "Warm-up learning rate", step=1e-4, format="%.1e"),
                        "finetune_lr": _number("finetune_lr", "Fine-tune learning rate", step=1e-5,
                                               format="%.1e")}
        with sampling:
            st.markdown("**Data**")
            options |= _data_options()
        submitted = st.form_submit_button("🚀 Launch training", type="primary", disabled=not enabled)
    if not submitted:
        return None
    errors = runs.validate_options(options)
    if errors:
        st.error("Cannot launch, fix these options first:\n" + "\n".join(f"- {e}" for e in errors))
        return None
    return options


def _data_options() -> dict:
    return {"imbalance": _choice("imbalance", "Class imbalance", runs.IMBALANCE),
            "augment": _choice("augment", "Augmentation", runs.AUGMENT),
            "seed": _number("seed", "Seed"),
            "val_fraction": _number("val_fraction", "Validation share", step=0.05),
            "test_fraction": _number("test_fraction", "Test share", step=0.05),
            "max_images": _number("max_images", "Max images (0 = all)", step=500)}


def launch_run(options: dict) -> Path | None:
    """Launch a run and open it; show why when it cannot start."""
    try:
        run_dir = runs.launch(options)
    except runs.RunBusyError as err:
        st.error(f"Not launched: {err}. Stop it or wait until it ends; only one run trains at a time.")
        return None
    except runs.OptionsError as err:
        st.error("Not launched:\n" + "\n".join(f"- {e}" for e in err.errors))
        return None
    except OSError as err:
        st.error(f"Not launched: could not start the trainer ({err}).")
        return None
    st.session_state[SELECTED_RUN] = run_dir.name
    st.success(f"Launched run `{run_dir.name}`; it is shown below.")
    return run_dir


# ---------------------------------------------------------------- history


def history_table(infos: list) -> None:
    """The run history: status, model, best validation metrics, duration, start."""
    table = runs.run_summary_table(infos)
    score = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, width="stretch", placeholder="–",
                 column_config={"val bal. acc": score, "val AUC": score, "val acc": score,
                                "best epoch": st.column_config.NumberColumn(format="%d")})


def pick_run(infos: list) -> str | None:
    """A run chooser; opens the active run by default so a reload reattaches to it."""
    ids = [info["id"] for info in infos]
    if not ids:
        return None
    if st.session_state.get(SELECTED_RUN) not in ids:
        active = next((i["id"] for i in infos if i["state"] in runs.ACTIVE_STATES), None)
        st.session_state[SELECTED_RUN] = active or ids[0]
    # Plain ids: the browser keeps a selectbox's shown label when only its text changes,
    # so a state in the label would go stale when a run ends.
    return st.selectbox("Open a run", ids, key=SELECTED_RUN)


# ---------------------------------------------------------------- one run


def run_view(run_id: str) -> None:
    """Show one run; polls every few seconds only while the run is active."""
    run_dir = paths.runs_dir() / run_id
    active = runs.is_active(runs.read_status(run_dir))
    panel = st.fragment(_run_panel, run_every=POLL_SECONDS if active else None)
    panel(run_id, active)


def _run_panel(run_id: str, was_active: bool) -> None:
    run_dir = paths.runs_dir() / run_id
    if not run_dir.is_dir():
        st.info(f"Run `{run_id}` no longer exists.")
        return
    status = runs.read_status(run_dir)
    if was_active and not runs.is_active(status):
        st.rerun()  # the run ended: redraw the page so history updates and polling stops
    metrics = runs.read_metrics(run_dir)
    _status_line(run_id, status)
    if runs.is_active(status):
        _live_progress(run_dir, status, metrics)
    _best_metrics(status)
    _curves(metrics)
    _details(run_dir)
    if not runs.is_active(status):
        _actions(run_dir, status)


STATE_BADGES = {"queued": "🕓", "running": "🏃", "done": "✅", "stopped": "⏹️",
                "failed": "❌", "crashed": "💥", "unknown": "❔"}


def _status_line(run_id: str, status: dict) -> None:
    state = status["state"]
    st.markdown(f"#### {STATE_BADGES.get(state, '')} `{run_id}` — {state}")
    message = status.get("message") or ""
    # While training, the progress bar already says which epoch runs.
    if message and not (runs.is_active(status) and message.startswith("epoch ")):
        show = st.error if state in ("failed", "crashed") else st.caption
        show(message)


def _live_progress(run_dir: Path, status: dict, metrics: runs.Metrics) -> None:
    share = runs.progress(status, metrics)
    left = runs.eta(status, metrics)
    eta_text = f"ETA {runs.format_duration(left)}" if left is not None else "ETA: estimating…"
    epoch, total = status.get("epoch") or 0, status.get("epochs") or "?"
    phase = status.get("phase") or "starting"
    st.progress(share, text=f"{share:.0%} · epoch {epoch}/{total} ({phase}) · {eta_text}")
    batch = metrics.batch or {}
    if batch.get("batches") and batch.get("epoch") == epoch:
        loss = f" · loss {batch['loss']:.4f}" if isinstance(batch.get("loss"), float) else ""
        st.progress(min(1.0, batch["batch"] / batch["batches"]),
                    text=f"batch {batch['batch']}/{batch['batches']} of epoch {epoch}{loss}")
    if (run_dir / runs.STOP_FILE).exists():
        st.info("Stop requested: the trainer stops after the current batch and keeps its checkpoint.")
    elif st.button("⏹️ Stop after this batch", key=f"train_stop_{run_dir.name}",
                   help="Asks the trainer to stop cooperatively; a stopped run can be resumed."):
        runs.request_stop(run_dir)
        st.info("Stop requested: the trainer stops after the current batch and keeps its checkpoint.")


def _best_metrics(status: dict) -> None:
    best = status.get("best") if isinstance(status.get("best"), dict) else None
    if not best:
        return
    cols = st.columns(4)
    cols[0].metric("Best epoch", best.get("epoch", "–"))
    for col, (key, label) in zip(cols[1:], [("val_balanced_accuracy", "Val balanced acc."),
                                            ("val_auc", "Val macro AUC"),
                                            ("val_accuracy", "Val accuracy")]):
        value = best.get(key)
        col.metric(label, f"{value:.3f}" if isinstance(value, (int, float)) else "–")


def _curves(metrics: runs.Metrics) -> None:
    if metrics.epochs.empty:
        st.caption("No finished epoch yet: curves appear after the first epoch.")
        return
    curves, lr = _figures(metrics.epochs.to_json(orient="split"))
    st.plotly_chart(curves, width="stretch", key="train_curves")
    if lr is not None:
        st.plotly_chart(lr, width="stretch", key="train_lr")


@st.cache_resource(max_entries=8, show_spinner=False)
def _figures(epochs_json: str) -> tuple:
    """The curve figures of some epoch rows, built once per content.

    Building a plotly figure takes ~0.3 s of CPU and the live view redraws every
    few seconds while the curves change once per epoch. Keyed by the rows'
    content, never by the live file.
    """
    epochs = pd.read_json(io.StringIO(epochs_json), orient="split")
    return curves_figure(epochs), (lr_figure(epochs) if "lr" in epochs else None)


CURVES = (("loss", "Loss"), ("accuracy", "Accuracy"),
          ("balanced_accuracy", "Balanced accuracy"), ("auc", "Macro AUC"))


def curves_figure(epochs: pd.DataFrame) -> go.Figure:
    """Train and validation curves per epoch: loss, accuracy, balanced accuracy, macro AUC."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in CURVES],
                        horizontal_spacing=0.08, vertical_spacing=0.14)
    for n, (key, _) in enumerate(CURVES):
        row, col = n // 2 + 1, n % 2 + 1
        for prefix, name, dash in (("", "train", "solid"), ("val_", "val", "dash")):
            if prefix + key in epochs:
                fig.add_trace(go.Scatter(x=epochs["epoch"], y=epochs[prefix + key], name=name,
                                         mode="lines+markers", legendgroup=name, showlegend=n == 0,
                                         line={"dash": dash, "color": "#1f77b4" if name == "train"
                                               else "#d62728"}), row=row, col=col)
    _mark_finetune(fig, epochs)
    fig.update_xaxes(dtick=1 if len(epochs) <= 20 else None)
    fig.update_xaxes(title_text="epoch", row=2)
    fig.update_layout(height=520, margin={"t": 40, "b": 20, "l": 20, "r": 20},
                      legend={"orientation": "h", "y": 1.1, "x": 1, "xanchor": "right"})
    return fig


def _mark_finetune(fig: go.Figure, epochs: pd.DataFrame) -> None:
    """A dotted line where fine-tuning starts (the backbone is unfrozen)."""
    if "phase" not in epochs:
        return
    finetune = epochs.loc[epochs["phase"] == "finetune", "epoch"]
    if len(finetune) and (epochs["phase"] == "warmup").any():
        fig.add_vline(x=float(finetune.min()) - 0.5, line={"dash": "dot", "color": "grey"})


def lr_figure(epochs: pd.DataFrame) -> go.Figure:
    """The learning rate of each epoch, on a log scale."""
    fig = go.Figure(go.Scatter(x=epochs["epoch"], y=epochs["lr"], mode="lines+markers",
                               line={"color": "#2ca02c"}, name="learning rate"))
    fig.update_layout(title="Learning rate", height=240, xaxis_title="epoch",
                      margin={"t": 40, "b": 20, "l": 20, "r": 20})
    fig.update_yaxes(type="log", dtick=1, exponentformat="power")
    fig.update_xaxes(dtick=1 if len(epochs) <= 20 else None)
    return fig


def _details(run_dir: Path) -> None:
    config = runs._read_json(run_dir / runs.CONFIG_FILE)
    with st.expander("Configuration"):
        if config:
            st.json(config, expanded=True)
        else:
            st.caption("No config.json yet (the trainer writes it once the data is loaded).")
    with st.expander(f"Log (last {LOG_LINES} lines)"):
        st.code(runs.log_tail(run_dir, LOG_LINES) or "(empty)", language=None)


# ---------------------------------------------------------------- actions


def _actions(run_dir: Path, status: dict) -> None:
    resume_col, delete_col = st.columns(2)
    with resume_col:
        _resume_button(run_dir, status)
    with delete_col:
        _delete_controls(run_dir)


def _resume_button(run_dir: Path, status: dict) -> None:
    if status["state"] not in runs.RESUMABLE_STATES:
        return
    if not (run_dir / runs.CONFIG_FILE).is_file():
        st.caption("Cannot resume: the run ended before writing its configuration. Launch a new run.")
        return
    if st.button("▶️ Resume", key=f"train_resume_{run_dir.name}",
                 help="Continue from the last completed epoch with the same options."):
        try:
            runs.resume(run_dir)
        except runs.RunError as err:
            st.error(f"Not resumed: {err}")
            return
        st.rerun()  # a full rerun schedules the live view


def _delete_controls(run_dir: Path) -> None:
    """A delete button that asks for confirmation before removing the folder."""
    name = run_dir.name
    if st.session_state.get(CONFIRM_DELETE) != name:
        st.button("🗑️ Delete run…", key=f"train_delete_{name}", on_click=_set_confirm, args=(name,))
        return
    st.warning(f"Delete run `{name}` and all its files (model, metrics, log)? This cannot be undone.")
    yes, no = st.columns(2)
    no.button("Cancel", key="train_delete_no", on_click=_set_confirm, args=(None,))
    if yes.button("Yes, delete", type="primary", key="train_delete_yes"):
        _set_confirm(None)
        try:
            runs.delete_run(run_dir)
        except runs.RunError as err:
            st.error(f"Not deleted: {err}")
            return
        st.rerun()  # redraw the whole page: the history lost a row


def _set_confirm(run_id: str | None) -> None:
    st.session_state[CONFIRM_DELETE] = run_id
