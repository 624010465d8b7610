"""The fault soak's short version: SIGKILL, SIGTERM and a truncated checkpoint, each checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.e2e
def test_short_soak_loses_no_steps_beyond_the_last_checkpoint(tfds_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--runs", "3", "--seed", "1",
                           "--faults", "sigkill,sigterm,truncated_checkpoint", "--data-dir", str(tfds_dir)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "faults injected 3, runs completed 3, steps lost beyond last checkpoint 0" in proc.stdout
