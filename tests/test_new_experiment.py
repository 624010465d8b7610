"""From a folder of real PNG/JPEG files (some bad) to a checked experiment, a trained model and predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _folder(root):
    rng = np.random.default_rng(0)
    for cls, n, channel in (("red", 24, 0), ("green", 24, 1), ("blue", 6, 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            size = (40, 48) if i % 2 else (36, 44)
            image = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
            image[..., channel] = 220  # a learnable class signal
            name, fmt = (f"{i}.jpg", "JPEG") if i % 3 == 0 else (f"{i}.png", "PNG")
            Image.fromarray(image).save(root / cls / name, format=fmt)
    (root / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    return root


@pytest.mark.e2e
def test_scan_write_check_train_and_predict_a_new_project(tmp_path):
    images, configs = _folder(tmp_path / "images"), tmp_path / "my_configs"
    scaffold = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(images), "colors",
                               "--configs", str(configs)], capture_output=True, text=True, env=ENV, timeout=300)
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    out = scaffold.stdout + scaffold.stderr
    assert "scanned 55 files in 3 classes: blue 6, green 24, red 24" in out
    assert "too few images in blue (6)" in out and "imbalanced classes" in out
    assert "mixed formats" in out and f"{images / 'green' / 'broken.jpg'}" in out
    assert "dry run: the config, the data (every example scanned) and the model" in out  # checked, not trained
    written = configs / "experiment" / "colors.yaml"
    config = yaml.safe_load(written.read_text())
    assert config["dataset"]["image"] == {"height": 40, "width": 48, "channels": 3, "dtype": "float32",
                                          "normalization": "standardize"}
    assert config["dataset"]["resize"] == "bilinear" and config["dataset"]["on_bad_example"] == "skip"
    assert config["dataset"]["class_weights"] == "balanced"  # blue has 6 images, green and red 24
    assert written.read_text().startswith("# @package _global_")

    run_dir = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.searchpath=[file://{configs}]",
                            "+experiment=colors", "trainer.epochs=4", f"hydra.run.dir={run_dir}"],
                           capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["skipped"] == 1 and report["export"]["classes"] == ["blue", "green", "red"]
    weights = report["data"]["class_weights"]  # scikit-learn's balanced: n / (classes * n_class) on train
    assert list(weights) == ["blue", "green", "red"] and weights["blue"] > 2 * weights["green"]

    new = tmp_path / "new_red.png"
    image = np.random.default_rng(1).integers(0, 90, (60, 70, 3), dtype=np.uint8)
    image[..., 0] = 220
    Image.fromarray(image).save(new)
    predict = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={run_dir}", str(new)],
                             capture_output=True, text=True, env=ENV, timeout=120)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.startswith(f"{new}: red ")
