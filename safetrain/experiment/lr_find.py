"""The learning-rate range test's maths (`python -m safetrain.lr_find` runs it: safetrain/lr_find.py).

Leslie Smith's range test, as fastai's `lr_find` runs it: train from the run's initial weights on
its own training batches while the learning rate grows exponentially from `trainer.lr_find_start`
to `trainer.lr_find_end` over `trainer.lr_find_steps` steps, record the loss, stop early once the
smoothed loss has blown up (4x its best), then put the initial weights back. The curve is read
after a centered moving average (a causal one, like the stop's, lags the loss by tens of steps and
moved the points it read 2.5-5x to the right on digits_cnn: steepest 1.2e-2 vs 4.9e-3, lowest
3.8e-2 vs 7.0e-3). The suggestion is a tenth of the rate of the lowest loss (fastai's
`minimum`/10: at the minimum itself the loss is about to diverge); the rate where the loss falls
fastest (fastai's `steep`) is reported beside it as the aggressive choice. `lr_find.png` and
`lr_find.json` go to the run dir, and the override to use is printed. It is
`python -m safetrain trainer.lr_find=true`:
everything before training (config, data scan, model, precision) runs as in a real run.

The test uses its own optimizer of the configured kind (optimizer.name, clipnorm, weight decay)
with a plain rate it sets each step; the run's schedule, warmup and EMA do not apply to it.
Configs it cannot honour are refused before anything is built (safetrain.experiment.validate).
`run` is the test on a run's own model and batches; the rest is the maths and the picture.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from safetrain.config.schema import Config
from safetrain.core.errors import NumericsError
from safetrain.experiment.recording import weights_digest
from safetrain.pipelines.build import Datasets
from safetrain.record import names
from safetrain.record.run_record import RunRecord
from safetrain.train.task import Task, new_optimizer, ready_optimizer

log = logging.getLogger("safetrain")

SMOOTHING = 0.98     # the exponential moving average of the loss (bias-corrected), as fastai
DIVERGED = 4.0       # stop when the smoothed loss exceeds this many times its best


def rates(start: float, end: float, steps: int) -> np.ndarray:
    """The rate of each step: exponential from `start` to `end`."""
    return start * (end / start) ** (np.arange(steps) / max(1, steps - 1))


def smooth(losses: Iterable[float], beta: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (the first value is not pulled toward 0)."""
    out, mean = [], 0.0
    for i, loss in enumerate(losses, start=1):
        mean = beta * mean + (1 - beta) * loss
        out.append(mean / (1 - beta ** i))
    return np.array(out)


def centered(losses: Iterable[float]) -> np.ndarray:
    """A centered moving average over about a tenth of the steps (at least 5): no lag."""
    values = np.asarray(list(losses), np.float64)
    width = max(5, len(values) // 10) | 1  # odd, so it is centered
    padded = np.pad(values, (width // 2, width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, mode="valid")


def suggest(lrs: np.ndarray, losses: Iterable[float]) -> dict[str, float]:
    """{"suggested": lowest / 10, "steepest": the steepest descent before the minimum, "lowest": the
    rate of the lowest loss}, all read from the centered average."""
    curve = centered(losses)
    lowest = int(np.argmin(curve))
    steepest = lowest
    if lowest >= 2:
        steepest = int(np.argmin(np.gradient(curve[:lowest + 1], np.log(lrs[:lowest + 1]))))
    return {"suggested": float(lrs[lowest]) / 10, "steepest": float(lrs[steepest]), "lowest": float(lrs[lowest])}


def range_test(step: Callable[[float], float | None], lrs: np.ndarray) -> tuple[list[float], list[float]]:
    """Run `step(rate) -> loss` (None: a non-finite step) for each rate until the loss diverges."""
    used, losses, best = [], [], math.inf
    for rate in lrs:
        loss = step(float(rate))
        if loss is None or not math.isfinite(loss):
            break
        used.append(float(rate))
        losses.append(loss)
        current = smooth(losses)[-1]
        best = min(best, current)
        if len(losses) > 5 and current > DIVERGED * best:
            break
    return used, losses


def write(run_dir: Path, used: list[float], losses: list[float], points: dict[str, float], meta: dict) -> dict:
    """lr_find.json and lr_find.png (matplotlib: the raw and averaged loss against the rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    smoothed = centered(losses)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    ax.plot(used, losses, color="0.75", lw=1, label="loss per step")
    ax.plot(used, smoothed, color="C0", lw=2, label="centered average")
    ax.axvline(points["suggested"], color="C2", ls="--", label=f"suggested {points['suggested']:.2e} (lowest / 10)")
    ax.axvline(points["steepest"], color="C1", ls="-.", label=f"steepest descent {points['steepest']:.2e}")
    ax.axvline(points["lowest"], color="C3", ls=":", label=f"lowest loss {points['lowest']:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    top = float(np.percentile(losses, 95)) if losses else 1.0
    ax.set_ylim(min(losses) * 0.9 if losses else 0, max(top, smoothed[0] * 1.2) if losses else 1)
    ax.set_title(f"learning-rate range test: {len(used)} steps, {meta['optimizer']}")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(run_dir / names.LR_FIND_PNG)
    plt.close(fig)
    result = {"suggested_learning_rate": points["suggested"], "steepest_descent_learning_rate": points["steepest"],
              "lowest_loss_learning_rate": points["lowest"], "steps": len(used),
              "override": f"optimizer.learning_rate={points['suggested']:.2g}", **meta,
              "learning_rates": used, "losses": losses, "averaged_losses": smoothed.tolist()}
    (run_dir / names.LR_FIND_JSON).write_text(json.dumps(result, indent=1) + "\n")
    return result


def run(cfg: Config, task: Task, data: Datasets, policy: str, record: RunRecord,
        class_weights: list[float] | None) -> None:
    """trainer.lr_find: the range test on the run's own batches, from its initial weights, which are
    put back afterwards; nothing is trained or checkpointed."""
    t, o = cfg.trainer, cfg.optimizer
    model, strategy = task.model, task.strategy
    with strategy.scope():
        optimizer, _ = ready_optimizer(new_optimizer(o, t.lr_find_start), model.trainable_variables, policy)
    # Every trainable weight follows the test's rate (a fine-tuned backbone's own optimizer too).
    steps = task.steps(optimizer=optimizer, class_weights=class_weights, time_input=False, guard_updates=False,
                       jit_compile=False, fine_tune=None)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    initial = [tf.identity(v.value) for v in model.variables]
    before = weights_digest(model)
    feed = {"epoch": 1, "batches": iter(strategy.experimental_distribute_dataset(data.train_epoch(1)))}

    def step(rate: float) -> float | None:
        inner.learning_rate.assign(rate)
        while True:
            try:
                out = steps.train(feed["batches"])
                break
            except tf.errors.OutOfRangeError:  # the next epoch's batches, in their own order
                feed["epoch"] += 1
                feed["batches"] = iter(strategy.experimental_distribute_dataset(data.train_epoch(feed["epoch"])))
        return float(out["loss_sum"]) / int(out["count"]) if bool(out["finite"]) else None

    try:
        used, losses = range_test(step, rates(t.lr_find_start, t.lr_find_end, t.lr_find_steps))
    finally:
        for variable, value in zip(model.variables, initial):
            variable.assign(value)
    restored = weights_digest(model) == before
    if len(used) < 5:
        raise NumericsError(f"the range test's loss diverged after {len(used)} steps, from the first rates "
                            f"(trainer.lr_find_start={t.lr_find_start:g}): no curve to read",
                            hint="lower trainer.lr_find_start (e.g. 1e-9), or check the input normalization",
                            config_key="trainer.lr_find_start")
    _report(record, used, losses, restored, meta={
        "optimizer": o.name, "batch_size": t.batch_size, "model": cfg.model.name, "precision": policy,
        "start": t.lr_find_start, "end": t.lr_find_end, "epochs_read": feed["epoch"]})


def _report(record: RunRecord, used: list[float], losses: list[float], restored: bool, meta: dict) -> None:
    points = suggest(np.array(used), losses)
    result = write(record.run_dir, used, losses, points, meta=meta)
    record.report.lr_find = {k: result[k] for k in ("suggested_learning_rate", "steepest_descent_learning_rate",
                                                    "lowest_loss_learning_rate", "steps", "override")}
    record.report.lr_find.update(png=str(record.run_dir / names.LR_FIND_PNG),
                                 json=str(record.run_dir / names.LR_FIND_JSON), initial_weights_restored=restored)
    log.info("lr_find: %d steps from %.1e to %.1e; the loss was lowest at %.2e (too high to train at: it diverges "
             "next) and fell fastest at %.2e (aggressive). Suggested, a tenth of the lowest:\n  %s   (curve: %s)",
             len(used), used[0], used[-1], points["lowest"], points["steepest"], result["override"],
             record.run_dir / names.LR_FIND_PNG)
