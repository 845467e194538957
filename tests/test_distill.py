"""Distillation: the student's loss and metrics, and a real student run on a teacher that swaps two classes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import class_colour
from core.training import soft_targets
from core.dataset.data import load_dataset
from core.contracts.labels import CLASSES
from core.dataset.splits import make_splits, save_splits, split_hash
from tiny_models import build_nearest_colour_model, save_model_folder

PROJECT = Path(__file__).resolve().parent.parent
SWAP = ("bcc", "df")


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_loss_is_hintons_soft_term_at_t_squared_plus_the_label_term():
    from core.training.distill import DistillationLoss

    rng = np.random.default_rng(0)
    k, t, w = len(CLASSES), 3.0, 0.7
    student = _softmax(rng.normal(0, 2, (5, k)))
    teacher_t = _softmax(rng.normal(0, 2, (5, k)) / t)
    labels = np.eye(k)[rng.integers(0, k, 5)]
    got = float(DistillationLoss(k, t, w)(np.concatenate([labels, teacher_t], axis=1).astype(np.float32),
                                          student.astype(np.float32)))
    student_t = _softmax(np.log(student) / t)
    kl = (teacher_t * (np.log(teacher_t) - np.log(student_t))).sum(axis=1)
    ce = -(labels * np.log(student)).sum(axis=1)
    assert got == pytest.approx(float(np.mean(w * t * t * kl + (1 - w) * ce)), rel=1e-4)
    # a student that already matches its teacher at T has nothing left to learn from it
    matched = np.concatenate([labels, student_t], axis=1).astype(np.float32)
    assert float(DistillationLoss(k, t, 1.0)(matched, student.astype(np.float32))) == pytest.approx(0.0, abs=1e-5)


def test_training_metrics_read_the_label_columns_only():
    import keras

    from core.training.distill import OnLabels

    k = len(CLASSES)
    labels = np.eye(k)[[0, 1, 2, 3]]
    soft = np.eye(k)[[1, 1, 1, 1]]  # a teacher that disagrees with three labels
    pred = np.eye(k)[[0, 1, 2, 4]] * 0.9 + 0.1 / k
    metric = OnLabels(keras.metrics.CategoricalAccuracy(name="accuracy"), k)
    metric.update_state(np.concatenate([labels, soft], axis=1), pred)
    assert metric.name == "accuracy" and float(metric.result()) == pytest.approx(0.75)
    again = OnLabels.from_config(json.loads(json.dumps(metric.get_config())))
    assert again.num_classes == k and type(again.metric).__name__ == "CategoricalAccuracy"


def _swapping_teacher(tmp_path, dataset: Path, split_file: Path) -> Path:
    """A hand-wired nearest-colour teacher that calls every bcc df and every df bcc."""
    colours = np.stack([class_colour(k) for k in range(len(CLASSES))])
    i, j = (CLASSES.index(c) for c in SWAP)
    colours[[i, j]] = colours[[j, i]]
    return save_model_folder(build_nearest_colour_model(colours, 30, 40), tmp_path / "swapper", temperature=1.0,
                             extra={"split_sha256": split_hash(split_file)})


@pytest.mark.timeout(1200)  # about 3 min on idle cores; TensorFlow starts slowly on loaded ones
def test_a_student_of_soft_targets_only_learns_its_teachers_swap(tmp_path, tiny_dataset, monkeypatch):
    import os

    cache = tmp_path / "cache"
    monkeypatch.setenv("HAM_CACHE_DIR", str(cache))
    split_file = tmp_path / "splits.csv"
    save_splits(make_splits(load_dataset(tiny_dataset), seed=42), split_file)
    targets = tmp_path / "soft.npz"
    soft_targets.build(targets, [_swapping_teacher(tmp_path, tiny_dataset, split_file)], split_file,
                       data_dir=tiny_dataset)
    run_dir = tmp_path / "student"
    cmd = [sys.executable, "-m", "core", "train", "--run-dir", str(run_dir), "--split-file", str(split_file),
           "--soft-targets", str(targets), "--distill-weight", "1", "--distill-temperature", "2",
           "--arch", "small_cnn", "--weights", "none", "--image-size", "32", "--batch-size", "8", "--epochs", "30",
           "--warmup-epochs", "0", "--lr", "0.003", "--finetune-lr", "0.003", "--imbalance", "none", "--augment", "light"]
    env = {**os.environ, "HAM10000_DIR": str(tiny_dataset), "HAM_CACHE_DIR": str(cache), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run(cmd, cwd=PROJECT, env=env, timeout=1100, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["distillation"]["teachers"] == [{"name": "swapper", "arch": "tiny_cnn", "temperature": 1.0}]

    held_out = pd.concat([pd.read_csv(run_dir / f"predictions_{s}.csv") for s in ("val", "test")])
    swapped = held_out[held_out["dx"].isin(SWAP)]
    as_teacher = swapped["dx_pred"] == swapped["dx"].map({SWAP[0]: SWAP[1], SWAP[1]: SWAP[0]})
    assert len(swapped) >= 4 and as_teacher.mean() >= 0.75, swapped[["dx", "dx_pred"]]
    others = held_out[~held_out["dx"].isin(SWAP)]
    assert (others["dx_pred"] == others["dx"]).mean() >= 0.6, others[["dx", "dx_pred"]]

    from core.training import train
    resumed = train.load_checkpoint(run_dir / "last.keras")  # a student's checkpoint loads with its loss
    assert type(resumed.loss).__name__ == "DistillationLoss" and resumed.loss.temperature == 2.0


def test_a_confidently_wrong_student_still_gets_a_gradient():
    """Softmax probabilities underflow; in a traced graph the loss reads the logits instead."""
    import keras
    import tensorflow as tf

    from core.training.distill import DistillationLoss

    k = len(CLASSES)
    inputs = keras.Input(shape=(1,))
    model = keras.Model(inputs, keras.layers.Dense(units=k, activation="softmax")(inputs))
    bias = np.zeros(k, np.float32)
    bias[0] = 120.0  # p of every other class underflows to 0 in float32
    model.layers[-1].set_weights([np.zeros((1, k), np.float32), bias])
    target = np.concatenate([np.eye(k)[[1]], np.eye(k)[[1]]], axis=1).astype(np.float32)
    loss_fn = DistillationLoss(k, 2.0, 0.9)

    @tf.function
    def loss_and_grad():
        with tf.GradientTape() as tape:
            loss = loss_fn(target, model(np.ones((1, 1), np.float32)))
        return loss, tape.gradient(loss, model.trainable_variables)[1]

    loss, grad = loss_and_grad()
    assert float(model(np.ones((1, 1), np.float32))[0, 1]) == 0.0
    # soft: 0.9 · T² · 120 / T; hard: 0.1 · 120 (both from the logits, nothing clipped)
    assert float(loss) == pytest.approx(0.9 * 4 * 60 + 0.1 * 120, rel=1e-3)
    assert float(grad[1]) < -1.0 and float(grad[0]) > 1.0
