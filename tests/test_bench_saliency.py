"""The saliency benchmark's choice of held-out images, from the model folder's own files."""

import sys
from pathlib import Path

import numpy as np

from core.contracts import predictions
from core.contracts.labels import CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_saliency  # noqa: E402


def test_held_out_ids_read_a_plain_predictions_file(tmp_path):
    probs = np.full((2, len(CLASSES)), 1 / len(CLASSES))
    table = predictions.make_table(["ISIC_1", "ISIC_2"], probs, CLASSES, truth=["nv", "mel"])
    predictions.write(tmp_path / predictions.FILES["test"], table, predictions.RAW)
    assert (tmp_path / predictions.FILES["test"]).read_text().startswith("image_id,")  # no comment line
    assert bench_saliency.held_out_ids(tmp_path, "test") == {"ISIC_1", "ISIC_2"}
    assert bench_saliency.held_out_ids(tmp_path, "val") == set()


def test_held_out_ids_prefer_the_saved_split(tmp_path):
    (tmp_path / "splits.csv").write_text("image_id,lesion_id,dx,split\nISIC_1,HAM_1,nv,test\nISIC_2,HAM_2,mel,val\n")
    assert bench_saliency.held_out_ids(tmp_path, "test") == {"ISIC_1"}
    assert bench_saliency.held_out_ids(tmp_path, "val") == {"ISIC_2"}


def test_split_val_samples_validation_images_only(tmp_path):
    import pandas as pd
    from conftest import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "ham10000")
    ids = pd.read_csv(data / "HAM10000_metadata.csv")["image_id"].tolist()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    rows = [f"{image_id},HAM_{k},nv,{'val' if k % 3 == 0 else 'test'}" for k, image_id in enumerate(ids)]
    (model_dir / "splits.csv").write_text("image_id,lesion_id,dx,split\n" + "\n".join(rows) + "\n")
    val = {image_id for k, image_id in enumerate(ids) if k % 3 == 0}

    picked, source = bench_saliency.sample_images(model_dir, data, 1000, seed=0, splits=("val",))
    assert source == "val split" and set(picked["image_id"]) == val
    picked, source = bench_saliency.sample_images(model_dir, data, 1000, seed=0)  # the report's default: test
    assert source == "test split" and set(picked["image_id"]) == set(ids) - val


def _tables(rows: dict) -> tuple:
    """A summary and a sanity table as ``bench_saliency`` builds them: ``{method: (energy, native, p50, spearman)}``."""
    import pandas as pd

    table = pd.DataFrame({"native": [r[1] for r in rows.values()], "p50 ms": [r[2] for r in rows.values()],
                          "_energy": [r[0] for r in rows.values()]}, index=list(rows))
    sanity = pd.DataFrame({bench_saliency.SANITY_DEPTH: [r[3] for r in rows.values()]}, index=list(rows))
    return table, sanity


def test_winner_must_beat_the_centred_gaussian():
    rows = {bench_saliency.GAUSSIAN: (0.44, "—", 0.1, 1.0), bench_saliency.UNIFORM: (0.25, "—", 0.1, 1.0),
            "fine but off the lesion": (0.30, "18×24", 30.0, 0.1)}
    assert bench_saliency.winner(*_tables(rows)) is None
    rows["fine and on the lesion"] = (0.58, "18×24", 70.0, 0.4)
    assert bench_saliency.winner(*_tables(rows)) == "fine and on the lesion"


def test_winner_skips_slow_coarse_and_insane_methods():
    rows = {bench_saliency.GAUSSIAN: (0.44, "—", 0.1, 1.0),
            "slow": (0.70, "18×24", 220.0, 0.4), "coarse": (0.69, "9×12", 30.0, 0.4),
            "explains the image": (0.68, "18×24", 30.0, 0.9), "passes": (0.50, "18×24", 30.0, 0.5)}
    assert bench_saliency.winner(*_tables(rows)) == "passes"
