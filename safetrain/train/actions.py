"""Periodic work around the train step: small objects the loop calls after each step and epoch.

CommonLoopUtils' `periodic_actions` and Orbit's `Action`s are the model: logging, checkpointing,
evaluation and the dead-gradient probe each decide for themselves when they are due (every N
steps, every S seconds on an injectable clock, every epoch) and do one thing. The loop
(safetrain.train.loop) only trains and calls them in order, so new periodic work (early stopping,
LR-on-plateau, EMA evaluation) plugs in without touching it. Plain Python: the cadence logic is
unit-tested with a fake clock and never sleeps.

An action implements either hook or both; an `after_epoch` may return a fragment for the
epoch's console line ("eval loss 0.1 acc 0.97"). An action whose decisions depend on what it saw
in earlier epochs keeps that in tf.Variables and returns them from `checkpointed()`, so a resumed
run decides exactly as an uninterrupted one. Which actions a run has, and in which order, is
declared in one list: safetrain/experiment/assemble.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from safetrain.core.run_state import Position
from safetrain.train.metrics import METRICS, Totals

PROBE_STEPS = 3  # steps whose per-variable gradients are checked for being exactly zero


@dataclass(frozen=True)
class StepEnd:
    """What an action sees after a train step."""

    at: Position             # after the step: steps done, this epoch, batches of it done
    outputs: dict[str, Any]  # the step's host values (loss_sum, correct, count, finite, ...)
    totals: Totals           # this epoch so far (finite steps only)
    rate: float | None       # this epoch's examples/s so far, first step excluded; None at first
    finite: bool             # False: the step was non-finite and its update skipped (on_nan=skip_step)
    steady: bool = True      # False: the call traced its function or was its epoch's first (a new iterator)


@dataclass(frozen=True)
class EpochEnd:
    """What an action sees when an epoch's steps are done (or the step budget ran out)."""

    epoch: int
    step: int                # steps done
    totals: Totals
    next_position: Position  # where a resume continues: the next epoch, or the rest of this one
    # Whether training ends after this epoch (its last epoch, the step limit reached, an early stop),
    # asked when the actions before have decided (a budget's plan, early stopping).
    ending: Callable[[], bool] = lambda: False


class Action(Protocol):
    wants_stop: bool

    def after_step(self, end: StepEnd) -> None: ...
    def after_epoch(self, end: EpochEnd) -> str | None: ...
    def checkpointed(self) -> dict: ...
    def step_limit(self) -> int | None: ...


class BaseAction:
    """No-op hooks to subclass, so each action writes only the one it needs. `wants_stop`: the
    loop ends training after the epoch in which an action says so (early stopping)."""

    wants_stop = False

    def after_step(self, end: StepEnd) -> None:
        return None

    def after_epoch(self, end: EpochEnd) -> str | None:
        return None

    def checkpointed(self) -> dict:
        """{name: trackable} the checkpoint keeps for this action (names are part of the checkpoint
        format: keep them stable)."""
        return {}

    def step_limit(self) -> int | None:
        """The step at which training must end (trainer.time_budget's plan); None: no limit."""
        return None


class EverySteps:
    """Due at every multiple of `n` steps."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, step: int) -> bool:
        return step % self.n == 0


class EverySeconds:
    """Due once `seconds` have passed on `clock` since the last `reset` (never when None)."""

    def __init__(self, seconds: float | None, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self.clock = clock
        self.last = clock()

    def __call__(self) -> bool:
        return self.seconds is not None and self.clock() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = self.clock()


class LogScalars(BaseAction):
    """Every `every` steps: train loss/accuracy, the learning rate and throughput to TensorBoard,
    and a progress line (a terminal's bar is redrawn at every step, throttled by Progress)."""

    def __init__(self, every: int, record, progress, timer, learning_rate: Callable[[], float]) -> None:
        self.due = EverySteps(every)
        self.record = record
        self.progress = progress
        self.timer = timer
        self.learning_rate = learning_rate

    def after_step(self, end: StepEnd) -> None:
        if not end.finite:
            return
        due = self.due(end.at.step)
        if due:
            values = {"train/loss": end.totals.mean_loss, f"train/{end.totals.headline[0]}": end.totals.accuracy,
                      "optimizer/learning_rate": self.learning_rate()}
            values.update(self.timer.interval())
            self.record.scalars(end.at.step, values)
        self.progress.update(end.at.in_epoch, end.totals.mean_loss, end.totals.accuracy, end.rate, force=due,
                             label=end.totals.headline[1])


class SaveCheckpoints(BaseAction):
    """Every `every_steps` steps, every `every_seconds` seconds since the last save, and where
    epochs end (the position a resume continues from) — but not more often than once in
    `epoch_seconds` there, except where training ends. Tiny epochs made a save per epoch the
    largest cost after training: 176 epochs of 545 drawings in a 5-minute budget spent 20 s (7%)
    saving. A resume from an older checkpoint replays the same batches and decisions (the actions'
    state is in the checkpoint), so skipping a save loses seconds, never correctness."""

    def __init__(self, checkpoints, every_steps: int, every_seconds: float | None,
                 clock: Callable[[], float], epoch_seconds: float = 0.0) -> None:
        self.checkpoints = checkpoints
        self.due_steps = EverySteps(every_steps)
        self.due_seconds = EverySeconds(every_seconds, clock)
        self.due_epoch = EverySeconds(epoch_seconds, clock)

    def save(self, at: Position) -> None:
        self.checkpoints.save(at)
        self.due_seconds.reset()
        self.due_epoch.reset()

    def after_step(self, end: StepEnd) -> None:
        if self.due_steps(end.at.step) or self.due_seconds():
            self.save(end.at)

    def after_epoch(self, end: EpochEnd) -> str | None:
        if self.due_epoch() or end.ending():
            self.save(end.next_position)
        return None


class Evaluate(BaseAction):
    """At each epoch end where `due(end)` (every epoch unless trainer.time_budget spaces them): the
    eval split's metrics (loss, trainer.metrics: safetrain.train.metrics), to TensorBoard and the
    epoch line. `results` holds the latest ({name: value}), `fresh` whether this epoch end
    evaluated (the actions after this one judge only fresh results); `seconds` and `count` what
    evaluating has cost so far."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], dataset, record,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.evaluate = evaluate
        self.dataset = dataset
        self.record = record
        self.clock = clock
        self.due: Callable[[EpochEnd], bool] = lambda end: True
        self.results: dict[str, float] = {}
        self.fresh = False
        self.seconds, self.count = 0.0, 0

    @property
    def loss(self) -> float | None:
        return self.results.get("loss")

    @property
    def accuracy(self) -> float | None:
        return self.results.get("accuracy")

    def after_epoch(self, end: EpochEnd) -> str | None:
        self.fresh = self.due(end)
        if not self.fresh:
            return None
        began = self.clock()
        self.results = dict(self.evaluate(self.dataset))
        self.seconds += self.clock() - began
        self.count += 1
        self.record.scalars(end.step, {f"eval/{name}": value for name, value in self.results.items()})
        return "eval " + " ".join(f"{_short(name)} {value:.4f}" for name, value in self.results.items())


def _short(name: str) -> str:
    """A metric's console label ("acc" for accuracy)."""
    return METRICS.get(name).label or name if name in METRICS else name


class GradientProbe(BaseAction):
    """Dead-gradient check over the first `steps` steps: a trainable variable whose gradient is
    exactly 0.0 in each of them never changes. While `active`, the loop runs the probing step
    (which also returns each variable's largest |gradient|); then `on_dead(paths, step)` is called
    once with the dead variables, if any, and the step the probe ended at."""

    def __init__(self, variable_paths: list[str], on_dead: Callable[[list[str], int], None],
                 steps: int = PROBE_STEPS) -> None:
        self.variable_paths = variable_paths
        self.on_dead = on_dead
        self.steps = steps
        self.left = steps
        self._largest = None

    @property
    def active(self) -> bool:
        return self.left > 0

    def restart(self, variable_paths: list[str]) -> None:
        """Probe again over new trainable variables (a backbone unfrozen for fine-tuning)."""
        self.variable_paths, self.left, self._largest = variable_paths, self.steps, None

    def after_step(self, end: StepEnd) -> None:
        if not self.active:
            return
        grads = end.outputs["grad_abs_max"]
        self._largest = grads if self._largest is None else np.maximum(self._largest, grads)
        self.left -= 1
        if not self.left:
            dead = [path for path, g in zip(self.variable_paths, self._largest) if g == 0.0]
            if dead:
                self.on_dead(dead, end.at.step)


def _gain(evaluation: "Evaluate", metric: str, best: float, higher_is_better: bool) -> tuple[float, float]:
    """The eval result for `metric` (a name in safetrain.train.metrics) and how much better than
    `best` it is."""
    value = evaluation.results[metric]
    return value, (value - best) if higher_is_better else (best - value)


class SelectBest(BaseAction):
    """At each epoch end, after `Evaluate`: is this the best eval epoch so far? `state` holds the
    best value, its epoch and step, and the epochs since (the training side keeps them in
    tf.Variables, so the checkpoint has them and a resume decides exactly as the first run would);
    `state.capture()` keeps the current weights when they are the best (trainer.keep_best). With
    `patience`, the loop is asked to stop after that many evaluated epochs without an improvement
    of more than `min_delta` (trainer.early_stopping). Epoch ends that did not evaluate (a time
    budget spacing evaluations out: `evaluation.fresh` is False) are not judged.

    A tie on the metric goes to the lower eval loss: a small eval split's accuracy moves in steps
    of 1/n and ties often, and the earliest epoch at a value is the least trained one. On 545
    drawings (a 55-drawing eval split, 396 epochs in 5 minutes) the first rule kept epoch 68 (eval
    loss 0.60) over epochs 377-382 at the same 94.5% (eval loss 0.50), and tested 85.2%. Such an
    epoch becomes the best (its weights kept) without counting as an improvement for patience."""

    def __init__(self, evaluation: Evaluate, state, metric: str, higher_is_better: bool, min_delta: float = 0.0,
                 patience: int | None = None) -> None:
        self.evaluation = evaluation
        self.state = state
        self.metric = metric          # a metric's name (safetrain.train.metrics), evaluated by `evaluation`
        self.higher_is_better = higher_is_better
        self.min_delta = min_delta
        self.patience = patience

    @property
    def wants_stop(self) -> bool:
        return self.patience is not None and self.state.bad_epochs >= self.patience

    def checkpointed(self) -> dict:
        return self.state.trackables()

    def after_epoch(self, end: EpochEnd) -> str | None:
        if not self.evaluation.fresh:
            return None
        value, gain = _gain(self.evaluation, self.metric, self.state.value, self.higher_is_better)
        loss = self.evaluation.results.get("loss")
        if self.state.epoch == 0 or gain > self.min_delta:
            self.state.value, self.state.epoch, self.state.step, self.state.bad_epochs = value, end.epoch, end.step, 0
            self.state.loss = 0.0 if loss is None else loss
            self.state.capture()
            return f"best eval {self.metric} so far"
        self.state.bad_epochs += 1
        tied = gain == 0 and loss is not None and loss < self.state.loss  # (metric=loss: never, loss == best)
        if tied:
            self.state.epoch, self.state.step, self.state.loss = end.epoch, end.step, loss
            self.state.capture()
        text = f"best eval {self.metric} {self.state.value:.4f} at epoch {self.state.epoch}"
        if tied:
            text += " (tied, lower eval loss)"
        if self.patience is not None:
            text += f", {self.state.bad_epochs}/{self.patience} epochs without improvement"
            if self.wants_stop:
                text += ": stopping early (trainer.early_stopping)"
        return text


class SwitchWeights(BaseAction):
    """At each epoch end, switch the model's weights: `switch(True)` before evaluation and selection
    (to the weights' moving average, trainer.ema), `switch(False)` after them, so training and the
    checkpoint go on with the trained weights."""

    def __init__(self, switch: Callable[[bool], None], to_average: bool) -> None:
        self.switch = switch
        self.to_average = to_average

    def after_epoch(self, end: EpochEnd) -> str | None:
        self.switch(self.to_average)
        return None


class ReducePlateau(BaseAction):
    """schedule=plateau, after `Evaluate`: when the eval metric has not improved for `patience`
    epochs, multiply the learning rate's scale by `factor`, never below `floor` (min_learning_rate /
    learning_rate) — Keras' ReduceLROnPlateau, on state the checkpoint holds (`state`: scale, best,
    seen, bad_epochs; safetrain.train.schedules.PlateauState)."""

    def __init__(self, evaluation: Evaluate, state, metric: str, higher_is_better: bool, patience: int,
                 factor: float, floor: float, base_rate: float) -> None:
        self.evaluation, self.state, self.metric = evaluation, state, metric
        self.higher_is_better, self.patience, self.factor = higher_is_better, patience, factor
        self.floor, self.base_rate = floor, base_rate

    def checkpointed(self) -> dict:
        return self.state.trackables()

    def after_epoch(self, end: EpochEnd) -> str | None:
        if not self.evaluation.fresh:
            return None
        value, gain = _gain(self.evaluation, self.metric, self.state.best, self.higher_is_better)
        if not self.state.seen or gain > 0:
            self.state.best, self.state.bad_epochs, self.state.seen = value, 0, True
            return None
        self.state.bad_epochs += 1
        if self.state.bad_epochs < self.patience or self.state.scale <= self.floor * (1 + 1e-6):  # float32 scale
            return None
        self.state.scale, self.state.bad_epochs = max(self.state.scale * self.factor, self.floor), 0
        return (f"learning rate -> {self.base_rate * self.state.scale:.3g} (no better eval {self.metric} for "
                f"{self.patience} epochs)")
