"""Shared fixtures: the real dataset when present, tiny generated datasets otherwise."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.contracts.labels import CLASSES

PROJECT = Path(__file__).resolve().parent.parent
PAGES = PROJECT / "app_pages"


@pytest.fixture
def real_dataset_dir() -> Path:
    """The real HAM10000 folder named by HAM10000_DIR; skips the test when it is absent."""
    value = os.environ.get("HAM10000_DIR")
    if not value or not (Path(value) / "HAM10000_metadata.csv").is_file():
        pytest.skip("real HAM10000 data not found: set HAM10000_DIR to a folder with HAM10000_metadata.csv")
    return Path(value)


def write_tiny_dataset(root: Path, lesions_per_class: int = 6, size=(40, 30), seed: int = 0) -> Path:
    """Write a HAM10000-shaped dataset of small generated images and masks.

    Each class gets a distinct colour so a tiny model can learn it; lesions have
    one or two images, some ages are missing and some sexes are ``unknown``.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows, n = [], 0
    for k, dx in enumerate(CLASSES):
        for lesion in range(lesions_per_class):
            lesion_id = f"HAM_{k:02d}{lesion:05d}"
            for _ in range(1 + lesion % 2):
                image_id = f"ISIC_{9000000 + n:07d}"
                n += 1
                _write_image(root, image_id, k, size, rng)
                rows.append(_metadata_row(lesion_id, image_id, dx, n, rng))
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def class_colour(k: int) -> np.ndarray:
    """The mean RGB colour of class ``k``'s images in :func:`write_tiny_dataset`."""
    return np.array([(k * 37) % 256, (k * 91) % 256, (k * 151) % 256], dtype=np.float64)


def _write_image(root: Path, image_id: str, k: int, size, rng) -> None:
    w, h = size
    base = class_colour(k)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=90)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
    Image.fromarray(mask).save(root / "masks" / f"{image_id}_segmentation.png")


def _metadata_row(lesion_id, image_id, dx, n, rng) -> dict:
    return {
        "lesion_id": lesion_id,
        "image_id": image_id,
        "dx": dx,
        "dx_type": ("histo", "follow_up", "consensus", "confocal")[n % 4],
        "age": np.nan if n % 11 == 0 else float(5 * rng.integers(2, 17)),
        "sex": ("male", "female", "unknown")[n % 3],
        "localization": ("back", "face", "lower extremity", "unknown")[n % 4],
    }


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A generated HAM10000-shaped dataset of 7 classes × 6 lesions, 63 images."""
    return write_tiny_dataset(tmp_path / "ham10000")


def to_publisher_layout(root: Path, metadata_name: str = "HAM10000_metadata.tab") -> Path:
    """Rearrange a tiny dataset into the publisher's layout, in place.

    Images are split over ``HAM10000_images_part_1/`` and ``_part_2/``, masks go
    to ``HAM10000_segmentations_lesion_tschandl/`` and the metadata is written
    under ``metadata_name``: tab-separated with quoted strings for ``.tab`` (as
    the Dataverse export), comma-separated otherwise.
    """
    frame = pd.read_csv(root / "HAM10000_metadata.csv")
    images = sorted((root / "images").iterdir())
    for k, part in enumerate(("HAM10000_images_part_1", "HAM10000_images_part_2")):
        (root / part).mkdir()
        for image in images[k::2]:
            image.rename(root / part / image.name)
    (root / "images").rmdir()
    (root / "masks").rename(root / "HAM10000_segmentations_lesion_tschandl")
    (root / "HAM10000_metadata.csv").unlink()
    if metadata_name.endswith(".tab"):
        frame.to_csv(root / metadata_name, sep="\t", index=False, quoting=csv.QUOTE_NONNUMERIC, na_rep="")
    else:
        frame.to_csv(root / metadata_name, index=False)
    return root


@pytest.fixture
def tiny_dataset_env(tiny_dataset, monkeypatch) -> Path:
    """The tiny dataset, named by HAM10000_DIR for code that resolves paths itself."""
    monkeypatch.setenv("HAM10000_DIR", str(tiny_dataset))
    return tiny_dataset


@pytest.fixture
def clear_streamlit_caches():
    """Clear Streamlit's data and resource caches before and after a test."""
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def open_page(page, timeout: float = 60):
    """The app under ``AppTest``, opened at one page and not run yet: each run draws the frame, then the page.

    Args:
        page: a file name under ``app_pages/`` (``"predict.py"``) or a path.
        timeout: AppTest's default timeout; pages that load TensorFlow need minutes on 2 cores.
    """
    from streamlit.testing.v1 import AppTest

    # Before the first run switch_page finds a page by its file name: app_pages/ names each after its address.
    return AppTest.from_file(str(PROJECT / "app.py"), default_timeout=timeout).switch_page(str(PAGES / page))


def start_page(page, timeout: float = 60):
    """Run the app at one page once under ``AppTest`` (:func:`open_page`) and check that it raised nothing."""
    at = open_page(page, timeout)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def media(monkeypatch) -> dict:
    """Every file the page hands to the browser (images, downloads), by file name or mimetype."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.testing.v1 import app_test

    files = {}

    class Recording(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):
            files[filename or mimetype] = path_or_data
            return super().load_and_get_id(path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return files


@pytest.fixture
def predict_env(monkeypatch, tmp_path, page_model, clear_streamlit_caches) -> Path:
    """The Predict page with ``page_model`` (a fixture of the test module) as the default model,
    no run folders and no dataset; Streamlit caches cleared around the test."""
    monkeypatch.setenv("HAM_DEFAULT_MODEL", str(page_model))
    monkeypatch.setenv("HAM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("HAM10000_DIR", str(tmp_path / "no_dataset"))
    return tmp_path


TRAINER_LIKE_ARGV = [sys.executable, "-c", "import sys; sys.stdin.read()", "core.training.train"]


@pytest.fixture
def live_trainer() -> int:
    """The pid of a live process whose command line names core.training.train, as a real trainer's does."""
    proc = subprocess.Popen(TRAINER_LIKE_ARGV, stdin=subprocess.PIPE)
    yield proc.pid
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


@pytest.fixture(autouse=True)
def _no_shipped_segmenter(monkeypatch, tmp_path_factory):
    """Pages under test see no lesion segmenter unless a test installs one (HAM_SEGMENTER)."""
    monkeypatch.setenv("HAM_SEGMENTER", str(tmp_path_factory.getbasetemp() / "no_segmenter"))
