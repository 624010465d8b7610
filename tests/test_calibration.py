"""Calibrated probabilities and the "unsure" threshold (NumPy, no TensorFlow), and the export gates
that keep a format only when it serves what was tested."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss

from safetrain.experiment import calibration, parity


def _overconfident(n: int, temperature: float, seed: int = 0):
    """Labels drawn from softmax(z); the model reports z * temperature (too sure when > 1)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 5))
    p = calibration.softmax(z)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z * temperature, labels


def test_the_fitted_temperature_undoes_a_known_overconfidence_and_lowers_ece_and_nll():
    logits, labels = _overconfident(20_000, 2.5)
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    before = calibration.scores(calibration.softmax(logits), labels)
    after = calibration.scores(calibration.softmax(logits, t), labels)
    assert after["ece"] < before["ece"] / 3 and after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["ece"] < 0.02
    # scikit-learn's log loss, the same number
    assert after["nll"] == pytest.approx(log_loss(labels, calibration.softmax(logits, t), labels=range(5)), abs=1e-6)


def test_ece_is_the_share_weighted_gap_between_confidence_and_accuracy_per_bin():
    # 4 examples at confidence 0.9 (3 right: gap 0.15), 2 at 0.55 (1 right: gap 0.05)
    p = np.array([[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 2)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert calibration.ece(p, labels) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.05)


def test_the_unsure_threshold_keeps_the_most_images_that_reach_the_target():
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.3, 1.0, 500)
    correct = rng.uniform(size=500) < confidence  # surer answers are right more often
    p = np.stack([confidence, 1 - confidence], axis=1)
    labels = np.where(correct, 0, 1)
    found = calibration.unsure_threshold(p, labels, 0.9)
    top, right = p.max(axis=1), p.argmax(axis=1) == labels  # below 0.5 the top class is the other one
    kept = top >= found.threshold
    assert right[kept].mean() >= 0.9 and found.eval_coverage == pytest.approx(kept.mean())
    # no lower threshold (more coverage) reaches the target
    for lower in np.unique(top[top < found.threshold]):
        assert right[top >= lower].mean() < 0.9
    at = calibration.at_threshold(p, labels, found.threshold)
    assert at["coverage"] == pytest.approx(kept.mean()) and at["accuracy"] == pytest.approx(right[kept].mean())
    curve = calibration.coverage_curve(p, labels)  # the curve the threshold is read from, 5% steps
    assert len(curve) == 20 and curve[-1]["coverage"] == 1.0 and curve[-1]["accuracy"] == pytest.approx(right.mean())
    assert curve[0]["threshold"] >= curve[-1]["threshold"] == pytest.approx(p.max(axis=1).min(), abs=1e-6)
    assert curve[0]["accuracy"] == pytest.approx(right[np.argsort(-p.max(axis=1))][:25].mean())
    never = calibration.unsure_threshold(p, 1 - p.argmax(axis=1), 0.99)  # every answer wrong
    assert never.threshold is None and "no confidence reaches 0.99" in never.reason


def test_calibration_is_skipped_with_its_reason_on_a_small_eval_or_when_off():
    logits, labels = _overconfident(60, 2.0)
    small = calibration.calibrate(logits, labels, True, None)
    assert small.temperature == 1.0 and small.skipped.startswith("60 eval examples; a temperature needs at least 100")
    off = calibration.calibrate(*_overconfident(300, 2.0), False, 0.9)
    assert off.temperature == 1.0 and off.skipped == "trainer.calibrate=false" and off.unsure is not None
    none = calibration.calibrate(None, None, True, 0.9)
    assert none.skipped.startswith("no eval split") and none.unsure.threshold is None
    assert none.report()["unsure"]["reason"].startswith("no eval split to choose it on")
    fitted = calibration.calibrate(*_overconfident(300, 2.0), True, 0.9)
    assert fitted.report()["temperature"] == pytest.approx(2.0, rel=0.3) and "skipped" not in fitted.report()


def _files(reference: np.ndarray, labels: np.ndarray) -> parity.TestFiles:
    return parity.TestFiles([f"f{i}.png" for i in range(len(labels))], [b"%d" % i for i in range(len(labels))],
                            np.eye(reference.shape[1], dtype=np.int64)[labels], reference, False, None)


def test_a_float_format_beyond_its_tolerance_fails_naming_the_files_that_differ_most(tmp_path: Path):
    rng = np.random.default_rng(0)
    reference = calibration.softmax(rng.normal(0, 3, (200, 4)))
    labels = reference.argmax(axis=1)
    files = _files(reference, labels)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"x" * 1000)
    shifted = reference.copy()
    shifted[17] = np.roll(shifted[17], 1)  # a converter that breaks one file (stands in for a faulty runtime)
    exact = parity.prove("onnx", lambda enc: reference[[int(e) for e in enc]], files, artifact, 1e-4, list("abcd"))
    broken = parity.prove("onnx", lambda enc: shifted[[int(e) for e in enc]], files, artifact, 1e-4, list("abcd"))
    assert exact["passed"] and exact["agreement"] == 1.0 and exact["bytes"] == 1000 and exact["files"] == 200
    assert set(exact["recall"]) == set("abcd") and all(r == 1.0 for r in exact["recall"].values())
    assert not broken["passed"] and broken["agreement"] == 0.995 and broken["differing_files"][0] == "f17.png"
    assert broken["gate"].startswith("max |diff| ") and broken["gate"].endswith("> 0.0001")
    from safetrain.experiment.recording import parity_error

    error = parity_error([broken, {**broken, "format": "tflite"}])
    assert error.exit_code == 4 and error.kind == "export_parity"
    assert "onnx, tflite (max |diff|" in error.message and "f17.png" in error.message


def test_a_bfloat16_models_gate_widens_as_the_temperature_sharpens_its_logits():
    assert parity.tolerance("float32", 0.3) == parity.tolerance("float32", 4.0) == 1e-4
    assert parity.tolerance("bfloat16", 1.0) == parity.tolerance("bfloat16", 2.5) == 1e-2  # T > 1 only softens
    assert parity.tolerance("bfloat16", 0.475) == round(1e-2 / 0.475, 6)  # the same gate on the logits' scale
    assert parity.tolerance("float16", 0.25) == 0.04


def test_int8_is_gated_on_agreement_and_the_worst_class_recall_drop():
    labels = np.repeat(np.arange(4), 50)
    reference = np.eye(4)[labels] * 0.7 + 0.075
    files = _files(reference, labels)
    one_flip = reference.copy()
    one_flip[0] = np.roll(one_flip[0], 1)  # class a loses 1 of 50: 2 points, 99.5% agreement
    two_flips = one_flip.copy()
    two_flips[1] = np.roll(two_flips[1], 1)  # 4 points in class a
    kept = parity.prove("tflite_int8", lambda e: one_flip[[int(x) for x in e]], files, Path("none"), None, list("abcd"))
    refused = parity.prove("tflite_int8", lambda e: two_flips[[int(x) for x in e]], files, Path("none"), None,
                           list("abcd"))
    assert kept["passed"] and kept["worst_class_drop"] == 0.02 and kept["worst_class"] == "a"
    assert not refused["passed"] and refused["worst_class_drop"] == 0.04 and "worst class drop 0.0400 in a" in \
        refused["gate"]
