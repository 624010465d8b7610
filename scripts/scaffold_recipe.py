"""The recipe scripts/new_experiment.py proposes for a folder, and the learning check that proves it.

Why this recipe. On 800 real line drawings (4 classes), the scaffold's former proposal
(`cnn_residual` for any image over 64 px, a constant rate, no augmentation) reached 32.5% test
accuracy in 189 s, the same config with `cnn_small` 67.5% in 41 s. So:

- the model is `cnn_small` (two conv blocks: fast, and enough for the folders a scaffold sees
  first); above 20,000 images of 64 px or more, `cnn_residual` (batch norm, residual blocks);
- AdamW (weight decay 0.05 off the 1-D weights) at 0.001 with a one-epoch warmup and a cosine
  decay to 1e-5 over the steps the time budget plans (trainer.time_budget), label smoothing 0.1,
  and the best eval epoch's weights for test and export (trainer.keep_best);
- augmentation from what a sample of the images looks like: sparse strokes on a flat background
  (drawings, sketches, scans of marks) get rotations up to 36 degrees, left-right flips and small
  shifts; other images the light preset (left-right flips, small shifts). Both conservative; the
  flags that fit other data are written as comments (full rotations and upside-down flips for
  drawings whose class does not depend on orientation; nothing at all for text and digits).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 200
CHECK_BUDGET = "60s"
CHECK_EXAMPLES = 2000


def looks(paths: list[Path], channels: int) -> str:
    """"drawing" when a sample is mostly one flat background level with sparse strokes (three
    quarters of its pixels within 10% of each image's most common level), else "photo"."""
    import numpy as np
    from PIL import Image

    flat = []
    for path in paths[:SAMPLE]:
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L").resize((64, 64), Image.BILINEAR), np.int16)
        background = np.bincount(grey.ravel(), minlength=256).argmax()
        flat.append(float(np.mean(np.abs(grey - background) <= 25)))
    return "drawing" if flat and float(np.median(flat)) >= 0.75 else "photo"


@dataclass(frozen=True)
class Recipe:
    model: str
    kind: str           # drawing | photo
    budget: str
    learning_rate: float

    def lines(self, batch_size: int) -> list[str]:
        augment = (["augment:", "  flip: horizontal", "  rotation: 0.1     # up to 36 degrees", "  translate: 0.1",
                    "  # drawings whose class does not depend on orientation: rotation: 0.5, flip: both",
                    "  # text, digits, or anything whose meaning a flip changes: flip: none, rotation: 0"]
                   if self.kind == "drawing" else
                   ["augment:", "  flip: horizontal", "  translate: 0.1",
                    "  # photos of objects: also zoom: 0.1, contrast: 0.1 (or augment=standard)",
                    "  # text, digits, or anything whose meaning a flip changes: flip: none"])
        return [
            "optimizer:",
            f"  learning_rate: {self.learning_rate:g}",
            "  schedule: cosine",
            "  warmup_epochs: 1",
            "  min_learning_rate: 0.00001",
            "trainer:",
            f"  time_budget: {self.budget}     # the steps that fit it are planned from measured costs",
            "  epochs: 300          # at most: the time budget decides",
            f"  batch_size: {batch_size}",
            "  label_smoothing: 0.1",
            "  keep_best: true",
            "# augmentation: the sample looks like " + ("drawings (sparse strokes on a flat background)"
                                                         if self.kind == "drawing" else "photos"),
            *augment,
        ]


def propose(images: int, height: int, width: int, kind: str, budget: str, learning_rate: float | None) -> Recipe:
    model = "cnn_residual" if images >= 20_000 and min(height, width) >= 64 else "cnn_small"
    return Recipe(model=model, kind=kind, budget=budget, learning_rate=learning_rate or 0.001)


def summary(text: str) -> str:
    """The proposed recipe in one line, from the written config."""
    import yaml

    config = yaml.safe_load(text)
    model = next(d["override /model"] for d in config["defaults"] if isinstance(d, dict) and "override /model" in d)
    t, o, a = config["trainer"], config["optimizer"], config.get("augment", {})
    shown = ", ".join(f"{k} {v}" for k, v in a.items()) or "none"
    return (f"recipe: {model}, adamw {o['learning_rate']:g} (1-epoch warmup, cosine), label smoothing "
            f"{t['label_smoothing']:g}, best eval epoch kept, augmentation: {shown}; trainer.time_budget="
            f"{t['time_budget']}")


def learning_check(run: list[str], name: str, counts, text: str) -> tuple[int, float | None]:
    """(exit code, a lower learning rate that learned where the proposed one did not, or None).
    About a minute of training on up to CHECK_EXAMPLES images per split."""
    import yaml

    chance = max(counts.values()) / max(1, sum(counts.values()))
    rate = yaml.safe_load(text)["optimizer"]["learning_rate"]
    tried = []
    for attempt_rate in (rate, rate / 3):
        result = _check_run(run, name, attempt_rate)
        if result is None:
            print("learning check: the run failed (its error is printed above); the experiment is written, fix "
                  "what the error names and run the scaffold again")
            return 3, None
        first, last, accuracy = result
        words = (f"optimizer.learning_rate={attempt_rate:g}: training loss {first:.3f} -> {last:.3f}, eval accuracy "
                 f"{accuracy:.3f} (chance {chance:.3f})")
        tried.append(words)
        if last < 0.9 * first and accuracy >= chance + max(0.1, 0.25 * (1 - chance)):
            print(f"learning check ({CHECK_BUDGET} on up to {CHECK_EXAMPLES:,} images per split): {words}: it learns")
            return 0, (attempt_rate if attempt_rate != rate else None)
        print(f"learning check: {words}: not learning yet" + ("; trying a third of the rate" if len(tried) == 1
                                                               else ""))
    print("learning check failed: " + "; ".join(tried) + ". Look at the data (are the classes told apart by what "
          "the images show? suspect_labels.csv of a run lists files the model puts elsewhere), or give it more "
          "than a minute: the experiment is written and trains as it is")
    return 4, None


def _check_run(run: list[str], name: str, learning_rate: float) -> tuple[float, float, float] | None:
    """(first logged training loss, last, eval accuracy of the weights kept) of a one-minute run."""
    check_dir = Path(tempfile.mkdtemp(prefix=f"safetrain-learn-{name}-"))
    done = subprocess.run([sys.executable, "-m", "safetrain", *run, f"hydra.run.dir={check_dir}",
                           f"trainer.time_budget={CHECK_BUDGET}", "trainer.export=false",
                           f"dataset.max_examples={CHECK_EXAMPLES}", f"optimizer.learning_rate={learning_rate}",
                           "hardware.precision_trial=false", "trainer.log_every_steps=5", "trainer.steps_per_loop=1"],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        return None
    report = json.loads((check_dir / "report.json").read_text())
    losses = _scalars(check_dir / "tb", "train/loss")
    accuracy = (report.get("best") or {}).get("value") or report["metrics"].get("eval_accuracy") or 0.0
    if len(losses) < 2:
        return None
    return losses[0], losses[-1], float(accuracy)


def _scalars(logdir: Path, tag: str) -> list[float]:
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return []
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
