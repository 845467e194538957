"""The command line's names and the argument its commands share.

One program, ``lesionlab <command> ARGS`` (also ``python -m core <command> ARGS``):
:data:`COMMANDS` names each command, the module whose ``main(argv)`` runs it and the
line ``lesionlab --help`` shows for it. Each command's own parser is called
``lesionlab <command>`` (:func:`prog`). The modules are named here as strings and
imported by :mod:`core.cli` only when their command runs, so this module imports no
other ``core`` package and showing the help imports no TensorFlow.

``--model`` (:func:`add_model_argument`) is the one argument most commands share: a
model folder, by default the shipped one, checked by
:func:`core.contracts.validation.check_model_folder` before any work.
"""

import sys
from pathlib import Path
from typing import NamedTuple

from core.contracts import paths

PROGRAM = "lesionlab"
PACKAGE = "core"  # ``python -m core <command>`` runs the same dispatcher where the script is not on PATH


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS = {  # the order ``lesionlab --help`` lists them in; each summary fits one line there
    "train": Command("core.training.train", "train a classifier or (--task segmentation) the segmenter"),
    "segment-train": Command("core.training.segment_train", "train the segmenter (= train --task segmentation)"),
    "predict": Command("core.serving.predict", "predict images, folders or zips into a predictions CSV"),
    "evaluate": Command("core.evaluation.evaluate", "score a model on an external test set with its truth CSV"),
    "explain": Command("core.explaining.explain", "saliency maps (.npy and .png) of images, folders or zips"),
    "segment": Command("core.serving.segment", "lesion masks and measurements of images, folders or zips"),
    "export": Command("core.serving.export", "a TFLite file of a model, with its JSON card"),
    "private-export": Command("core.serving.private_export", "the TFLite graph Predict's private mode runs"),
    "ood": Command("core.serving.ood_fit", "fit a model's out-of-distribution scorer (ood fit)"),
    "soft-targets": Command("core.training.soft_targets", "teachers' probabilities on a split, for distillation"),
    "metadata-branch": Command("core.training.metadata_fit", "fit a model's optional age/sex/site branch"),
    "data": Command("core.dataset.commands", "download, validate or split the HAM10000 dataset"),
}

# The shipped folder each kind of ``--model`` opens by default, resolved when a parser is built.
SHIPPED = {"model": paths.default_model_dir, "segmenter": paths.segmenter_dir}


def prog(command: str) -> str:
    """The name a command's parser shows: ``lesionlab <command>``.

    Raises:
        KeyError: ``command`` is not one of :data:`COMMANDS`.
    """
    if command not in COMMANDS:
        raise KeyError(f"{command!r} is not a command of {PROGRAM}")
    return f"{PROGRAM} {command}"


def python_argv(command: str) -> list:
    """The command line that runs ``command`` with this interpreter (``python -m core <command>``)."""
    prog(command)  # a command that does not exist fails here, not in the child process
    return [sys.executable, "-m", PACKAGE, command]


def add_model_argument(parser, *, kind: str = "model", needs: tuple = ()) -> None:
    """Add ``--model DIR``: the folder of a ``kind`` (``model`` or ``segmenter``), by default the shipped one.

    The default is the shipped folder when the parser is built (so ``HAM_DEFAULT_MODEL`` and
    ``HAM_SEGMENTER`` apply). ``needs``: files the command needs beyond ``model.keras`` and
    ``model.json``, named in the help. The command checks the value with
    :func:`core.contracts.validation.check_model_folder` where it reports its errors.
    """
    from core.contracts.runfolder import METADATA_FILE, MODEL_FILE

    shipped = SHIPPED[kind]()
    files = " + ".join((MODEL_FILE, METADATA_FILE, *needs))
    parser.add_argument("--model", type=Path, default=shipped, metavar="DIR",
                        help=f"{kind} folder ({files}); default: the shipped {kind}, {_shown(shipped)}")


def _shown(path: Path) -> str:
    """``path`` relative to the project when it lies inside it (help text stays short), else as given."""
    try:
        return str(Path(path).resolve().relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)
