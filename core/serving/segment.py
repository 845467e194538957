"""Lesion segmentation: loading a segmenter folder, segmenting images, and the command line.

``lesionlab segment [--model DIR] --out DIR PATH...`` writes one
``<image_id>.png`` mask (0/255, the input image's own size) per image and a
``measurements.csv`` of lesion measurements (``core.serving.lesion_measures``). Image ids
are named as for ``core.explaining.explain``: the file stem, or ``a/x`` (written as ``a/x.png``)
when two files share a stem. As there, bad input gives one line on stderr and exit
status 2, and ``--out`` must be new, empty or this command's (it holds
``measurements.csv``), never inside a model folder, unless ``--force`` is given.

The model (built by :mod:`core.training.segmenter`) is a flat functional graph that
takes float32 RGB in 0..255 at ``(H, W, 3)`` and returns a ``(H, W, 1)`` lesion
probability (sigmoid). A mask at the image's own size is that probability resized
bilinearly, then thresholded.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OUTPUT_LAYER = "mask"
THRESHOLD = 0.5


def read_segmenter_metadata(model_dir: Path) -> dict:
    """Read a segmenter's ``model.json``, checked for the keys segmenting needs."""
    from core.serving.modelio import METADATA_FILE, ModelFolderError, check_input_size, read_metadata_file

    path = Path(model_dir) / METADATA_FILE
    meta = read_metadata_file(path, "segmenter metadata")
    missing = [k for k in ("image_height", "image_width", "threshold") if k not in meta]
    if missing or meta.get("task") != "segmentation":
        raise ModelFolderError(f"{path}: not a segmenter's metadata (task={meta.get('task')!r}, missing {missing})")
    where = f"segmenter {Path(model_dir).name}: {METADATA_FILE}"
    check_input_size(meta, where)
    threshold = meta["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ModelFolderError(f"{where} 'threshold' is {threshold!r}: it must be a number (0 to 1; above 1 finds none)")
    return meta


def load_segmenter_model(model_dir: Path):
    """Load a segmenter folder's ``model.keras``, checked to output one probability map (imports TensorFlow).

    Raises:
        ModelFolderError: no model file, a file Keras cannot load, or not a one-channel map output.
    """
    import keras

    from core.serving.modelio import MODEL_FILE, ModelFolderError

    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFolderError(f"{path}: model file not found")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001  (Keras raises many types for a damaged file)
        raise ModelFolderError(f"segmenter {Path(model_dir).name}: {MODEL_FILE} cannot be loaded "
                               f"({type(err).__name__})") from err
    if len(model.output_shape) != 4 or model.output_shape[-1] != 1:
        raise ModelFolderError(f"segmenter {Path(model_dir).name}: the model outputs {model.output_shape}, "
                               "not one probability map")
    return model


def predict_probs(model, images, idx=None, *, batch_size: int = 32, chunk: int = 512) -> np.ndarray:
    """Lesion probability maps ``(n, H, W)`` at the model size for ``images[idx]`` (all images when None)."""
    idx = np.arange(len(images)) if idx is None else np.asarray(idx)
    out = [model.predict(np.asarray(images[idx[i : i + chunk]], dtype=np.float32), batch_size=batch_size, verbose=0)
           for i in range(0, len(idx), chunk)]
    height, width = model.output_shape[1:3]
    return np.concatenate(out)[..., 0] if out else np.zeros((0, height, width), np.float32)


def mask_at(prob: np.ndarray, shape, threshold: float = THRESHOLD) -> np.ndarray:
    """A boolean mask of ``shape`` (H, W): the probability map resized bilinearly, then thresholded."""
    from PIL import Image

    height, width = int(shape[0]), int(shape[1])
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape != (height, width):
        prob = np.asarray(Image.fromarray(prob, mode="F").resize((width, height), resample=Image.Resampling.BILINEAR))
    return prob >= threshold


class Segmenter:
    """A segmenter folder loaded for serving.

    Args:
        model_dir: a folder with ``model.keras`` and a segmenter ``model.json``.
        model: an already loaded Keras model (skips loading; for tests and benches).
    """

    def __init__(self, model_dir: Path, model=None):
        from core.serving.modelio import compiled_forward

        self.model_dir = Path(model_dir)
        self.meta = read_segmenter_metadata(self.model_dir)
        self.input_size = (int(self.meta["image_height"]), int(self.meta["image_width"]))
        self.threshold = float(self.meta["threshold"])
        self.model = model if model is not None else load_segmenter_model(self.model_dir)
        taken = tuple(self.model.inputs[0].shape[1:3])
        if None not in taken and tuple(int(n) for n in taken) != self.input_size:
            from core.serving.modelio import METADATA_FILE, ModelFolderError

            raise ModelFolderError(f"segmenter {self.model_dir.name}: {METADATA_FILE} gives the input as "
                                   f"{self.input_size[0]}x{self.input_size[1]} but the model takes {taken[0]}x{taken[1]}")
        self._forward = compiled_forward(self.model)

    def warmup(self) -> None:
        """Run one segmentation so the first user request does not pay for tracing."""
        self.probabilities(np.zeros((1, *self.input_size, 3), np.float32))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Lesion probability maps ``(N, H, W)`` at the model size for a float32 model-input batch."""
        return np.asarray(self._forward(np.asarray(batch, dtype=np.float32)))[..., 0]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """The lesion mask of one RGB uint8 image, a bool array at the image's own size."""
        from core.dataset.images import to_model_input

        prob = self.probabilities(to_model_input(rgb, self.input_size)[None])[0]
        return mask_at(prob, rgb.shape[:2], self.threshold)


def segment_sources(segmenter: Segmenter, sources, out_dir: Path, *, on_skip=None):
    """Segment ``(name, bytes)`` pairs: write ``<image_id>.png`` masks and return the measurements table.

    Args:
        segmenter: the loaded segmenter.
        sources: iterable of ``(name, bytes | ImageError)`` as from ``core.dataset.images.iter_sources``.
        out_dir: the folder for the mask PNGs (0/255, each at its image's own size), named
            as ``core.dataset.images.write_per_image`` names them.
        on_skip: called with ``(name, message)`` for each unreadable entry.

    Returns:
        A DataFrame: ``image_id, height, width`` and the columns of ``core.serving.lesion_measures.measure``.
    """
    import pandas as pd
    from PIL import Image

    from core.dataset.images import write_per_image
    from core.serving.lesion_measures import measure

    def write(rgb, path) -> dict:
        mask = segmenter.segment(rgb)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path(".png"))
        return {"height": rgb.shape[0], "width": rgb.shape[1], **measure(rgb, mask)}

    return pd.DataFrame(write_per_image(sources, out_dir, write, on_skip=on_skip))


MEASUREMENTS_FILE = "measurements.csv"


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input or when no image was readable)."""
    from core.contracts import cli_args
    from core.contracts.validation import check_model_folder
    from core.dataset.images import run_per_image_command

    parser = argparse.ArgumentParser(prog=cli_args.prog("segment"), description=__doc__.split("\n")[0])
    cli_args.add_model_argument(parser, kind="segmenter")
    parser.add_argument("--out", required=True, type=Path,
                        help=f"folder for <image_id>.png masks (0/255, the image's own size) and {MEASUREMENTS_FILE}")
    parser.add_argument("--force", action="store_true", help="write into --out even when it holds other files "
                        "or lies inside a model folder")
    parser.add_argument("paths", nargs="+", type=Path, help="image files, folders or zip files")
    args = parser.parse_args(argv)
    return run_per_image_command(
        args.paths, args.out, MEASUREMENTS_FILE, force=args.force, what="masks",
        make_table=lambda sources, skipped: segment_sources(Segmenter(check_model_folder(args.model)), sources, args.out,
                                                                on_skip=skipped))


if __name__ == "__main__":
    sys.exit(main())
