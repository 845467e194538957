"""Saliency maps from the command line, so researchers can score them with their own tools.

Command line::

    lesionlab explain [--model DIR] [--method NAME] [--target CODE] --out DIR PATH...

PATHs are image files, folders (searched recursively) or zip files, decoded
by ``core.dataset.images.decode_image`` at full size. For each image it writes

* ``<image_id>.npy`` — the map, float32, non-negative, maximum 1 (all zeros
  when nothing raises the class's score), at the input image's own height ×
  width: the array the Predict page offers as "Download the map (.npy)";
* ``<image_id>.png`` — the map drawn over the image (a heat-map blend by default).

An ``image_id`` is the file stem; for stems that repeat, the path from the first
folder that differs (``core.dataset.images.distinct_ids``), whose folders become
subfolders of ``--out``: ``a/x.jpg`` and ``b/x.jpg`` give ``a/x.npy`` and ``b/x.npy``.
It also writes ``explain.csv``: ``image_id, method, target, probability`` (the model's
uncalibrated probability of the explained class). The explained class is the
predicted one unless ``--target`` names a class. Unreadable files are reported
on stderr and skipped. (The page reduces uploads to 1024 px on their longer
side; for larger images its map is this map at that reduced size.)

Bad input (a model folder it cannot use, no readable image, an ``--out`` it must
not write into) gives one line on stderr and exit status 2. ``--out`` must be a
new or empty folder, or one this command wrote (it holds ``explain.csv``), and
never inside a model folder, unless ``--force`` is given.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.dataset.images import run_per_image_command, to_model_input, write_per_image
from core.explaining.saliency import DEFAULT_METHOD, METHODS, Explainer, explain, resize_map
from core.explaining.saliency.draw import CMAPS, DEFAULT_CMAP, DEFAULT_STYLE, STYLES, render
from core.contracts import cli_args
from core.contracts.validation import check_model_folder


def explain_file(predictor, explainer: Explainer, rgb: np.ndarray, *, method: str, target: str | None = None) -> tuple:
    """``(map at the image's own size, class index, its probability)`` for one decoded image."""
    x = to_model_input(rgb, predictor.input_size)
    probs = predictor.raw_probabilities(x[None])[0]
    index = predictor.classes.index(target) if target else int(np.argmax(probs))
    return resize_map(explain(explainer, x, method, class_index=index), rgb.shape[:2]), index, float(probs[index])


def run(predictor, sources, *, method: str, out: Path, target=None, style: str = DEFAULT_STYLE,
        cmap: str = DEFAULT_CMAP, on_skip=None) -> pd.DataFrame:
    """Write ``.npy`` and ``.png`` per image into ``out``; returns the ``explain.csv`` table."""
    explainer = Explainer.of(predictor.folder, predictor.model)

    def write(rgb, path) -> dict:
        saliency, index, probability = explain_file(predictor, explainer, rgb, method=method, target=target)
        np.save(path(".npy"), saliency)
        Image.fromarray(render(rgb, saliency, style=style, cmap=cmap)).save(path(".png"))
        return {"method": method, "target": predictor.classes[index], "probability": probability}

    rows = write_per_image(sources, out, write, on_skip=on_skip)
    return pd.DataFrame(rows, columns=["image_id", "method", "target", "probability"])


TABLE_FILE = "explain.csv"


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input or when no image was readable)."""
    from core.serving.predict import Predictor

    parser = argparse.ArgumentParser(prog=cli_args.prog("explain"), description=__doc__.split("\n")[0])
    cli_args.add_model_argument(parser)
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), metavar="NAME",
                        help=f"saliency method (default: {DEFAULT_METHOD!r}); one of: {', '.join(METHODS)}")
    parser.add_argument("--target", default=None, help="class code to explain (default: the predicted class)")
    parser.add_argument("--style", default=DEFAULT_STYLE, choices=STYLES, help="how the PNG draws the map")
    parser.add_argument("--cmap", default=DEFAULT_CMAP, choices=CMAPS, help="colour map of the PNG")
    parser.add_argument("--out", required=True, type=Path, help="folder to write the maps into")
    parser.add_argument("--force", action="store_true", help="write into --out even when it holds other files "
                        "or lies inside a model folder")
    parser.add_argument("paths", nargs="+", type=Path, help="image files, folders or zip files")
    args = parser.parse_args(argv)

    def maps(sources, skipped) -> pd.DataFrame:
        predictor = Predictor(check_model_folder(args.model))
        if args.target is not None and args.target not in predictor.classes:
            parser.error(f"--target {args.target!r} is not a class of this model: {', '.join(predictor.classes)}")
        return run(predictor, sources, method=args.method, out=args.out, target=args.target, style=args.style,
                   cmap=args.cmap, on_skip=skipped)

    return run_per_image_command(args.paths, args.out, TABLE_FILE, make_table=maps, what=f"maps ({args.method})",
                                 force=args.force)


if __name__ == "__main__":
    sys.exit(main())
