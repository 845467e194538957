"""The ensemble benchmark: candidates from a soft-targets file scored against v2, on validation unless asked."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import class_colour
from core.serving import calibration
from core.evaluation import metrics
from core.training import soft_targets
from core.dataset.data import load_dataset
from core.contracts.labels import CLASSES
from core.dataset.splits import make_splits, save_splits, split_hash
from tiny_models import build_nearest_colour_model, build_tiny_model, folder_trained_on, save_model_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_ensemble  # noqa: E402


def test_weighted_calibration_scores_equal_the_plain_ones_with_unit_weights():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=200)
    y = rng.integers(0, len(CLASSES), 200)
    ones = np.ones((1, 200))
    assert calibration.weighted_ece(ones, y, probs)[0] == pytest.approx(calibration.expected_calibration_error(probs, y))
    assert calibration.weighted_nll(ones, y, probs)[0] == pytest.approx(calibration.nll(probs, y))
    twice = np.concatenate([ones, 2 * ones])  # doubling every image changes nothing
    np.testing.assert_allclose(calibration.weighted_ece(twice, y, probs), calibration.weighted_ece(ones, y, probs)[0])


def test_the_benchmark_scores_teachers_ensemble_and_v2_on_validation(tmp_path, tiny_dataset, monkeypatch, capsys):
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    split_file = tmp_path / "splits.csv"
    save_splits(make_splits(load_dataset(tiny_dataset), seed=42), split_file)  # the split folder_trained_on makes
    colour = build_nearest_colour_model(np.stack([class_colour(k) for k in range(len(CLASSES))]), 30, 40)
    teachers = [save_model_folder(model, tmp_path / name, temperature=1.0, extra={"split_sha256": split_hash(split_file)})
                for name, model in (("colour", colour), ("random", build_tiny_model((30, 40), seed=4)))]
    out = tmp_path / "soft.npz"
    found = soft_targets.build(out, teachers, split_file, data_dir=tiny_dataset)
    v2 = folder_trained_on(tmp_path / "v2", tiny_dataset, build_tiny_model((30, 40), seed=7))

    bench_ensemble.main(["--targets", str(out), "--v2", str(v2), "--ensemble", "colour+random"])
    text = capsys.readouterr().out
    n_val = int((found.split == "val").sum())
    assert f"split val, n={n_val}" in text and "split test" not in text
    for name in ("colour", "random", "ensemble of 2, 4 flips", "ensemble of 2, no flips", "colour+random, 4 flips", "v2"):
        assert name in text
    rows = found.split == "val"
    y = metrics.encode_labels(found.dx[rows], CLASSES)
    ens = found.probs[:, rows].mean(axis=(0, 2))
    line = next(l for l in text.splitlines() if l.strip().startswith("ensemble of 2, 4 flips"))
    assert f"{metrics.balanced_accuracy(y, ens.argmax(axis=1), len(CLASSES)):.3f} [" in line
    assert f"{calibration.nll(ens, y):.3f} [" in line
    colour_line = next(l for l in text.splitlines() if l.strip().startswith("colour "))
    assert "1.000 [1.000, 1.000]" in colour_line  # the nearest-colour teacher is right on every image
    assert "paired differences against v2" in text and "per class" in text


def test_the_reference_option_adds_a_paired_table_and_refuses_an_unknown_name(tmp_path, tiny_dataset, monkeypatch,
                                                                              capsys):
    monkeypatch.setenv("HAM_CACHE_DIR", str(tmp_path / "cache"))
    split_file = tmp_path / "splits.csv"
    save_splits(make_splits(load_dataset(tiny_dataset), seed=42), split_file)
    teachers = [save_model_folder(build_tiny_model((30, 40), seed=s), tmp_path / f"t{s}", temperature=1.0,
                                  extra={"split_sha256": split_hash(split_file)}) for s in (1, 2)]
    out = tmp_path / "soft.npz"
    soft_targets.build(out, teachers, split_file, data_dir=tiny_dataset)
    v2 = folder_trained_on(tmp_path / "v2", tiny_dataset, build_tiny_model((30, 40), seed=7))
    bench_ensemble.main(["--targets", str(out), "--v2", str(v2), "--reference", "t1"])
    assert "paired differences against t1 (val" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such candidate"):
        bench_ensemble.main(["--targets", str(out), "--v2", str(v2), "--reference", "t9"])


def test_the_metadata_benchmark_scores_the_variants_paired(tmp_path, tiny_dataset, monkeypatch, capsys):
    import bench_metadata

    from core.serving import metadata_branch as mb

    folder = folder_trained_on(tmp_path / "model", tiny_dataset, build_tiny_model((30, 40), seed=7))
    with pytest.raises(SystemExit, match="no metadata_branch.npz"):
        bench_metadata.main(["--model", str(folder), "--data-dir", str(tiny_dataset)])
    weights = np.zeros((len(mb.feature_names()), len(CLASSES)))
    weights[mb.feature_names().index("site back"), CLASSES.index("nv")] = 2.0
    mb.write(folder, mb.MetadataBranch(weights, tuple(CLASSES), {"l2": 0.001}))
    bench_metadata.main(["--model", str(folder), "--data-dir", str(tiny_dataset)])
    text = capsys.readouterr().out
    n_val = len(pd.read_csv(folder / "predictions_val.csv"))
    assert f"split val, n={n_val}" in text and "split test" not in text
    for variant in ("image only", "image + age", "image + sex", "image + site", "image + age, sex, site"):
        assert variant in text
    sex_line = next(l for l in text.splitlines() if l.strip().startswith("image + sex") and "[" in l and "+0.000" in l)
    assert sex_line.count("+0.000 [+0.000, +0.000]") >= 4  # a field with zero weights changes nothing


def test_the_ensemble_graph_averages_each_members_calibrated_probabilities(tmp_path):
    import bench_ensemble_graph

    members = [save_model_folder(build_tiny_model((30, 40), seed=s), tmp_path / f"m{s}", temperature=t)
               for s, t in ((1, 1.5), (2, 0.7))]
    graph = bench_ensemble_graph.ensemble_graph(members)
    x = np.random.default_rng(0).uniform(0, 255, (3, 30, 40, 3)).astype(np.float32)
    from core.serving import modelio

    expected = np.mean([calibration.apply_temperature(
        np.asarray(modelio.load_model(m)(x, training=False)), t) for m, t in zip(members, (1.5, 0.7))], axis=0)
    np.testing.assert_allclose(np.asarray(graph(x, training=False)), expected, atol=1e-5)
