"""core.dataset.splits: lesion-grouped, stratified, seeded and reproducible to the byte."""

import pandas as pd
import pytest
from conftest import write_tiny_dataset

from core.dataset import data, splits
from core.contracts.labels import CLASSES


@pytest.fixture(scope="module")
def tiny_frame(tmp_path_factory) -> pd.DataFrame:
    # 12 lesions per class: enough for every class to reach val and test
    root = write_tiny_dataset(tmp_path_factory.mktemp("splits") / "ham", lesions_per_class=12, size=(8, 6))
    return data.load_dataset(root)


@pytest.fixture
def real_frame(real_dataset_dir) -> pd.DataFrame:
    return data.load_dataset(real_dataset_dir)


def _check_split(frame: pd.DataFrame, table: pd.DataFrame, tolerance: float) -> None:
    assert len(table) == len(frame) and set(table["image_id"]) == set(frame["image_id"])
    per_lesion = table.groupby("lesion_id")["split"].nunique()
    assert (per_lesion == 1).all(), "a lesion is in two splits"
    for name in splits.SPLITS:
        assert set(table.loc[table["split"] == name, "dx"]) == set(CLASSES), f"{name} lacks a class"
    shares = table["split"].value_counts(normalize=True)
    assert shares["val"] == pytest.approx(0.15, abs=tolerance)
    assert shares["test"] == pytest.approx(0.15, abs=tolerance)


def _reproducible(frame: pd.DataFrame, tmp_path) -> None:
    first = splits.save_splits(splits.make_splits(frame, seed=7), tmp_path / "a.csv")
    again = splits.save_splits(splits.make_splits(frame, seed=7), tmp_path / "b.csv")
    other = splits.save_splits(splits.make_splits(frame, seed=8), tmp_path / "c.csv")
    assert first == again and (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert other != first
    loaded = splits.load_splits(tmp_path / "c.csv")
    assert not loaded["split"].equals(splits.load_splits(tmp_path / "a.csv")["split"])


def test_tiny_split_is_grouped_stratified_and_sized(tiny_frame):
    for seed in (0, 1, 2):
        _check_split(tiny_frame, splits.make_splits(tiny_frame, seed=seed), tolerance=0.05)


def test_tiny_split_is_reproducible(tiny_frame, tmp_path):
    _reproducible(tiny_frame, tmp_path)


def test_real_split_is_grouped_stratified_sized_and_reproducible(real_frame, tmp_path):
    # one test, two splits: make_splits takes about 10 s on the full table here
    table = splits.make_splits(real_frame, seed=42)
    _check_split(real_frame, table, tolerance=0.02)
    summary = splits.split_summary(table)
    assert summary.loc["images"].sum() == 10015 and summary.loc["lesions"].sum() == 7470
    first = splits.save_splits(table, tmp_path / "a.csv")
    assert splits.save_splits(splits.make_splits(real_frame, seed=42), tmp_path / "b.csv") == first
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_load_splits_rejects_bad_files(tmp_path):
    (tmp_path / "s.csv").write_text("image_id,lesion_id,dx,split\nI1,L1,nv,holdout\n")
    with pytest.raises(ValueError, match="unknown split names"):
        splits.load_splits(tmp_path / "s.csv")
    (tmp_path / "s.csv").write_text("image_id,dx,split\nI1,nv,train\n")
    with pytest.raises(ValueError, match="lacks columns"):
        splits.load_splits(tmp_path / "s.csv")


def test_small_classes_still_reach_every_split(tmp_path):
    # 6 lesions per class: a 15 % holdout alone would leave some classes out of val or test
    frame = data.load_dataset(write_tiny_dataset(tmp_path / "ham", lesions_per_class=6, size=(8, 6)))
    for seed in range(5):
        table = splits.make_splits(frame, seed=seed)
        assert (table.groupby("lesion_id")["split"].nunique() == 1).all()
        for name in splits.SPLITS:
            assert set(table.loc[table["split"] == name, "dx"]) == set(CLASSES), (seed, name)


def test_the_shipped_model_split_is_reproduced_from_its_seed(real_frame, tmp_path):
    from core.serving import modelio
    from core.contracts import paths
    if not modelio.is_model_dir(paths.default_model_dir()):
        pytest.skip("no shipped model under models/default")
    meta = modelio.read_metadata(paths.default_model_dir())
    digest = splits.save_splits(splits.make_splits(real_frame, seed=42), tmp_path / "split.csv")
    assert digest == meta["split_sha256"]
