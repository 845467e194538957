"""Temperature scaling, ECE, Brier and reliability bins."""

import json

import numpy as np
import pytest

from core.serving import calibration, modelio
def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sample_labels(probs, rng):
    """Draw one label per row from its own probabilities: calibrated by construction."""
    cumulative = probs.cumsum(axis=1)
    return (rng.random((len(probs), 1)) > cumulative).sum(axis=1)


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6000, 7))
    y = sample_labels(softmax(logits), rng)
    overconfident = softmax(logits * 2.5)  # true probabilities are softmax(log(p) / 2.5)
    assert calibration.fit_temperature(overconfident, y) == pytest.approx(2.5, rel=0.06)
    underconfident = softmax(logits * 0.5)
    assert calibration.fit_temperature(underconfident, y) == pytest.approx(0.5, rel=0.06)


def test_temperature_scaling_lowers_ece_and_nll_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (4000, 7))
    y = sample_labels(softmax(logits), rng)
    probs = softmax(logits * 3)
    t = calibration.fit_temperature(probs[:2000], y[:2000])
    scaled = calibration.apply_temperature(probs[2000:], t)
    assert calibration.expected_calibration_error(scaled, y[2000:]) < calibration.expected_calibration_error(
        probs[2000:], y[2000:]
    ) / 3
    assert calibration.nll(scaled, y[2000:]) < calibration.nll(probs[2000:], y[2000:])
    np.testing.assert_array_equal(scaled.argmax(1), probs[2000:].argmax(1))


def test_ece_of_perfectly_calibrated_data_is_near_zero():
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(0, 1.5, (30000, 7)))
    y = sample_labels(probs, rng)
    assert calibration.expected_calibration_error(probs, y) < 0.01


def test_ece_and_reliability_hand_case():
    # Two images at confidence 0.9 (one right), two at 0.6 (both right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 1])
    table = calibration.reliability(probs, y, n_bins=10)
    used = table[table["count"] > 0]
    assert used["count"].tolist() == [2, 2]
    assert used["confidence"].tolist() == pytest.approx([0.6, 0.9])
    assert used["accuracy"].tolist() == pytest.approx([1.0, 0.5])
    assert calibration.expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_reliability_bins_are_right_closed_and_cover_everything():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.6, 0.4]])
    table = calibration.reliability(probs, np.array([0, 0, 0]), n_bins=15)
    assert table["count"].sum() == 3
    assert table["count"].iloc[-1] == 1  # confidence 1.0 is in (14/15, 1]
    assert table["count"].iloc[7] == 1  # 0.5 is in (7/15, 8/15]
    assert len(table) == 15


def test_brier_hand_case():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert calibration.brier_score(probs, np.array([0, 1, 0])) == pytest.approx((0 + 0.5 + 2) / 3)


def test_apply_temperature_of_one_is_identity_and_rejects_nonpositive():
    probs = softmax(np.random.default_rng(3).normal(size=(5, 7)))
    np.testing.assert_allclose(calibration.apply_temperature(probs, 1.0), probs, atol=1e-12)
    with pytest.raises(ValueError):
        calibration.apply_temperature(probs, 0)


def test_save_temperature_writes_model_json(tmp_path):
    meta = {"classes": ["akiec", "bcc"], "image_size": 8, "last_conv_layer": "conv", "temperature": None, "arch": "x"}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    calibration.save_temperature(tmp_path, 1.75)
    saved = modelio.read_metadata(tmp_path)
    assert saved["temperature"] == pytest.approx(1.75)
    assert saved["arch"] == "x"


def test_summary_reports_before_and_after():
    rng = np.random.default_rng(4)
    probs = softmax(rng.normal(0, 3, (500, 7)))
    y = sample_labels(softmax(rng.normal(0, 1, (500, 7))), rng)
    summary = calibration.calibration_summary(probs, y, 2.0)
    assert summary["probabilities"].tolist() == ["uncalibrated", "T = 2.000"]
    assert (summary["n"] == 500).all()
