"""safetrain.doctor: known-bad combinations (on fake version sets) and the real report here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from safetrain.doctor import check_versions

GOOD = {"tensorflow": "2.21.0", "keras": "3.15.1", "numpy": "2.4.6", "tensorflow-datasets": "4.9.10",
        "importlib-resources": "7.1.0", "tf-keras": None}


def test_a_good_set_has_no_findings():
    assert check_versions(GOOD) == []


@pytest.mark.parametrize("change, fatal, words", [
    ({"keras": "2.15.0"}, True, "TensorFlow 2.21 needs Keras 3"),
    ({"tensorflow": "2.15.1", "numpy": "2.0.1"}, True, "TF < 2.16 needs numpy < 2"),
    ({"tensorflow": None}, True, "tensorflow is not installed"),
    ({"importlib-resources": None}, True, "TFDS 4.9.10 imports it without declaring it"),
    ({"tf-keras": "2.21.0"}, False, "TF_USE_LEGACY_KERAS=1"),
])
def test_fake_broken_version_sets_are_named(change, fatal, words):
    findings = check_versions({**GOOD, **change})
    assert any(f.fatal == fatal and words in f.text for f in findings), findings


@pytest.mark.e2e
def test_doctor_tells_the_truth_about_this_machine():
    proc = subprocess.run([sys.executable, "-m", "safetrain.doctor"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tensorflow 2.21" in proc.stdout and "device: CPU" in proc.stdout
    assert "hardware.precision=mixed_float16: refused" in proc.stdout  # no GPU here
    assert proc.stdout.strip().endswith("doctor: ok")
