"""The outer loop: plain Python a reader can follow top to bottom.

Epochs of train steps (the tf.functions in safetrain.steps). After each step: time it, check the
NaN guard, then call the periodic actions (safetrain.actions: logging, checkpoints, the gradient
probe), which decide themselves whether they are due; a pending SIGTERM/SIGINT saves a checkpoint
at that exact step and stops. After each epoch: the epoch actions (evaluation, the epoch-end
checkpoint). Invariant: the step counter advances by exactly the steps run.

The loop knows nothing of TensorFlow graphs or the run directory: batches come from
`train_batches(epoch, skip)`, evaluation data through `distribute`, and what is recorded goes to
`record` (safetrain.record) — so it is unit-tested with a fake step function and a fake clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from safetrain.actions import Action, EpochEnd, GradientProbe, StepEnd, Totals
from safetrain.config.schema import OnNan, TrainerConfig
from safetrain.errors import ErrorKind, NanStop
from safetrain.progress import Progress
from safetrain.run_state import Context, Position
from safetrain.signals import SignalGuard
from safetrain.throughput import StepTimer

log = logging.getLogger("safetrain")

_NAN_HINT = ("lower optimizer.learning_rate (e.g. by 10x), set optimizer.clipnorm=1.0, check the "
             "input normalization (dataset.image.normalization), or set trainer.on_nan=skip_step")


@dataclass
class LoopResult:
    steps: int = 0
    epochs: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None
    skipped_steps: int = 0
    time_to_first_step_s: float | None = None


class TrainLoop:
    def __init__(self, *, steps, train_batches: Callable[[int, int], Iterable],
                 distribute: Callable[[Any], Iterable], cfg: TrainerConfig, record, checkpoints,
                 steps_per_epoch: int | None, actions: Sequence[Action] = (),
                 probe: GradientProbe | None = None, timer: StepTimer | None = None,
                 progress: Progress | None = None,
                 started: float | None = None, clock: Callable[[], float] = time.perf_counter,
                 guard: SignalGuard | None = None, context: Context | None = None,
                 steps_for_epoch: Callable[[int], Any] | None = None) -> None:
        """`steps`: `train(iterator)`, `train_probe(iterator)`, `eval(images, labels)` and
        `missing_gradients_error()` (safetrain.steps.Steps). `train_batches(epoch, skip)`: the
        epoch's training batches after the first `skip`, ready for `steps.train`.
        `actions` run in order after each step and epoch; put checkpointing last, so it saves what
        the others decided. `probe`, when given, is one of the actions: while it is active the
        loop runs the probing step. `timer` measures the steps (its warmup should cover every traced
        step); `started`: when the run began (time to first step). `steps_for_epoch(epoch)`, when
        given, returns the step functions for that epoch (a backbone frozen in the first epochs and
        fine-tuned from a later one trains different variables); it is asked before each epoch,
        also the one a resume starts in."""
        self.steps = steps
        self.train_batches = train_batches
        self.distribute = distribute
        self.cfg = cfg
        self.record = record
        self.checkpoints = checkpoints
        self.steps_per_epoch = steps_per_epoch
        self.actions = list(actions)
        self.probe = probe
        self.progress = progress or Progress()
        self.clock = clock
        self.guard = guard or SignalGuard()
        self.started = clock() if started is None else started
        self.timer = timer or StepTimer()
        self.result = LoopResult()
        self.context = context or Context()  # phase and step, for diagnosing an error raised here
        self.steps_for_epoch = steps_for_epoch

    def run(self) -> LoopResult:
        cfg, result = self.cfg, self.result
        start = self.checkpoints.restore()
        for warning in self.checkpoints.warnings:
            self.record.event(phase="train", kind=ErrorKind.checkpoint_fallback, message=warning, step=start.step,
                              hint="the run resumed from an older checkpoint; steps after it are trained again")
        if start.step:
            log.info("resuming from checkpoint at step %d (epoch %d)", start.step, start.epoch)
        else:  # the starting point: a NaN in the first steps can still be replayed from here
            self.checkpoints.save(Position())
        result.steps, result.epochs = start.step, start.epoch - 1
        skip = start.in_epoch
        for epoch in range(start.epoch, cfg.epochs + 1):
            if self._budget_spent() or self.stopped_early:
                break
            with self.guard.deferred():
                totals, in_epoch, completed = self._train_epoch(epoch, skip)
            skip = 0
            completed = completed or (self.steps_per_epoch is not None and in_epoch >= self.steps_per_epoch)
            result.epochs = epoch
            result.train_loss, result.train_accuracy = totals.mean_loss, totals.accuracy
            # Where a resume starts: the next epoch, or the rest of this one (max_steps hit).
            resume_at = Position(result.steps, epoch + 1, 0) if completed else Position(result.steps, epoch, in_epoch)
            end = EpochEnd(epoch=epoch, step=result.steps, totals=totals, next_position=resume_at)
            line = [f"train loss {totals.mean_loss:.4f} acc {totals.accuracy:.4f}"]
            line += [text for action in self.actions if (text := action.after_epoch(end))]
            self.progress.end_epoch(" | ".join(line))
            self.record.flush()
        return result

    @property
    def stopped_early(self) -> bool:
        """An action (early stopping) ended training; after a resume too, from its restored state."""
        return any(action.wants_stop for action in self.actions)

    def _budget_spent(self) -> bool:
        return self.cfg.max_steps is not None and self.result.steps >= self.cfg.max_steps

    def _train_epoch(self, epoch: int, skip: int) -> tuple[Totals, int, bool]:
        """Returns the epoch's totals, the batches done in it, and whether it ran to the end."""
        result = self.result
        if self.steps_for_epoch is not None:
            self.steps = self.steps_for_epoch(epoch)
        iterator = iter(self.train_batches(epoch, skip))
        totals = Totals()
        self.progress.start_epoch(epoch, self.cfg.epochs, self.steps_per_epoch)
        in_epoch = skip
        rate_from: tuple[float, int] | None = None  # (time, examples) after the epoch's first step
        while not self._budget_spent():
            if self.steps_per_epoch is not None and in_epoch >= self.steps_per_epoch:
                return totals, in_epoch, True
            step_fn = self.steps.train_probe if self.probe is not None and self.probe.active else self.steps.train
            self.context.phase, self.context.step = "train", result.steps + 1
            t0 = self.clock()
            try:
                out = {k: np.asarray(v) for k, v in step_fn(iterator).items()}
            except tf.errors.OutOfRangeError:  # the data ran out before the counted steps
                return totals, in_epoch, True
            t1 = self.clock()
            result.steps += 1
            in_epoch += 1
            missing = self.steps.missing_gradients_error()
            if missing is not None:
                raise missing
            if result.time_to_first_step_s is None:
                result.time_to_first_step_s = round(t1 - self.started, 3)
            finite = bool(out["finite"])
            if finite:
                totals.add(out)
                wait = float(out["input_wait_s"])
                self.timer.add(wait=None if wait < 0 else min(wait, t1 - t0), total=t1 - t0,
                               examples=int(out["count"]), first_of_epoch=in_epoch == 1)
            else:
                self._non_finite(epoch, float(out["loss_sum"]))  # raises unless on_nan=skip_step
            # This epoch so far, input waits included, first step (tracing, new iterator) excluded.
            rate = (totals.count - rate_from[1]) / (t1 - rate_from[0]) if rate_from and t1 > rate_from[0] else None
            rate_from = rate_from or (t1, totals.count)
            at = Position(result.steps, epoch, in_epoch)
            end = StepEnd(at=at, outputs=out, totals=totals, rate=rate, finite=finite)
            for action in self.actions:
                action.after_step(end)
            if self.guard.pending:  # SIGTERM/SIGINT: save exactly here, then stop
                self.checkpoints.save(at)
                self.guard.raise_if_pending(saved_step=at.step)
        return totals, in_epoch, False

    def _non_finite(self, epoch: int, loss_sum: float) -> None:
        step = self.result.steps
        message = (f"the loss or a gradient became NaN/Inf at step {step} (epoch {epoch}, batch loss "
                   f"sum {loss_sum})")
        if self.cfg.on_nan is OnNan.stop:
            raise NanStop(message + "; training stopped and no checkpoint was saved after it", step=step,
                          hint=_NAN_HINT)
        self.result.skipped_steps += 1
        self.record.event(phase="train", kind=ErrorKind.non_finite,
                          message=message + "; its update was not applied (trainer.on_nan=skip_step)",
                          hint=_NAN_HINT, step=step, config_key="trainer.on_nan")

    def evaluate(self, dataset) -> tuple[float, float]:
        self.context.phase, self.context.step = "eval", self.result.steps
        totals = Totals()
        for images, labels in self.distribute(dataset):
            totals.add({k: np.asarray(v) for k, v in self.steps.eval(images, labels).items()})
        return totals.mean_loss, totals.accuracy
