"""Evaluate models from their saved predictions, and predict external test sets.

A model folder (``models/default`` or a finished run) holds ``predictions_val.csv``
and ``predictions_test.csv`` in the predictions-file format of ``core.contracts.predictions``
(``image_id``, ``dx`` the truth, ``dx_pred``, one raw probability per class of
``model.json``). Evaluation reads these files and never runs the model.
Only an external test set (a folder of images with an ISIC ground-truth CSV) is
predicted here, with TensorFlow imported on first use.

External outputs (``lesionlab evaluate [--model DIR] --images DIR --truth CSV --out DIR``):

* ``predictions_external.csv``: the predictions format, with ``ood_flag`` and ``ood_score``.
* ``truth_external.csv``: the image table of the test set (labels, metadata, paths).
* ``overlap_external.csv``: the leakage check (``core.dataset.leakage``) against the split the
  model was trained on, when its folder carries ``splits.csv``: one row per image,
  ``match`` (``image_id``, ``lesion_id``, ``near-duplicate`` or empty) and ``split``.
* ``metrics_external.csv``: the tidy metrics table of :func:`metrics_frame` on every
  image (split ``external``) and, when some overlap, on the clean ones (``external_clean``).
* ``isic_submission.csv``: ``image`` then one probability column per class, named by
  the upper-case ISIC 2018 Task 3 codes in ISIC's order (MEL, NV, BCC, AKIEC, BKL,
  DF, VASC), which is what the ISIC challenge scorer expects.
* ``source.json``: what was predicted, when, and the overlap counts.

``--out`` must be new, empty or an earlier result (it holds ``source.json``), and not
inside a model folder, unless ``--force`` is given; bad input exits with status 2 and
one line on stderr.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.dataset import data, leakage, uploads

from core.evaluation import metrics

from core.serving import modelio
from core.serving.folder import ModelFolder

from core.contracts import cli_args, paths, predictions, validation
from core.dataset.images import ImageError

SPLIT_FILES = predictions.FILES
TRUTH_FILE = "truth_external.csv"
METRICS_FILE = "metrics_external.csv"
SUBMISSION_FILE = "isic_submission.csv"
OVERLAP_FILE = "overlap_external.csv"
SOURCE_FILE = "source.json"
ISIC_ORDER = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
PredictionsError = predictions.PredictionsError


@dataclass(frozen=True)
class Evaluable:
    """A model folder with at least one predictions file."""

    path: Path
    name: str
    splits: tuple
    is_default: bool


def validate_predictions(frame: pd.DataFrame, classes, source: str = "predictions") -> pd.DataFrame:
    """Check a predictions table with truth against the model's classes (``core.contracts.predictions.validate``)."""
    return predictions.validate(frame, classes, source=source)


def read_predictions(csv_path: Path, classes) -> pd.DataFrame:
    """Read and validate one predictions file with truth (``core.contracts.predictions.read``)."""
    return predictions.read(csv_path, classes)


def available_splits(model_dir: Path) -> list:
    """The splits (``val``, ``test``, ``external``) whose predictions file exists in ``model_dir``."""
    return [split for split, name in SPLIT_FILES.items() if (Path(model_dir) / name).is_file()]


def load_predictions(model_dir, split: str) -> pd.DataFrame:
    """Validated predictions of one split of a model folder (a path or a ``ModelFolder``),
    columns in ``model.json`` order."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_FILES)}")
    folder = ModelFolder.open(model_dir)
    return read_predictions(folder.path / SPLIT_FILES[split], list(folder.classes))


arrays = predictions.label_indices_and_probs  # ``(y_true, probs)`` of a predictions table


def list_evaluable() -> list:
    """Model folders with predictions: the shipped default first, then runs, newest first."""
    found = []
    default = paths.default_model_dir()
    if _has_predictions(default):
        found.append(Evaluable(default, "default (shipped)", tuple(available_splits(default)), True))
    root = paths.runs_dir()
    runs = [p for p in root.iterdir() if p.is_dir() and _has_predictions(p)] if root.is_dir() else []
    runs.sort(key=lambda p: ((p / modelio.METADATA_FILE).stat().st_mtime_ns, p.name), reverse=True)  # name breaks ties
    found += [Evaluable(p, p.name, tuple(available_splits(p)), False) for p in runs]
    return found


def _has_predictions(model_dir: Path) -> bool:
    model_dir = Path(model_dir)
    return (model_dir / modelio.METADATA_FILE).is_file() and bool(available_splits(model_dir))


def metrics_frame(
    predictions: pd.DataFrame,
    classes,
    split: str,
    *,
    positive: str = "mel",
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric of one split as a tidy table, for display and CSV export.

    Returns:
        Columns ``split, n, scope, metric, value, ci_low, ci_high``: ``scope`` is
        ``overall`` for the headline metrics (with bootstrap intervals), a class code
        for per-class metrics and ``macro`` for their unweighted means.
    """
    y_true, probs = arrays(predictions, classes)
    head = metrics.headline(y_true, probs, classes, positive=positive, threshold=threshold, n_boot=n_boot, seed=seed)
    head = head.assign(scope="overall")[["scope", "metric", "value", "ci_low", "ci_high"]]
    table = metrics.class_table(y_true, probs, classes)
    table.loc["macro"] = metrics.macro_average(table)
    per_class = table.rename_axis("scope").reset_index().melt(id_vars="scope", var_name="metric", value_name="value")
    tidy = pd.concat([head, per_class.assign(ci_low=np.nan, ci_high=np.nan)], ignore_index=True)
    tidy.insert(0, "n", len(y_true))
    tidy.insert(0, "split", split)
    return tidy


def submission_frame(predictions: pd.DataFrame, classes) -> pd.DataFrame:
    """ISIC 2018 Task 3 submission: ``image`` then MEL, NV, BCC, AKIEC, BKL, DF, VASC."""
    by_code = {str(c).upper(): c for c in classes}
    missing = [code for code in ISIC_ORDER if code not in by_code]
    if missing:
        raise PredictionsError(f"model classes {list(classes)} lack the ISIC categories {missing}")
    out = pd.DataFrame({"image": predictions["image_id"].astype(str)})
    for code in ISIC_ORDER:
        out[code] = predictions[by_code[code]].to_numpy()
    return out


def read_truth(truth_csv: Path, images_dir: Path) -> pd.DataFrame:
    """The image table of an external test set from its ground-truth CSV and image folder.

    Accepts ISIC one-hot truth (``image`` + MEL, NV, … columns, read by
    ``core.dataset.data.load_isic_csv``) or a labelled table with ``image_id`` and ``dx``
    (and optionally HAM10000 metadata columns). Every listed image must exist.

    Raises:
        core.contracts.validation.InputError: empty, header-only, non-UTF-8 or malformed CSV, empty
            labels, duplicate or conflicting rows, one-hot rows that are not one-hot.
        core.dataset.data.DatasetError: unknown format or missing images.
    """
    truth_csv, images_dir = Path(truth_csv), Path(images_dir)
    if not truth_csv.is_file():
        raise data.DatasetError(f"{truth_csv}: truth CSV not found")
    if not images_dir.is_dir():
        raise data.DatasetError(f"{images_dir}: image folder not found")
    columns = set(validation.read_truth_csv(truth_csv).columns)
    if "image" in columns:
        table = data.load_isic_csv(truth_csv, images_dir)
    elif {"image_id", "dx"} <= columns:
        table = _read_labelled_csv(truth_csv, images_dir)
    else:
        raise data.DatasetError(f"{truth_csv}: needs an 'image' column (ISIC one-hot) or 'image_id' and 'dx' columns")
    missing = table.loc[table["path"].fillna("").astype(str) == "", "image_id"].tolist()
    if missing:
        raise data.DatasetError(f"{images_dir}: {len(missing)} images of the truth CSV not found, e.g. {missing[:3]}")
    return table.reset_index(drop=True)


def _read_labelled_csv(truth_csv: Path, images_dir: Path) -> pd.DataFrame:
    """An ``image_id, dx`` table (HAM10000 metadata style) joined with the image files."""
    frame = pd.read_csv(truth_csv, dtype={"image_id": str, "dx": str})
    files = {p.stem: p for p in images_dir.rglob("*") if p.suffix.lower() in data.IMAGE_SUFFIXES}
    frame["path"] = frame["image_id"].map(lambda i: str(files.get(i, "")))
    defaults = {"lesion_id": frame["image_id"], "dx_type": "unknown", "age": np.nan, "sex": "unknown",
                "localization": "unknown", "mask_path": ""}
    for column, default in defaults.items():
        if column not in frame.columns:
            frame[column] = default
    return frame[["image_id", "lesion_id", "dx", "dx_type", "age", "sex", "localization", "path", "mask_path"]]


def predict_files(predictor, image_paths, *, batch_size: int = 32, progress=None, decode=None) -> tuple:
    """Raw probabilities and OOD results of image files, decoded by ``core.dataset.images`` as serving does.

    Args:
        predictor: a :class:`core.serving.predict.Predictor` of the model folder.
        image_paths: image files to predict.
        batch_size: images per forward pass.
        progress: optional ``callback(done, total)`` called after each batch.
        decode: ``bytes -> RGB``; default :func:`core.dataset.images.decode_image` with the command line's
            limits; the app passes :func:`core.dataset.images.decode_upload` (its own, lower limits).

    Returns:
        ``(probs, ood_scores, ood_flags)``: the model's own softmax ``(N, C)`` and one score and flag per image.

    Raises:
        core.dataset.images.ImageError: an image cannot be decoded (the message names the problem).
    """
    image_paths = [Path(p) for p in image_paths]
    found = []
    for start in range(0, len(image_paths), batch_size):
        chunk = image_paths[start : start + batch_size]
        found += predictor.predict_batch([_decode(p, decode) for p in chunk])
        if progress is not None:
            progress(min(start + batch_size, len(image_paths)), len(image_paths))
    probs = np.array([p.raw for p in found]).reshape(len(found), -1)
    return probs, [p.ood.score for p in found], [p.ood.flagged for p in found]


def _decode(path: Path, decode=None) -> np.ndarray:
    from core.dataset.images import decode_image, read_image

    try:
        return read_image(path, decode or decode_image)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from err


def predict_table(model_dir, table: pd.DataFrame, *, batch_size: int = 32, progress=None, decode=None) -> pd.DataFrame:
    """Predict every image of an image table with a model folder (a path or a ``ModelFolder``);
    returns a predictions table with truth."""
    folder = ModelFolder.open(model_dir)
    classes = list(folder.classes)
    unknown = sorted(set(table["dx"].astype(str)) - set(classes))
    if unknown:
        raise PredictionsError(f"truth labels {unknown} are not classes of the model {classes}")
    from core.serving.predict import Predictor

    probs, scores, flags = predict_files(Predictor(folder), table["path"], batch_size=batch_size, progress=progress,
                                         decode=decode)
    # Renormalise away float32 rounding so the file passes its own validation.
    probs = probs / probs.sum(axis=1, keepdims=True)
    return predictions.make_table(table["image_id"], probs, classes, truth=table["dx"], ood_scores=scores,
                                  ood_flags=flags)


def overlap_check(model_dir, table: pd.DataFrame) -> pd.DataFrame | None:
    """The leakage report of an external set against the model's split (None when the folder has no split).

    ``model_dir`` is a path or a ``ModelFolder``.

    Images without a HAM10000 id match are hashed against the dataset's training
    and validation images when the dataset is present.
    """
    folder = ModelFolder.open(model_dir)
    split = leakage.find_model_split(folder.path, folder.meta)
    if split is None:
        return None
    report = leakage.id_overlap(table, split)
    unmatched = (report["match"] == "").to_numpy()
    if unmatched.any():
        try:
            bank, bank_split = leakage.cached_bank(data.load_dataset(paths.dataset_dir()), split, paths.cache_dir())
        except data.DatasetError:
            return report
        report = leakage.overlap_report(table, split, bank=bank, bank_split=bank_split)
    return report


def evaluate_external(
    model_dir, images_dir: Path, truth_csv: Path, *, out_dir: Path, batch_size: int = 32, progress=None, decode=None,
    roots=None,
) -> dict:
    """Predict an external test set and write predictions, truth, overlap, metrics and ISIC submission CSVs.

    Metrics are given on every image (split ``external``) and, when some images
    overlap the model's training or validation data, on the clean part too
    (split ``external_clean``). ``model_dir`` is a path or a ``ModelFolder``,
    opened once for the whole evaluation; ``decode`` as in :func:`predict_files`. With ``roots``
    (the app's ``core.dataset.uploads.external_roots()``), every image file must resolve inside one of
    them, links included, before any is read.

    Returns:
        ``{"predictions": path, "truth": path, "overlap": path | None, "metrics": path, "submission": path}``.
    """
    out_dir = Path(out_dir)
    table = read_truth(truth_csv, images_dir)
    if roots is not None:
        uploads.check_files_inside(table["path"], roots)
    folder = ModelFolder.open(model_dir)
    found = predict_table(folder, table, batch_size=batch_size, progress=progress, decode=decode)
    classes = list(folder.classes)
    report = overlap_check(folder, table)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs proved usable
    written = {"predictions": out_dir / SPLIT_FILES["external"], "truth": out_dir / TRUTH_FILE,
               "overlap": None if report is None else out_dir / OVERLAP_FILE,
               "metrics": out_dir / METRICS_FILE, "submission": out_dir / SUBMISSION_FILE}
    predictions.write(written["predictions"], found, predictions.RAW)
    predictions.write_csv(written["truth"], table)
    if report is not None:
        predictions.write_csv(written["overlap"], report)
    predictions.write_csv(written["metrics"], external_metrics(found, classes, report))
    predictions.write_csv(written["submission"], submission_frame(found, classes), float_format="%.6f")
    source = {"model": str(folder.path.resolve()), "images": str(images_dir), "truth": str(truth_csv),
              "n": len(found), "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "overlap": None if report is None else leakage.summary(report)}
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2), encoding="utf-8")
    return written


def external_metrics(found: pd.DataFrame, classes, report: pd.DataFrame | None) -> pd.DataFrame:
    """Metrics on every image and, when some overlap the model's data, on the clean ones (``external_clean``)."""
    tidy = [metrics_frame(found, classes, "external")]
    if report is not None:
        clean = set(report.loc[leakage.clean_mask(report), "image_id"])
        part = found[found[predictions.IMAGE_ID].isin(clean)]
        if 0 < len(part) < len(found):
            tidy.append(metrics_frame(part.reset_index(drop=True), classes, "external_clean"))
    return pd.concat(tidy, ignore_index=True)


def main(argv=None) -> int:
    """Command line: predict an external test set and write its CSVs."""
    parser = argparse.ArgumentParser(prog=cli_args.prog("evaluate"), description=__doc__.splitlines()[0])
    cli_args.add_model_argument(parser)
    parser.add_argument("--images", required=True, type=Path, help="folder of test images")
    parser.add_argument("--truth", required=True, type=Path, help="ground-truth CSV (ISIC one-hot or image_id,dx)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--force", action="store_true", help=f"write into --out even when it holds other files "
                        f"than an earlier result (no {SOURCE_FILE}) or lies inside a model folder")
    args = parser.parse_args(argv)

    def report(done, total):
        print(f"\rpredicted {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        batch_size = validation.positive_int(args.batch_size, "--batch-size")
        validation.check_output_folder(args.out, SOURCE_FILE, force=args.force)
        model_dir = validation.check_model_folder(args.model)
        written = evaluate_external(model_dir, args.images, args.truth, out_dir=args.out, batch_size=batch_size,
                                    progress=report)
    except (ValueError, OSError) as err:  # every input error of the chain is a ValueError subclass
        print(f"\nerror: {validation.one_line(err)}", file=sys.stderr)
        return validation.EXIT_BAD_INPUT
    print(file=sys.stderr)
    summary = pd.read_csv(written["metrics"])
    head = summary[summary["scope"] == "overall"][["split", "n", "metric", "value", "ci_low", "ci_high"]]
    print(head.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(overlap_sentence(written["overlap"]))
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def overlap_sentence(overlap_csv: Path | None) -> str:
    """What the leakage check found, in one sentence (or why it could not run)."""
    if overlap_csv is None:
        return (f"overlap: not checked, the model folder carries no {leakage.SPLIT_FILE} "
                "(the split it was trained on)")
    return "overlap: " + leakage.describe(leakage.summary(pd.read_csv(overlap_csv, dtype=str).fillna("")))


if __name__ == "__main__":
    sys.exit(main())
