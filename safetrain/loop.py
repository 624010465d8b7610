"""The outer loop: plain Python a reader can follow top to bottom.

Epochs of train steps (the tf.functions in safetrain.steps), with at each step: time the wait
for input and the whole step, check the NaN guard, log at the configured cadence, checkpoint at
the configured cadence; at each epoch end: evaluate. Invariant: the step counter advances by
exactly the steps run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from safetrain.config.schema import OnNan, TrainerConfig
from safetrain.diagnosis import Context
from safetrain.errors import NumericsError
from safetrain.progress import Progress
from safetrain.report import ErrorLog
from safetrain.signals import SignalGuard
from safetrain.throughput import StepTimer

log = logging.getLogger("safetrain")

PROBE_STEPS = 3  # steps whose per-variable gradients are checked for being exactly zero


@dataclass
class LoopResult:
    steps: int = 0
    epochs: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    skipped_steps: int = 0
    time_to_first_step_s: float | None = None


class _Totals:
    def __init__(self) -> None:
        self.loss = 0.0
        self.correct = 0
        self.count = 0

    def add(self, out: dict) -> None:
        self.loss += float(out["loss_sum"])
        self.correct += int(out["correct"])
        self.count += int(out["count"])

    @property
    def mean_loss(self) -> float:
        return self.loss / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


class TrainLoop:
    def __init__(self, *, steps, strategy, train_epoch: Callable[[int], tf.data.Dataset], eval_ds,
                 cfg: TrainerConfig, summaries, checkpoints, errors: ErrorLog, steps_per_epoch: int | None,
                 learning_rate: Callable[[], float], progress: Progress | None = None,
                 started: float | None = None, clock: Callable[[], float] = time.perf_counter,
                 guard: SignalGuard | None = None,
                 on_dead_gradients: Callable[[list[str]], None] | None = None,
                 context: Context | None = None) -> None:
        self.steps = steps
        self.strategy = strategy
        self.train_epoch = train_epoch
        self.eval_ds = eval_ds
        self.cfg = cfg
        self.summaries = summaries
        self.checkpoints = checkpoints
        self.errors = errors
        self.steps_per_epoch = steps_per_epoch
        self.learning_rate = learning_rate
        self.progress = progress or Progress()
        self.clock = clock
        self.guard = guard or SignalGuard()
        self.on_dead_gradients = on_dead_gradients
        self._probe_left = PROBE_STEPS if on_dead_gradients else 0
        self._grad_max = None
        self.started = clock() if started is None else started
        self._saved_at = self.clock()
        self.timer = StepTimer()
        self.result = LoopResult()
        self.context = context or Context()  # phase and step, for diagnosing an error raised here

    def run(self) -> LoopResult:
        cfg, result = self.cfg, self.result
        step, start_epoch, done_in_epoch = self.checkpoints.restore()
        for warning in self.checkpoints.warnings:
            self.errors.write(phase="train", kind="checkpoint_fallback", message=warning, step=step,
                              hint="the run resumed from an older checkpoint; steps after it are trained again")
        if step:
            log.info("resuming from checkpoint at step %d (epoch %d)", step, start_epoch)
        else:  # the starting point: a NaN in the first steps can still be replayed from here
            self.checkpoints.save(0, 1, 0)
        result.steps, result.epochs = step, start_epoch - 1
        for epoch in range(start_epoch, cfg.epochs + 1):
            if self._budget_spent():
                break
            with self.guard.deferred():
                totals, in_epoch, completed = self._train_epoch(epoch, skip=done_in_epoch)
            done_in_epoch = 0
            completed = completed or (self.steps_per_epoch is not None and in_epoch >= self.steps_per_epoch)
            result.epochs = epoch
            result.train_loss, result.train_accuracy = totals.mean_loss, totals.accuracy
            line = f"train loss {totals.mean_loss:.4f} acc {totals.accuracy:.4f}"
            if self.eval_ds is not None:
                result.eval_loss, result.eval_accuracy = self.evaluate(self.eval_ds)
                self.summaries.scalars(result.steps, {"eval/loss": result.eval_loss,
                                                      "eval/accuracy": result.eval_accuracy})
                line += f" | eval loss {result.eval_loss:.4f} acc {result.eval_accuracy:.4f}"
            self.progress.end_epoch(line)
            # Where a resume starts: the next epoch, or the rest of this one (max_steps hit).
            self.checkpoints.save(result.steps, *((epoch + 1, 0) if completed else (epoch, in_epoch)))
            self.summaries.flush()
        return result

    def _budget_spent(self) -> bool:
        return self.cfg.max_steps is not None and self.result.steps >= self.cfg.max_steps

    def _train_epoch(self, epoch: int, skip: int = 0) -> tuple[_Totals, int, bool]:
        """Returns the epoch's totals, the batches done in it, and whether it ran to the end."""
        cfg, result = self.cfg, self.result
        dataset = self.train_epoch(epoch)
        dataset = dataset.skip(skip) if skip else dataset
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))
        totals = _Totals()
        self.progress.start_epoch(epoch, cfg.epochs, self.steps_per_epoch)
        in_epoch = skip
        rate_from: tuple[float, int] | None = None  # (time, examples) after the epoch's first step
        while not self._budget_spent():
            if self.steps_per_epoch is not None and in_epoch >= self.steps_per_epoch:
                return totals, in_epoch, True
            t0 = self.clock()
            step_fn = self.steps.train_probe if self._probe_left else self.steps.train
            self.context.phase, self.context.step = "train", result.steps + 1
            try:
                out = {k: v.numpy() for k, v in step_fn(iterator).items()}
            except tf.errors.OutOfRangeError:  # the data ran out before the counted steps
                return totals, in_epoch, True
            t2 = self.clock()
            result.steps += 1
            in_epoch += 1
            missing = self.steps.missing_gradients_error()
            if missing is not None:
                raise missing
            if self._probe_left:
                self._probe(out["grad_abs_max"])
            if result.time_to_first_step_s is None:
                result.time_to_first_step_s = round(t2 - self.started, 3)
            if out["finite"]:
                totals.add(out)
                wait = float(out["input_wait_s"])
                self.timer.add(wait=None if wait < 0 else min(wait, t2 - t0), total=t2 - t0,
                               examples=int(out["count"]),
                               first_of_epoch=in_epoch == 1)
                log_now = result.steps % cfg.log_every_steps == 0
                if log_now:
                    self._log_scalars(totals)
                # This epoch so far, input waits included, first step (tracing, new iterator) excluded.
                rate = (totals.count - rate_from[1]) / (t2 - rate_from[0]) if rate_from else None
                rate_from = rate_from or (t2, totals.count)
                self.progress.update(in_epoch, totals.mean_loss, totals.accuracy, rate, force=log_now)
            else:
                self._non_finite(epoch, float(out["loss_sum"]))  # raises unless on_nan=skip_step
            if (result.steps % cfg.checkpoint_every_steps == 0 or self.guard.pending
                    or (cfg.checkpoint_every_seconds and t2 - self._saved_at >= cfg.checkpoint_every_seconds)):
                self.checkpoints.save(result.steps, epoch, in_epoch)
                self._saved_at = self.clock()
            self.guard.raise_if_pending()
        return totals, in_epoch, False

    def _probe(self, grad_abs_max) -> None:
        """Dead-gradient check: a variable whose gradient is exactly 0.0 in each probed step."""
        self._grad_max = grad_abs_max if self._grad_max is None else np.maximum(self._grad_max, grad_abs_max)
        self._probe_left -= 1
        if not self._probe_left:
            dead = [path for path, g in zip(self.steps.variable_paths, self._grad_max) if g == 0.0]
            if dead:
                self.on_dead_gradients(dead)

    def _log_scalars(self, totals: _Totals) -> None:
        values = {"train/loss": totals.mean_loss, "train/accuracy": totals.accuracy,
                  "optimizer/learning_rate": self.learning_rate()}
        values.update(self.timer.interval())
        self.summaries.scalars(self.result.steps, values)

    def _non_finite(self, epoch: int, loss_sum: float) -> None:
        step = self.result.steps
        message = (f"the loss or a gradient became NaN/Inf at step {step} (epoch {epoch}, batch loss "
                   f"sum {loss_sum})")
        hint = ("lower optimizer.learning_rate (e.g. by 10x), set optimizer.clipnorm=1.0, check the "
                "input normalization (dataset.image.normalization), or set trainer.on_nan=skip_step")
        if self.cfg.on_nan is OnNan.stop:
            raise NumericsError(message + "; training stopped and no checkpoint was saved after it",
                                hint=hint, config_key="trainer.on_nan")
        self.result.skipped_steps += 1
        self.errors.write(phase="train", kind="non_finite",
                          message=message + "; its update was not applied (trainer.on_nan=skip_step)",
                          hint=hint, step=step, config_key="trainer.on_nan")

    def evaluate(self, dataset) -> tuple[float, float]:
        self.context.phase, self.context.step = "eval", self.result.steps
        totals = _Totals()
        for images, labels in self.strategy.experimental_distribute_dataset(dataset):
            totals.add({k: v.numpy() for k, v in self.steps.eval(images, labels).items()})
        return totals.mean_loss, totals.accuracy
