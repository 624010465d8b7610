"""Results people act on: the sweep summary (best job, the varied value plotted), the labelled
confusion matrix, top losses, per-class report and suspect labels, drawn with matplotlib and
computed with scikit-learn, read back from the files a run writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "scripts" / "sweep_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(sweep: Path, i: int, overrides: list[str], eval_acc, test_acc, code: int = 0) -> None:
    job = sweep / str(i)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    report = {"status": "ok" if code == 0 else "failed", "exit_code": code,
              "error": None if code == 0 else {"kind": "numerics"}, "hardware": {}, "throughput": {},
              "metrics": {"eval_accuracy": eval_acc, "test_accuracy": test_acc}}
    (job / "report.json").write_text(json.dumps(report))


def test_the_sweep_summary_picks_the_best_job_on_eval_and_plots_the_one_varied_value(tmp_path):
    sweep = tmp_path / "sweep"
    # job 1 has the best *test* accuracy but not the best eval: the summary must not choose on test
    for i, (lr, ev, te, code) in enumerate([("0.0001", 0.80, 0.79, 0), ("0.001", 0.90, 0.95, 0),
                                            ("0.01", 0.93, 0.91, 0), ("0.1", None, None, 5)]):
        _job(sweep, i, ["+debug=tiny", f"optimizer.learning_rate={lr}"], ev, te, code)
    module = _sweep_module()
    found = module.rows(sweep)
    assert module.best(found)["job"] == 2
    assert module.varied(found) == {"optimizer.learning_rate": ["0.0001", "0.001", "0.01", "0.1"]}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1  # a job failed
    assert "best job: 2 (eval accuracy 0.9300, test accuracy 0.91, chosen on eval): +debug=tiny " \
           "optimizer.learning_rate=0.01" in out.stdout
    picture = sweep / "sweep_optimizer.learning_rate.png"
    assert f"plot: {picture}" in out.stdout
    import matplotlib.image

    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[:2] == (400, 600) and pixels[..., :3].std() > 0.05  # a drawn plot, not a blank canvas
    # two varied keys: no plot (which one would the x axis be?)
    _job(sweep, 4, ["+debug=tiny", "optimizer.learning_rate=0.01", "trainer.batch_size=64"], 0.5, 0.5)
    assert module.plot(module.rows(sweep), sweep) is None
