"""Cluster sweeps: the SLURM launcher config composes, and a submitit launcher runs our jobs.

SLURM itself is not on this machine; submitit's `local` executor runs the same launcher code
path (pickled task function, one process per job) on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def _safetrain(*args: str, cwd, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "safetrain", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_slurm_launcher_config_composes_with_the_submitit_plugin(tmp_path):
    proc = _safetrain("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                      "--package", "hydra.launcher", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "_target_: hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "partition: gpu" in proc.stdout and "timeout_min: 240" in proc.stdout


@pytest.mark.e2e
def test_submitit_local_launcher_runs_each_job_to_its_own_report(tmp_path, tfds_dir):
    sweep = tmp_path / "sweep"
    proc = _safetrain("-m", "hydra/launcher=submitit_local", "+debug=tiny", f"dataset.data_dir={tfds_dir}",
                      f"hydra.sweep.dir={sweep}", "trainer.max_steps=2,3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads((sweep / str(i) / "report.json").read_text()) for i in range(2)]
    assert [(r["status"], r["steps"]) for r in reports] == [("ok", 2), ("ok", 3)]
    assert (sweep / ".submitit").is_dir()  # submitit ran them, not Hydra's basic launcher
