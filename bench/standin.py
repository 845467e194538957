"""Shared by the benchmarks: open the model to measure, or build an untrained stand-in."""

import tempfile
from pathlib import Path

from core.contracts.labels import CLASSES
from core.serving.modelio import is_model_dir, write_metadata
from core.contracts.paths import default_model_dir


def model_folder(requested: Path | None, stand_in_size: int = 128) -> tuple:
    """``(folder, note)``: the requested or default model, else an untrained MobileNetV2.

    The stand-in has the shipped architecture and random weights: good for
    timing, meaningless for saliency quality.
    """
    folder = Path(requested) if requested else default_model_dir()
    if is_model_dir(folder):
        return folder, f"model {folder}"
    if requested:
        raise SystemExit(f"{folder}: not a model folder (needs model.keras and model.json)")
    return _stand_in(stand_in_size), f"stand-in: untrained MobileNetV2 at {stand_in_size}px (no {folder})"


def _stand_in(size: int) -> Path:
    from core.training.models import build_model, model_facts

    folder = Path(tempfile.mkdtemp(prefix="bench_model_"))
    build_model("mobilenet_v2", size, len(CLASSES), weights="none").save(folder / "model.keras")
    write_metadata(folder, {"classes": list(CLASSES), "image_size": size, **model_facts("mobilenet_v2", "none"),
                            "temperature": None, "run_id": "bench-stand-in"})
    return folder
