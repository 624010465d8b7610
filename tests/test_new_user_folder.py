"""A new user's messy photo folder, tried as they would: train/ and test/ of their own, a copy of one
photo in both, a dangling link, a tiny class, class names with spaces and accents (one written
decomposed, as macOS does). One dry run names every problem and uses their split; training and
predict on a photo of another size then work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

CAFE = "caf\u00e9 au lait"  # composed (NFC) in train/
CAFE_NFD = unicodedata.normalize("NFD", CAFE)  # decomposed in test/ (macOS)


def photo(rng, size=20) -> np.ndarray:
    small = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))


@pytest.fixture
def messy(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "photos"
    for split, counts in (("train", {"red fox": 12, CAFE: 12, "owl": 2}), ("test", {"red fox": 4, CAFE_NFD: 4,
                                                                                    "owl": 1})):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(photo(rng)).save(root / split / cls / f"{i}.png")
    (root / "test" / "red fox" / "copy.png").write_bytes((root / "train" / "red fox" / "3.png").read_bytes())
    (root / "train" / "owl" / "moved.png").symlink_to(tmp_path / "elsewhere" / "moved.png")
    return root


@pytest.mark.e2e
def test_one_dry_run_names_every_problem_then_training_and_predict_on_another_size_work(messy, run_main, tmp_path):
    args = ["dataset=image_folder", f"dataset.path={messy}", "dataset.image.height=20", "dataset.image.width=20",
            "dataset.resize=error", "trainer.batch_size=4", "trainer.epochs=1", "hardware.precision_trial=false"]
    dry = run_main(*args, "dry_run=true", "dataset.on_bad_example=skip", name="dry")
    assert dry.code == 0, dry.err
    log = dry.err
    assert "split folders: train <- train[:90%], eval <- train[90%:] (carved per class: no val/ folder), " \
           "test <- test/" in log
    assert f"per class: {CAFE} 16, owl 3, red fox 17" in log  # one class, though test/ spells it decomposed
    report = dry.report()
    assert report["name"] == "image_folder_cnn_small"  # not the default experiment's "digits_cnn"
    assert report["data"]["splits"] == {"train": "train[:90%]", "eval": "train[90%:]", "test": "test"}
    assert report["data"]["selected"] == {"train": 23, "eval": 3, "test": 10}  # the tiny class is in eval too
    from conftest import read_tensorboard

    assert "_hparams_/session_start_info" not in read_tensorboard(dry.run_dir / "tb")[1]  # a check, not a result
    events = dry.errors()
    assert {e["kind"] for e in events} >= {"bad_example", "leakage"}
    link = next(e for e in events if e["kind"] == "bad_example")
    assert link["example"] == str(messy / "train" / "owl" / "moved.png") and "dangling symbolic link" in link["message"]
    leak = next(e for e in events if e["kind"] == "leakage")
    assert leak["example"] == str(messy / "test" / "red fox" / "copy.png")

    trained = run_main(*args, "dataset.on_bad_example=skip", "trainer.export=true", name="trained")
    assert trained.code == 0, trained.err
    signature = json.loads((trained.run_dir / "export" / "signature.json").read_text())
    assert signature["classes"] == [CAFE, "owl", "red fox"]
    assert (signature["serving_resize"], signature["serving_resize_from"]) == ("bilinear", "trainer.serving_resize")
    big = tmp_path / "big photo.jpg"
    Image.fromarray(photo(np.random.default_rng(1), 200)).resize((200, 150)).save(big, "JPEG")
    proc = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={trained.run_dir}", str(big)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{big}: ") and "error" not in proc.stdout and "Traceback" not in proc.stderr
