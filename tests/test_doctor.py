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
    assert "cores usable" in proc.stdout and "cpu settings:" in proc.stdout
    assert proc.stdout.strip().endswith("doctor: ok")


SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480C\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
EPYC = "model name\t: AMD EPYC\nflags\t\t: fpu sse avx avx2 fma\n"
ZEN4 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"


def test_the_cpu_lines_name_the_math_extensions_and_the_settings_that_change_the_math():
    from safetrain.train.hardware import describe_cpu

    spr = describe_cpu(SAPPHIRE, 2, {"TF_SET_ONEDNN_FPMATH_MODE": "BF16", "HOME": "/root"})
    assert spr[0] == ("cpu: Intel(R) Xeon(R) Platinum 8480C, 2 cores usable; math extensions: avx2, avx512f, "
                      "avx512_bf16, amx_tile, amx_bf16 (bfloat16 on AMX tiles (amx_bf16, amx_tile) and AVX512_BF16)")
    assert spr[1] == "cpu settings: TF_SET_ONEDNN_FPMATH_MODE=BF16"
    epyc = describe_cpu(EPYC, 16, {})
    assert "math extensions: avx2 (no native bfloat16: bfloat16 would be emulated" in epyc[0]
    zen4 = describe_cpu(ZEN4, 2, {})  # AVX512_BF16 without AMX: said apart, not called AMX
    assert "avx512_bf16 (bfloat16 dot products on AVX-512 (AVX512_BF16) but no AMX tiles" in zen4[0]
    assert epyc[1].startswith("cpu settings: TensorFlow's defaults")
