"""Where things live. Every path resolves at call time so tests can redirect it.

Environment variables:
    HAM10000_DIR: the dataset folder (default ``data/ham10000``).
    HAM_RUNS_DIR: the run registry (default ``models/runs``).
    HAM_CACHE_DIR: decoded-image caches (default ``data/cache``).
    HAM_DEFAULT_MODEL: the shipped model (default ``models/default``).
    HAM_SEGMENTER: the shipped lesion segmenter (default ``models/segmenter``).
    HAM_READ_ONLY: ``1`` for a public demo: nothing can be launched, stopped,
        deleted or saved from the pages.
"""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # core/contracts/paths.py -> the project


def _from_env(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def dataset_dir() -> Path:
    """The HAM10000 folder, from ``HAM10000_DIR`` or ``data/ham10000``."""
    return _from_env("HAM10000_DIR", PROJECT_ROOT / "data" / "ham10000")


def runs_dir() -> Path:
    """The folder holding one sub-folder per training run."""
    return _from_env("HAM_RUNS_DIR", PROJECT_ROOT / "models" / "runs")


def cache_dir() -> Path:
    """The folder for decoded-image caches (derived data, never committed)."""
    return _from_env("HAM_CACHE_DIR", PROJECT_ROOT / "data" / "cache")


def default_model_dir() -> Path:
    """The shipped model that Predict and Evaluate open by default."""
    return _from_env("HAM_DEFAULT_MODEL", PROJECT_ROOT / "models" / "default")


def segmenter_dir() -> Path:
    """The shipped lesion segmenter that Predict and Evaluate open."""
    return _from_env("HAM_SEGMENTER", PROJECT_ROOT / "models" / "segmenter")


def read_only() -> bool:
    """True when ``HAM_READ_ONLY`` asks for a read-only app (public demos)."""
    return os.environ.get("HAM_READ_ONLY", "").strip().lower() in ("1", "true", "yes", "on")
