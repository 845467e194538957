"""Streamlit pieces of the Train page: options form, run history and run monitor.

The run folder is the truth: nothing here caches status or metrics, and session
state holds only the id of the opened run (and of a run awaiting delete
confirmation), so a reload or a server restart reattaches to the active run.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.dataset import data

from core.contracts import paths

from core.training import runs
from core.training import options as opts
from core.contracts import runfolder as rf
from ui.guard import public_config, public_text

SELECTED_RUN = "train_selected_run"
CONFIRM_DELETE = "train_confirm_delete"
TASK_KEY = "train_opt_task"
OPTION_KEY = "train_opt_{}_{}"  # task, option: each task keeps its own values
TASK_LABELS = {"classification": "Classification (7 diagnoses)", "segmentation": "Segmentation (lesion masks)"}
POLL_SECONDS = 2.0
LOG_LINES = 200
READ_ONLY_NOTE = ("Read-only mode: launching, stopping, resuming and deleting runs are switched off "
                  "on this server; runs can be watched and compared.")
GROUPS = (("model", "**Model**"), ("schedule", "**Schedule**"), ("data", "**Data**"))


# ---------------------------------------------------------------- new run


def dataset_notice() -> bool:
    """Say so when there is no dataset; True when one was found."""
    root = paths.dataset_dir()
    if data.find_metadata(root) is not None:
        return True
    st.warning(
        f"No HAM10000 dataset found at `{root}`, so training cannot start. Set the environment "
        "variable `HAM10000_DIR` to a folder holding `HAM10000_metadata.csv` and the images "
        "(or fetch it with `lesionlab data download`), then restart the app."
    )
    return False


def _key(task: str, name: str) -> str:
    return OPTION_KEY.format(task, name)


def _help(option: opts.Option) -> str:
    return option.help[:1].upper() + option.help[1:] + "."


def _init_form_state(task: str) -> None:
    """Give every form widget of ``task`` its schema default once, so callbacks may change it."""
    for option in opts.schema(task):
        if option.in_form and option.name != "task":
            st.session_state.setdefault(_key(task, option.name), option.default)


def _fit_caps(task: str) -> None:
    """Lower a capped field (warm-up) to its cap (epochs) before the fields are drawn: a shorter run
    shortens its warm-up, so the defaults never block the smallest run."""
    for option in opts.schema(task):
        cap = st.session_state.get(_key(task, option.cap)) if option.cap else None
        if isinstance(cap, int) and st.session_state.get(_key(task, option.name), 0) > cap:
            st.session_state[_key(task, option.name)] = cap


def apply_arch_defaults() -> None:
    """Set the options that depend on the chosen architecture to its sensible values."""
    arch = st.session_state[_key(opts.CLASSIFY, "arch")]
    for name, value in opts.arch_defaults(arch).items():
        st.session_state[_key(opts.CLASSIFY, name)] = value


def _widget(task: str, option: opts.Option):
    """The form widget of one option: bounds, choices and help come from the task's schema."""
    key = _key(task, option.name)
    if option.name == "arch":
        return st.selectbox(option.label, option.choices, key=key, on_change=apply_arch_defaults,
                            help=_help(option) + " Choosing one sets its initial weights, warm-up and learning rates.")
    if option.choices:
        return st.selectbox(option.label, option.choices, help=_help(option), key=key)
    high = option.high
    if option.cap:  # at most its cap's current value (warm-up: at most Epochs)
        high = min(high, st.session_state.get(_key(task, option.cap), high))
    extra = {k: v for k, v in (("step", option.step), ("format", option.fmt)) if v is not None}
    return st.number_input(option.label, min_value=option.kind(option.low), max_value=option.kind(high),
                           help=_help(option), key=key, **extra)


def new_run_form(enabled: bool = True) -> None:
    """The new-run form; changing a field redraws only the form, Launch starts the run and opens it."""
    st.fragment(_new_run_form)(enabled)


def launch_section() -> None:
    """The new-run form, or why no run can be launched from here (a read-only app, no dataset, a run active)."""
    if paths.read_only():
        st.info(READ_ONLY_NOTE)
        return
    dataset_ready = dataset_notice()
    active = runs.active_run()
    if active:
        st.info(f"Run `{active['id']}` is active (queued or training). Only one run trains at a time.")
    with st.expander("New training run", expanded=active is None):
        new_run_form(enabled=dataset_ready)


def _new_run_form(enabled: bool) -> None:
    options = options_form(enabled)
    if options is not None and launch_run(options) is not None:
        st.rerun()  # the whole page: the history lists the new run and the monitor opens it


def options_form(enabled: bool = True) -> dict | None:
    """Draw the options of the chosen task; return valid options when launched, else None.

    The task is chosen first: the fields, their defaults and ranges are that
    task's (:func:`core.training.options.schema`). Choosing an architecture sets its
    defaults (:func:`core.training.options.arch_defaults`). Validation errors, worded
    with the fields' labels, are shown under the form and None is returned.
    """
    task_option = opts.BY_NAME["task"]
    task = st.selectbox(task_option.label, task_option.choices, key=TASK_KEY, format_func=TASK_LABELS.get,
                        help=_help(task_option))
    _init_form_state(task)
    _fit_caps(task)
    values = {"task": task}
    fields = [o for o in opts.schema(task) if o.in_form and o.name != "task"]
    for column, (group, title) in zip(st.columns(len(GROUPS)), GROUPS):
        with column:
            st.markdown(title)
            for option in fields:
                if option.group == group:
                    values[option.name] = _widget(task, option)
    if not st.button("Launch training", type="primary", disabled=not enabled, icon=":material/rocket_launch:",
                     key="train_launch"):
        return None
    errors = runs.validate_options(values)
    if errors:
        st.error("Cannot launch, fix these options first:\n" + "\n".join(f"- {e}" for e in errors))
        return None
    return values


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


def past_runs() -> list:
    """Every run folder's summary, newest first (:func:`core.training.runs.list_runs`)."""
    return runs.list_runs()


def history_view() -> None:
    """The run history, refreshed with the live view while a run is active."""
    active = runs.active_run() is not None
    st.fragment(_history, run_every=POLL_SECONDS if active else None)()


def _history() -> None:
    history_table(runs.list_runs())


def history_table(infos: list) -> None:
    """The run history: status, model, best validation metrics, duration, start."""
    table = runs.run_summary_table(infos)
    score = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(table, hide_index=True, width="stretch", placeholder="–",
                 column_config={"val bal. acc": score, "val AUC": score, "val acc": score, "val Dice": score,
                                "task": st.column_config.TextColumn(help="classification (7 diagnoses) or "
                                                                    "segmentation (lesion masks)"),
                                "kept": st.column_config.TextColumn(help="the weights the run keeps: its best "
                                                                    "epoch on validation, or a mean of epochs")})


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
    task = (rf.read_json(run_dir / rf.CONFIG_FILE) or {}).get("task") or opts.CLASSIFY
    sizes = runs.split_sizes(run_dir)
    _status_line(run_id, status)
    if runs.is_active(status):
        _live_progress(run_dir, status, metrics, task)
    _best_metrics(status, task, sizes.get("val"))
    _curves(metrics, task, sizes)
    _details(run_dir)
    if not runs.is_active(status) and not paths.read_only():
        _actions(run_dir, status)


STATE_BADGES = {"queued": ":material/schedule:", "running": ":material/directions_run:",
                "done": ":green[:material/check_circle:]", "stopped": ":material/stop_circle:",
                "failed": ":red[:material/cancel:]", "crashed": ":red[:material/error:]", "unknown": ":material/help:"}


def _status_line(run_id: str, status: dict) -> None:
    state = status["state"]
    st.markdown(f"#### {STATE_BADGES.get(state, '')} `{run_id}` — {state}")
    message = status.get("message") or ""
    # While a phase runs, the progress bars already say what the trainer does.
    if message and not (runs.is_active(status) and status.get("phase")):
        show = st.error if state in ("failed", "crashed") else st.caption
        show(public_text(message))


# What the monitor calls each phase the trainer writes into status.json (core.contracts.runfolder).
PHASE_TEXT = {"warmup": "warm-up (head only)", "finetune": "fine-tuning", "train": "training",
              rf.VALIDATE_PHASE: "scoring validation", "average": "scoring the averaged weights on validation",
              "predict": "predicting the validation and test splits", "calibrate": "fitting the temperature",
              "ood": "fitting the out-of-distribution scorer", "threshold": "choosing the mask threshold",
              "score": "scoring the test split"}
STOP_AFTER_BATCH = "Stop requested: the trainer stops after the current batch and keeps its checkpoint."


def _live_progress(run_dir: Path, status: dict, metrics: runs.Metrics, task: str) -> None:
    phase = status.get("phase") or "starting"
    epoch, total = status.get("epoch") or 0, status.get("epochs") or "?"
    share = runs.progress(status, metrics)
    if phase in rf.TRAIN_PHASES or phase == "starting":
        left = runs.eta(status, metrics)
        eta_text = f"ETA {runs.format_duration(left)}" if left is not None else "ETA: estimating…"
        st.progress(share, text=f"{share:.0%} · epoch {epoch}/{total} ({PHASE_TEXT.get(phase, phase)}) · {eta_text}")
        _batch_bar(metrics, epoch)
    else:
        doing = PHASE_TEXT.get(phase, phase)
        st.progress(share, text=f"{share:.0%} of the training batches · epoch {epoch}/{total} · now {doing}")
        _phase_bar(status, doing)
    if not paths.read_only():
        _stop_control(run_dir, phase, epoch, task)


def _batch_bar(metrics: runs.Metrics, epoch: int) -> None:
    batch = metrics.batch or {}
    if batch.get("batches") and batch.get("epoch") == epoch:
        loss = f" · loss {batch['loss']:.4f}" if isinstance(batch.get("loss"), float) else ""
        st.progress(min(1.0, batch["batch"] / batch["batches"]),
                    text=f"batch {batch['batch']}/{batch['batches']} of epoch {epoch}{loss}")


def _phase_bar(status: dict, doing: str) -> None:
    """The current phase with its own progress when the trainer counts it, else what it is doing."""
    progress = status.get("progress") if isinstance(status.get("progress"), dict) else None
    message = status.get("message") or doing
    if progress and progress.get("total"):
        done, total = int(progress.get("done") or 0), int(progress["total"])
        st.progress(min(1.0, done / total),
                    text=f"{message[:1].upper()}{message[1:]}: {done:,}/{total:,} {progress.get('unit', '')}")
    else:
        st.caption(f"{message[:1].upper()}{message[1:]}…")


def _stop_control(run_dir: Path, phase: str, epoch: int, task: str) -> None:
    """The Stop button, saying truthfully when a stop takes effect in the current phase."""
    finishing = rf.FINISH_PHASES.get(task, ())
    requested = (run_dir / rf.STOP_FILE).exists()
    if phase in finishing:
        rest = [PHASE_TEXT[p] for p in finishing[finishing.index(phase) + 1:] if p != "average"]
        then = f", then {', '.join(rest)}" if rest else ""
        note = ("Stop requested, but training is already over: " if requested else "Training is over: ")
        st.info(f"{note}the trainer is {PHASE_TEXT[phase]}{then}. These final steps cannot be stopped; "
                "the run ends as done when they finish.")
        return
    if phase == rf.VALIDATE_PHASE:
        label, after = "Stop after this epoch", (f"Stop requested: the trainer is scoring epoch {epoch} on "
                                                  "validation; it stops once that epoch is saved, before training "
                                                  "any further (at most one more batch).")
    else:
        label, after = "Stop after this batch", STOP_AFTER_BATCH
    if requested:
        st.info(after)
    elif st.button(label, key=f"train_stop_{run_dir.name}", icon=":material/stop_circle:",
                   help="Asks the trainer to stop cooperatively; a stopped run can be resumed."):
        rf.request_stop(run_dir)
        st.info(after)


BEST_METRICS = {opts.CLASSIFY: (("val_balanced_accuracy", "Val balanced acc."), ("val_auc", "Val macro AUC"),
                                ("val_accuracy", "Val accuracy")),
                opts.SEGMENT: (("val_dice", "Val Dice"), ("val_jaccard", "Val Jaccard"),
                               # short enough for a quarter of a 1,024-px page; the help gives the full name
                               ("val_thresholded_jaccard", "Val thr. Jaccard"))}
METRIC_NAMES = {"val_thresholded_jaccard": "Thresholded Jaccard (ISIC 2018 Task 1: an image's Jaccard below "
                                           "0.65 counts as 0), mean over images. "}


def _n_text(n: int | None) -> str:
    return f"n = {n:,}" if n else "n not recorded"


def _best_metrics(status: dict, task: str, n_val: int | None) -> None:
    best = status.get("best") if isinstance(status.get("best"), dict) else None
    if not best:
        return
    st.caption(f"The kept weights, scored on the validation split ({_n_text(n_val)} images)")
    cols = st.columns(4)
    cols[0].metric("Weights kept", runs.checkpoint_text(best) or "–")
    for col, (key, label) in zip(cols[1:], BEST_METRICS.get(task, BEST_METRICS[opts.CLASSIFY])):
        value = best.get(key)
        col.metric(label, f"{value:.3f}" if isinstance(value, (int, float)) else "–",
                   help=f"{METRIC_NAMES.get(key, '')}On the validation split, {_n_text(n_val)} images")


def _curves(metrics: runs.Metrics, task: str, sizes: dict) -> None:
    if metrics.epochs.empty:
        st.caption("No finished epoch yet: curves appear after the first epoch.")
        return
    curves, lr = _figures(metrics.epochs.to_json(orient="split"), task, sizes.get("train"), sizes.get("val"))
    st.plotly_chart(curves, width="stretch", key="train_curves")
    if lr is not None:
        st.plotly_chart(lr, width="stretch", key="train_lr")


@st.cache_resource(max_entries=8, show_spinner=False)
def _figures(epochs_json: str, task: str = opts.CLASSIFY, n_train: int | None = None,
             n_val: int | None = None) -> tuple:
    """The curve figures of some epoch rows, built once per content.

    Building a plotly figure takes ~0.3 s of CPU and the live view redraws every
    few seconds while the curves change once per epoch. Keyed by the rows'
    content, never by the live file.
    """
    epochs = pd.read_json(io.StringIO(epochs_json), orient="split")
    figure = curves_figure(epochs, CURVES.get(task, CURVES[opts.CLASSIFY]), n_train, n_val)
    return figure, (lr_figure(epochs) if "lr" in epochs else None)


CURVES = {opts.CLASSIFY: (("loss", "Loss"), ("accuracy", "Accuracy"),
                          ("balanced_accuracy", "Balanced accuracy"), ("auc", "Macro AUC")),
          opts.SEGMENT: (("loss", "Loss (BCE + 1 − Dice)"), ("dice", "Dice"), ("jaccard", "Jaccard"),
                         ("thresholded_jaccard", "Thresholded Jaccard"))}


def curves_figure(epochs: pd.DataFrame, curves=CURVES[opts.CLASSIFY], n_train: int | None = None,
                  n_val: int | None = None) -> go.Figure:
    """Train and validation curves per epoch (four panels), the legend giving each split's n."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title in curves],
                        horizontal_spacing=0.08, vertical_spacing=0.14)
    names = {"train": f"train ({_n_text(n_train)})", "val": f"validation ({_n_text(n_val)})"}
    shown = set()  # one legend entry per split, from the first panel that has its curve
    for n, (key, _) in enumerate(curves):
        row, col = n // 2 + 1, n % 2 + 1
        for prefix, split, dash in (("", "train", "solid"), ("val_", "val", "dash")):
            name = names[split]
            if prefix + key in epochs:
                fig.add_trace(go.Scatter(x=epochs["epoch"], y=epochs[prefix + key], name=name,
                                         mode="lines+markers", legendgroup=name, showlegend=name not in shown,
                                         line={"dash": dash, "color": "#1f77b4" if split == "train"
                                               else "#d62728"}), row=row, col=col)
                shown.add(name)
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
    """The learning rate of each epoch, on a log scale with labelled ticks."""
    fig = go.Figure(go.Scatter(x=epochs["epoch"], y=epochs["lr"], mode="lines+markers",
                               line={"color": "#2ca02c"}, name="learning rate"))
    fig.update_layout(title="Learning rate", height=260, xaxis_title="epoch",
                      margin={"t": 40, "b": 20, "l": 20, "r": 20})
    ticks = lr_ticks(epochs["lr"])
    fig.update_yaxes(type="log", title_text="learning rate", tickvals=ticks, ticktext=[f"{t:.1e}" for t in ticks])
    fig.update_xaxes(dtick=1 if len(epochs) <= 20 else None)
    return fig


def lr_ticks(rates: pd.Series, n: int = 5) -> list[float]:
    """Up to ``n`` log-spaced tick values spanning the learning rates (a log axis within one decade
    otherwise shows no labels)."""
    rates = pd.to_numeric(rates, errors="coerce")
    rates = rates[rates > 0]
    if rates.empty:
        return []
    low, high = float(rates.min()), float(rates.max())
    if high <= low * 1.01:
        return [low]
    return [float(v) for v in np.geomspace(low, high, n)]


def _details(run_dir: Path) -> None:
    config = rf.read_json(run_dir / rf.CONFIG_FILE)
    with st.expander("Configuration"):
        if config:
            st.json(public_config(config), expanded=True)
        else:
            st.caption(f"No {rf.CONFIG_FILE} yet (the trainer writes it once the data is loaded).")
    with st.expander(f"Log (last {LOG_LINES} lines)"):
        st.code(public_text(runs.log_tail(run_dir, LOG_LINES)) or "(empty)", language=None)


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
    problem = runs.resume_problem(run_dir, status)
    if problem:
        st.caption(f"Cannot resume: {problem}.")
        return
    if st.button("Resume", icon=":material/play_arrow:", key=f"train_resume_{run_dir.name}",
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
        st.button("Delete run…", icon=":material/delete:", key=f"train_delete_{name}", on_click=_set_confirm, args=(name,))
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
