"""The saliency benchmark's choice of held-out images, from the model folder's own files."""

import sys
from pathlib import Path

import numpy as np

from core import predictions
from core.labels import CLASSES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_saliency  # noqa: E402


def test_held_out_ids_read_a_predictions_file_with_its_first_line(tmp_path):
    probs = np.full((2, len(CLASSES)), 1 / len(CLASSES))
    table = predictions.make_table(["ISIC_1", "ISIC_2"], probs, CLASSES, truth=["nv", "mel"])
    predictions.write(tmp_path / predictions.FILES["test"], table, predictions.RAW)
    assert (tmp_path / predictions.FILES["test"]).read_text().startswith(predictions.HEADER)
    assert bench_saliency.held_out_ids(tmp_path, "test") == {"ISIC_1", "ISIC_2"}
    assert bench_saliency.held_out_ids(tmp_path, "val") == set()


def test_held_out_ids_prefer_the_saved_split(tmp_path):
    (tmp_path / "splits.csv").write_text("image_id,lesion_id,dx,split\nISIC_1,HAM_1,nv,test\nISIC_2,HAM_2,mel,val\n")
    assert bench_saliency.held_out_ids(tmp_path, "test") == {"ISIC_1"}
    assert bench_saliency.held_out_ids(tmp_path, "val") == {"ISIC_2"}
