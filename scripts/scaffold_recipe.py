"""The recipe scripts/new_experiment.py proposes for a folder, and the learning check that proves it.

Why this recipe. On 800 real line drawings (4 classes), the scaffold's former proposal
(`cnn_residual` for any image over 64 px, a constant rate, no augmentation) reached 32.5% test
accuracy in 189 s, the same config with `cnn_small` 67.5% in 41 s. So:

- the model is `cnn_small` (two conv blocks: fast, and enough for the folders a scaffold sees
  first); for 20,000+ images of 64 px or more `cnn_residual` (batch norm, residual blocks) is a
  candidate too, chosen only when its measured rate trains 10+ epochs in the budget (`size_model`:
  on 27,292 real 70x70 drawings it trained half an epoch in 10 minutes on 2 cores);
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
import math
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
MIN_CEILING = 300  # trainer.epochs written, at least (a ceiling: the time budget decides)


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
    multi_label: bool = False   # label sets: binary cross-entropy, no label smoothing (thresholds are tuned)
    max_epochs: int = MIN_CEILING  # trainer.epochs: a ceiling the budget should never reach

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
            f"  epochs: {self.max_epochs}          # at most: the time budget decides",
            f"  batch_size: {batch_size}",
            *(["  loss: binary_crossentropy   # a sigmoid per label (dataset.task: multi_label)"]
              if self.multi_label else ["  label_smoothing: 0.1"]),
            "  keep_best: true",
            "# augmentation: the sample looks like " + ("drawings (sparse strokes on a flat background)"
                                                         if self.kind == "drawing" else "photos"),
            *augment,
        ]


def propose(model: str, kind: str, budget: str, learning_rate: float | None, multi_label: bool = False,
            max_epochs: int = MIN_CEILING) -> Recipe:
    return Recipe(model=model, kind=kind, budget=budget, learning_rate=learning_rate or 0.001,
                  multi_label=multi_label, max_epochs=max_epochs)


def candidates(images: int, height: int, width: int) -> tuple[str, ...]:
    """The models worth measuring: cnn_residual only for large folders of images of 64 px or more
    (on 800 real line drawings it reached 32.5% where cnn_small reached 67.5%; on the 545 shared
    drawings with the written recipe and a 5-minute budget, 53.7% against 88.9%:
    scripts/recipe_study.py shapes)."""
    return CANDIDATES if images >= 20_000 and min(height, width) >= 64 else CANDIDATES[:1]


def summary(text: str) -> str:
    """The proposed recipe in one line, from the written config."""
    import yaml

    config = yaml.safe_load(text)
    model = next(d["override /model"] for d in config["defaults"] if isinstance(d, dict) and "override /model" in d)
    t, o, a = config["trainer"], config["optimizer"], config.get("augment", {})
    shown = ", ".join(f"{k} {v}" for k, v in a.items()) or "none"
    loss = ("binary cross-entropy (label sets), thresholds tuned on eval" if t.get("loss") == "binary_crossentropy"
            else f"label smoothing {t['label_smoothing']:g}")
    return (f"recipe: {model}, adamw {o['learning_rate']:g} (1-epoch warmup, cosine), {loss}, best eval epoch kept, "
            f"augmentation: {shown}; trainer.time_budget={t['time_budget']}")


MIN_CHECK_STEPS = 20      # fewer trained steps say nothing about learning
SIGNIFICANCE = 0.05       # eval accuracy above chance: one-sided binomial test
MIN_EVAL_IMAGES = 50      # under this, a check that shows no learning cannot tell


@dataclass(frozen=True)
class CheckRun:
    """What a learning check's run showed (report.json and its TensorBoard losses)."""

    losses: list[float]
    accuracy: float           # eval accuracy of the weights kept
    eval_images: int
    steps: int
    plan: str                 # the budget's plan in words


MAP_MARGIN = 0.1          # label sets: eval mAP this far above chance (the mean label prevalence) is learning


def learning_check(run: list[str], name: str, counts, text: str, images: int | None = None) -> tuple[int, float | None]:
    """(exit code, a lower learning rate that learned where the proposed one did not, or None).
    About a minute of training on up to CHECK_EXAMPLES images per split. It tells the truth: a
    run that failed prints its own error (exit 3); one that trained too few steps, or whose eval
    split is too small to tell learning from chance, says so (exit 0: the experiment is fine to
    train); one that does not learn is tried once more at a third of the rate, then exit 4.

    `images` (label sets): the eval split's mAP is the evidence instead of its accuracy; a random
    ranking's AP is the label's prevalence, so chance is the mean prevalence, and learning is an
    mAP at least MAP_MARGIN above it (no binomial test: AP is not a count of right answers)."""
    import yaml

    multi = images is not None
    chance = (sum(counts.values()) / max(1, images * len(counts)) if multi
              else max(counts.values()) / max(1, sum(counts.values())))
    rate = yaml.safe_load(text)["optimizer"]["learning_rate"]
    tried = []
    for attempt_rate in (rate, rate / 3):
        result = _check_run(run, name, attempt_rate)
        if isinstance(result, str):
            print(result)
            print("learning check: the run failed (its error is above); the experiment is written: fix what the "
                  "error names and run the scaffold again")
            return 3, None
        if result.steps < MIN_CHECK_STEPS or len(result.losses) < 2:
            print(f"learning check: cannot tell: the {CHECK_BUDGET} check trained {result.steps} steps ({result.plan}); "
                  f"too few to see learning. The experiment is written and trains with its own budget")
            return 0, None
        first, last = result.losses[0], result.losses[-1]
        if multi:
            above = result.accuracy >= chance + MAP_MARGIN
            p_value = 0.0 if above else 1.0
            words = (f"optimizer.learning_rate={attempt_rate:g}: {result.steps} steps, training loss {first:.3f} -> "
                     f"{last:.3f}, eval mAP {result.accuracy:.3f} ({result.eval_images} images; chance {chance:.3f}, "
                     f"learning from {chance + MAP_MARGIN:.3f})")
        else:
            right = round(result.accuracy * result.eval_images)
            p_value = _above_chance(right, result.eval_images, chance)
            words = (f"optimizer.learning_rate={attempt_rate:g}: {result.steps} steps, training loss {first:.3f} -> "
                     f"{last:.3f}, eval accuracy {result.accuracy:.3f} ({right} of {result.eval_images} images; "
                     f"chance {chance:.3f})")
        tried.append(words)
        if last < first and p_value < SIGNIFICANCE:  # the eval split, above chance, is the evidence
            print(f"learning check ({CHECK_BUDGET} on up to {CHECK_EXAMPLES:,} images per split): {words}: it learns")
            return 0, (attempt_rate if attempt_rate != rate else None)
        if result.eval_images < MIN_EVAL_IMAGES:  # too few to show learning, and too few to deny it
            test = "" if multi else f" (one-sided binomial p = {p_value:.2f})"
            print(f"learning check: cannot tell: {words}; an eval split of {result.eval_images} images cannot tell "
                  f"learning from chance{test}. The experiment is written and "
                  f"trains; more images per class make the check (and the test split) say more")
            return 0, None
        print(f"learning check: {words}: not learning yet" + ("; trying a third of the rate" if len(tried) == 1
                                                               else ""))
    print("learning check failed: " + "; ".join(tried) + ". Look at the data (are the classes told apart by what "
          "the images show? suspect_labels.csv of a run lists files the model puts elsewhere), or give it more "
          "than a minute: the experiment is written and trains as it is")
    return 4, None


def _above_chance(right: int, total: int, chance: float) -> float:
    """One-sided binomial p-value of `right` of `total` or more at `chance`."""
    from scipy.stats import binomtest

    return float(binomtest(right, total, chance, alternative="greater").pvalue) if total else 1.0


def _check_run(run: list[str], name: str, learning_rate: float) -> CheckRun | str:
    """A one-minute run's results, or (failed) its own output's end, where its error is."""
    check_dir = Path(tempfile.mkdtemp(prefix=f"safetrain-learn-{name}-"))
    done = subprocess.run([sys.executable, "-m", "safetrain", *run, f"hydra.run.dir={check_dir}",
                           f"trainer.time_budget={CHECK_BUDGET}", "trainer.export=false",
                           f"dataset.max_examples={CHECK_EXAMPLES}", f"optimizer.learning_rate={learning_rate}",
                           "hardware.precision_trial=false", "trainer.log_every_steps=5", "trainer.steps_per_loop=1"],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        said = "\n".join(line for line in (done.stdout + done.stderr).splitlines() if line.strip())
        return f"learning check run (exit {done.returncode}, run directory {check_dir}):\n" + said[-3000:]
    report = json.loads((check_dir / "report.json").read_text())
    budget = report.get("budget") or {}
    plan = (f"{budget.get('step_ms')} ms a step, first plan {budget.get('first_plan')} steps, stopped by "
            f"{budget.get('stopped_by')}")
    # the kept epoch's eval value: accuracy, or mAP for label sets (keep_best chooses on it)
    accuracy = ((report.get("best") or {}).get("value") or report["metrics"].get("eval_accuracy")
                or report["metrics"].get("eval_map") or 0.0)
    eval_images = int((report.get("data") or {}).get("counts", {}).get("eval") or 0)
    return CheckRun(losses=_scalars(check_dir / "tb", "train/loss"), accuracy=float(accuracy),
                    eval_images=eval_images, steps=int(report.get("steps") or 0), plan=plan)


def _scalars(logdir: Path, tag: str) -> list[float]:
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()  # without TensorFlow's start-up lines on the console
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    if tag not in acc.Tags()["tensors"]:
        return []
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


# -- the model sized to the budget ------------------------------------------------------------------

CANDIDATES = ("cnn_small", "cnn_residual")  # from the fastest to the most capable
MIN_EPOCHS = 10          # a candidate must train this many epochs in the budget's training time
TRAIN_SHARE = 0.8        # of the budget: the rest is start-up, evaluations, test and export
MEASURE_SECONDS = 3.0    # steady steps timed per candidate, after its trace
MAX_BUDGET_MINUTES = 120


@dataclass(frozen=True)
class Sizing:
    """Which model fits the budget, from each candidate's measured steady-state rate."""

    model: str
    budget: str                        # the budget to write: the one asked, or more when none fits it
    rates: dict[str, float]            # images per second, each candidate
    epochs: dict[str, float]           # epochs each would train in the budget asked
    why: str
    expected: float = 0.0              # epochs the chosen model should train in the budget written

    def ceiling(self) -> int:
        """trainer.epochs to write: a ceiling the budget never reaches (twice the expected epochs, in
        hundreds, at least MIN_CEILING). A fixed 300 already capped a 5-minute run on the 545 shared
        drawings (300 epochs in 288 s on an Intel Xeon with AMX, where the precision trial chose
        bfloat16), and the scaffold writes 10 minutes for them."""
        return max(MIN_CEILING, 100 * math.ceil(2 * self.expected / 100))


def measure_rates(height: int, width: int, channels: int, classes: int, batch: int,
                  candidates: tuple[str, ...] = CANDIDATES, seconds: float = MEASURE_SECONDS) -> dict[str, float]:
    """Each candidate's steady-state training rate (images/s) at this input and batch: the model as
    safetrain builds it, a Keras train step traced and warmed first, then timed for `seconds`."""
    import time

    from safetrain.core.tf_import import import_tensorflow

    import_tensorflow()  # without TensorFlow's start-up lines on the console
    import keras
    import numpy as np
    import yaml

    from safetrain.models.build import build_model
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer

    rng = np.random.default_rng(0)
    x = rng.random((batch, height, width, channels), dtype=np.float32)
    y = rng.integers(0, classes, batch)
    rates = {}
    for name in candidates:
        layers = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())["layers"]
        keras.utils.set_random_seed(0)
        model = build_model(infer(parse_layers(layers), (height, width, channels), classes))
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):  # the trace and the first (oneDNN primitive) calls
            model.train_on_batch(x, y)
        steps, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds or steps < 3:
            model.train_on_batch(x, y)
            steps += 1
        rates[name] = steps * batch / (time.perf_counter() - began)
        keras.backend.clear_session()
    return rates


def size_model(rates: dict[str, float], train_images: int, budget: str) -> Sizing:
    """The most capable candidate that trains MIN_EPOCHS epochs in the budget's training time
    (TRAIN_SHARE of it); when none does, the fastest, with the budget raised to what it needs
    (whole minutes, at most MAX_BUDGET_MINUTES)."""
    from safetrain.train.budget import parse_budget

    seconds = parse_budget(budget)
    epochs = {name: TRAIN_SHARE * seconds * rate / max(1, train_images) for name, rate in rates.items()}
    fits = [name for name in rates if epochs[name] >= MIN_EPOCHS]
    seen = ", ".join(f"{name} {rates[name]:,.0f} images/s -> {epochs[name]:.0f} epochs" for name in rates)
    if fits:
        model = fits[-1]
        return Sizing(model, budget, rates, epochs,
                      f"{model}: the most capable model that trains {MIN_EPOCHS}+ epochs of the {train_images:,} "
                      f"training images in {budget} ({seen})", expected=epochs[model])
    fastest = max(rates, key=rates.get)
    needed = MIN_EPOCHS * train_images / rates[fastest] / TRAIN_SHARE
    minutes = min(MAX_BUDGET_MINUTES, math.ceil(needed / 60))
    raised = f"{minutes}m"
    return Sizing(fastest, raised, rates, epochs,
                  f"{fastest}, with trainer.time_budget={raised}: no model trains {MIN_EPOCHS} epochs of the "
                  f"{train_images:,} training images in {budget} ({seen}); {fastest} needs about {needed / 60:.0f} "
                  f"minutes for them" + (f" (capped at {MAX_BUDGET_MINUTES} minutes)" if minutes == MAX_BUDGET_MINUTES
                                         else ""), expected=epochs[fastest] * 60 * minutes / seconds)
