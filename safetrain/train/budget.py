"""trainer.time_budget: the most training that fits a wall-clock budget, planned from steady-state costs.

Ultralytics' `time=` re-plans its epochs after the first; Lightning's `max_time` stops without
re-planning. Here the budget is turned into a number of **steps**, and everything follows the
steps: the learning-rate schedule decays over them (safetrain.train.schedules.Horizon, variables
the schedule reads at every step), evaluations come at epoch ends (spaced out when one costs too
much of an epoch, and once more where the plan ends), and the loop stops at the planned step.

What a plan is made of — steady-state costs only, never a trace or a first fill:

- **a training step**: the wall time between step ends from the first call that neither traced
  its function nor began an epoch, everything but evaluations included (each epoch's new
  iterator and its first fill, checkpoints, logging), per step. Short epochs are measured across
  an epoch end, so their set-up is in the figure;
- **an evaluation**: the eval step is traced and timed on a few batches before anything is
  measured (`time_evaluation`), so every real evaluation is a steady one; once there are real
  ones, their mean;
- **what follows training**: the checkpoint saved where training ends (the last save's time), the
  test split, the result pictures (another pass over test, and eval for image folders) and the
  export, from the data's size at the evaluated rate plus the traces they pay (the eval trace's
  measured time), and the interpreter's exit (the budget is the whole command's wall time,
  counted from `python -m safetrain`'s first line).

1. The first plan comes once a few seconds (2% of the budget, at least MEASURE_SECONDS) of steady
   steps are measured and the window's two halves agree (tf.data's autotuning and the first
   executions warm up for seconds; the second half is the figure): the seconds left,
   minus what follows training, hold that many steps and their evaluations. trainer.epochs and trainer.max_steps cap it. The warmup is scaled to it.
2. Every tenth of the budget (and when the plan is reached with time left) it is made again from
   the costs since the last plan: a re-plan bends the rest of the learning-rate curve from where
   it is, so the rate never rises after the warmup. Under trainer.deterministic=true the first plan
   is kept (a plan measured by a resumed process would differ from the uninterrupted run's, and
   deterministic runs promise bitwise the same weights); a resumed process keeps the checkpoint's
   plan too.
3. When an evaluation costs more than a tenth of an epoch's training, the epochs between
   evaluations grow so that evaluating stays under that share (`eval_every`; the last planned
   step is always evaluated, and early stopping counts evaluations).
4. Should the run still reach its budget (the machine slowed down), it stops there at the next
   step: a checkpoint is saved by the epoch-end actions, the best eval weights are tested and
   exported (`stopped_by: time`).

The plan lives in tf.Variables the checkpoint keeps (`checkpointed`), so SIGTERM + rerun continues
the same plan. Plain Python around the variables; parsing and the arithmetic import no TensorFlow
(config validation uses them).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Callable

from safetrain.train.actions import BaseAction, EpochEnd, StepEnd

log = logging.getLogger("safetrain")

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
MIN_SECONDS = 10.0
MEASURE_CALLS, MEASURE_SECONDS, MEASURE_SHARE = 5, 3.0, 0.02  # steady calls and seconds before the first plan
EPOCH_SHARE = 0.05       # epochs shorter than this share of the budget are measured from the first one's end
STEADY_TOLERANCE = 0.10  # steady: the two halves of the window cost the same per step, within this,
MEASURE_MAX_SHARE = 0.10  # or the window is this share of the budget
MARK_EVERY = 0.01        # step ends kept for the window's middle: one per this share of the shortest window
REPLAN_SHARE = 0.10      # a re-plan every tenth of the budget
SNAP_SHARE = 0.10        # a plan ending this share of an epoch past an epoch's end ends there instead
EVAL_SHARE_MAX = 0.10    # evaluations cost at most this share of the training between them (eval_every)
MIN_EVALUATIONS = 5      # ... unless the plan would then hold fewer evaluations than this
EVAL_SHARE = 1 / 3       # an evaluated example's cost in training examples, until one is measured
RESULTS_SECONDS = 2.5    # the result pictures (matplotlib), reports and the last records, beyond their passes
MARGIN_SHARE = 0.01      # of the budget, kept for what no estimate sees
EXIT_SECONDS = 1.5       # from report.json to the command's end: the interpreter's exit with TensorFlow
# loaded (1.2-1.4 s measured on a 2-core Intel Xeon VM); the budget is the whole command's wall time.
EXPORT_SECONDS = 2.5     # writing the SavedModel and .keras files, beyond the traces it pays
# Measured on Fashion-MNIST's recipe (3.5 MB float32 CNN, 2,000 test files, all five formats): the
# export took 19.2 s; conversions 0.7-1.2 s (int8 with its fallback ~4 s), each proof 0.3-3.2 s.
CONVERT_SECONDS = 2.0    # each of TFLite, int8 (its calibration pass) and ONNX
PROVE_SECONDS = 1.0      # each written format: loading it and its single-image latency repeats
SERVING_SHARE = 1.0      # a test file through a format's serving path, in evaluated examples


def parse_budget(value) -> float | None:
    """Seconds of `90s`, `15m`, `2h`, `1h30m` or a plain number of seconds; None stays None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration: write 90s, 15m, 2h or 1h30m")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class Costs:
    """Steady-state seconds: a training step (everything but evaluations), one evaluation of the
    eval split, and what follows training (test, pictures, export)."""

    step_s: float
    eval_s: float
    after_s: float


def steps_that_fit(seconds: float, costs: Costs, steps_per_epoch: int, eval_every: int = 1) -> int:
    """Training steps that fit `seconds` when every `eval_every` epochs of `steps_per_epoch` steps
    pay one evaluation, and the last step one more."""
    per_step = costs.step_s + costs.eval_s / (max(1, eval_every) * max(1, steps_per_epoch))
    left = seconds - costs.eval_s
    return max(0, int(left / per_step)) if per_step > 0 else 0


def snapped(total: int, step: int, steps_per_epoch: int) -> int:
    """`total`, or the epoch end before it when the plan would end only a few steps (SNAP_SHARE of
    an epoch) into a new epoch: those steps would pay the new epoch's start (its iterator and
    shuffle buffer) and a stop inside it (the iterator's teardown, which competes with the last
    evaluation and the test for the CPU), and a 1-minute run ended 1-3 s over its budget for them."""
    over = total % steps_per_epoch
    if total > steps_per_epoch and 0 < over <= SNAP_SHARE * steps_per_epoch and total - over >= step:
        return total - over
    return total


def spacing(costs: Costs, steps_per_epoch: int, planned_epochs: float) -> int:
    """Epochs between evaluations: 1, or as many as keep evaluating under EVAL_SHARE_MAX of the
    training between them, while the plan still holds MIN_EVALUATIONS of them."""
    epoch_s = costs.step_s * steps_per_epoch
    if epoch_s <= 0 or costs.eval_s <= EVAL_SHARE_MAX * epoch_s:
        return 1
    wanted = math.ceil(costs.eval_s / (EVAL_SHARE_MAX * epoch_s))
    return max(1, min(wanted, int(planned_epochs // MIN_EVALUATIONS)))


@dataclass(frozen=True)
class _Mark:
    """A point of the run: clock time, steps done, evaluation seconds and count so far."""

    time: float
    step: int
    eval_seconds: float
    evaluations: int


class Budget(BaseAction):
    """Plans the run's steps over trainer.time_budget, re-plans by time, spaces evaluations, stops at the budget."""

    def __init__(self, seconds: float, horizon, *, cap: int, steps_per_epoch: int, batch_size: int,
                 eval_examples: int, test_examples: int, results_examples: int, export: bool, started: float,
                 clock: Callable[[], float], replan: bool, evaluation=None, converted: int = 0, proven: int = 0,
                 parity_examples: int = 0,
                 time_evaluation: Callable[[], tuple[float, float | None]] | None = None,
                 time_test: Callable[[], tuple[float, float | None]] | None = None,
                 save_seconds: Callable[[], float] = lambda: 0.0) -> None:
        """`horizon`: safetrain.train.schedules.Horizon. `evaluation`: the Evaluate action (its
        `seconds` and `count`), None without an eval split. `time_evaluation()`: (trace seconds,
        seconds per example) of the evaluation step (safetrain.train.loop.TrainLoop.time_evaluation)
        on the eval split, `time_test()` the same on the test split (its pipeline may cost
        another rate: a split carved from a folder's shards reads all of them).
        `results_examples`: the eval examples the results evaluate again (calibration, thresholds).
        `converted`: export formats converted (TFLite, int8, ONNX); `proven`: formats proven on
        `parity_examples` test files (safetrain.experiment.parity). `save_seconds()`: the last
        checkpoint save's seconds (one more is saved where training ends)."""
        import tensorflow as tf

        self.seconds, self.horizon, self.cap = seconds, horizon, cap
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.eval_examples, self.test_examples, self.results_examples = eval_examples, test_examples, results_examples
        self.export, self.started, self.clock, self.allow_replan = export, started, clock, replan
        self.converted, self.proven, self.parity_examples = converted, proven, parity_examples
        self.evaluation, self.time_evaluation, self.time_test = evaluation, time_evaluation, time_test
        self.save_seconds = save_seconds
        self._test_example_s: float | None = None  # measured by time_test
        self._planned = tf.Variable(False, trainable=False, name="budget_planned")
        self._replans = tf.Variable(0, dtype=tf.int64, trainable=False, name="budget_replans")
        self._by_time = tf.Variable(False, trainable=False, name="budget_stopped_by_time")
        self._first = tf.Variable(0, dtype=tf.int64, trainable=False, name="budget_first_plan")
        self._every = tf.Variable(1, dtype=tf.int64, trainable=False, name="budget_eval_every")
        self._probed = time_evaluation is None
        self._eval_trace_s = 0.0
        self._eval_example_s: float | None = None  # measured by time_evaluation
        self._start: _Mark | None = None  # where steady steps begin in this process
        self._mark: _Mark | None = None   # this process's last plan
        self._marks: list[_Mark] = []  # every step end before the first plan (where its window's halves meet)
        self._epoch_marks: list[_Mark] = []  # every epoch end before the first plan, after the first one
        self._window: _Mark | None = None  # where the first plan's window begins, once a warm half is dropped
        self._first_epoch_end: _Mark | None = None  # this process's first epoch end after steady steps began
        self._steady_calls = 0
        self._resumed: bool | None = None  # the checkpoint held a plan: this process keeps it
        self.costs: Costs | None = None

    def checkpointed(self) -> dict:
        return {**self.horizon.trackables(), "budget_planned": self._planned, "budget_replans": self._replans,
                "budget_stopped_by_time": self._by_time, "budget_first_plan": self._first,
                "budget_eval_every": self._every}

    @property
    def planned(self) -> int:
        return self.horizon.total

    @property
    def eval_every(self) -> int:
        return int(self._every.numpy())

    def step_limit(self) -> int | None:
        return self.planned

    def eval_due(self, end: EpochEnd) -> bool:
        """Whether this epoch end evaluates (Evaluate.due): every eval_every-th epoch, and the last."""
        every = self.eval_every
        return every <= 1 or end.epoch % every == 0 or end.step >= self.planned

    # -- measuring ---------------------------------------------------------------------------------

    def _here(self, now: float, step: int) -> _Mark:
        e = self.evaluation
        return _Mark(now, step, e.seconds if e else 0.0, e.count if e else 0)

    def _costs(self, now: float, step: int, since: _Mark) -> Costs | None:
        return self._between(since, self._here(now, step))

    def _between(self, since: _Mark, here: _Mark) -> Costs | None:
        """The steady-state costs measured from `since` to `here`."""
        steps = here.step - since.step
        if steps <= 0:
            return None
        step_s = max(1e-6, (here.time - since.time - (here.eval_seconds - since.eval_seconds)) / steps)
        evaluations = here.evaluations - since.evaluations
        if evaluations:  # real (steady: the probe traced the step) evaluations since `since`
            eval_s = (here.eval_seconds - since.eval_seconds) / evaluations
            example_s = eval_s / max(1, self.eval_examples)
        else:
            example_s = self._eval_example_s or EVAL_SHARE * step_s / self.batch_size
            eval_s = self.eval_examples * example_s
        if not self.eval_examples:
            eval_s = 0.0
        test_s = self.test_examples * (self._test_example_s or example_s)
        after_s = (self.save_seconds() + test_s                                  # the last checkpoint, test
                   + RESULTS_SECONDS + self._eval_trace_s + test_s + self.results_examples * example_s  # pictures
                   + (self._export_s(example_s) if self.export else 0.0)                          # export
                   + EXIT_SECONDS + MARGIN_SHARE * self.seconds)
        return Costs(step_s=step_s, eval_s=eval_s, after_s=after_s)

    def _export_s(self, example_s: float) -> float:
        """The export: the SavedModel and its traces, each conversion, each format's proof on the test files."""
        proofs = self.proven * (PROVE_SECONDS + SERVING_SHARE * self.parity_examples * example_s)
        return EXPORT_SECONDS + 2 * self._eval_trace_s + self.converted * CONVERT_SECONDS + proofs

    def after_step(self, end: StepEnd) -> None:
        if not self._probed:  # before anything is timed: trace the eval step, time a few batches
            self._probed = True
            self._eval_trace_s, self._eval_example_s = self.time_evaluation()
            if self.time_test is not None:
                self._test_example_s = self.time_test()[1]
            return
        now, step = self.clock(), end.at.step
        if self._resumed is None:
            self._resumed = bool(self._planned.numpy())
        if self._start is None:
            if end.steady:
                self._start = self._here(now, step)
            return
        self._steady_calls += end.steady
        self._stop_if_out_of_time(now, step)
        if not bool(self._planned.numpy()):
            if not self._marks or now - self._marks[-1].time >= MARK_EVERY * MEASURE_SHARE * self.seconds:
                self._marks.append(self._here(now, step))  # a few hundred at most, however fast the steps
            window = self._ready(now, step)
            if window is not None:
                self._plan(now, step, window[0], first=True, until=window[1])
                self._marks, self._epoch_marks = [], []
        elif self.allow_replan and not self._resumed and not bool(self._by_time.numpy()):
            self._maybe_replan(now, step)
        elif self.costs is None and now - self._start.time >= MEASURE_SECONDS:  # resumed: costs for the stop only
            self.costs = self._costs(now, step, self._start)

    def _ready(self, now: float, step: int) -> tuple[_Mark, _Mark] | None:
        """Where the first plan's measurement starts and ends, once it has seen enough; None: not yet.

        Steady means the window's two halves cost the same per step, within STEADY_TOLERANCE
        (tf.data's autotuning and the first executions warm up for seconds); the second half is
        then the figure. While they disagree the earlier half is dropped and the window grows
        again from the middle; measuring ends at MEASURE_MAX_SHARE of the budget in any case.
        Short epochs are measured from the first epoch's end (its one-time costs left out: the
        eval split's first pass, the first checkpoint) in whole epochs, so that both halves pay
        their epochs' set-up and evaluations alike."""
        began = start = self._start
        costs = self._costs(now, step, start)
        short = costs is not None and costs.step_s * self.steps_per_epoch < EPOCH_SHARE * self.seconds
        if short:
            if self._first_epoch_end is None:
                return None
            start = self._first_epoch_end
        if self._window is not None and self._window.time > start.time:
            start = self._window  # the halves disagreed before: measured from where the later one began
        marks = [mark for mark in (self._epoch_marks if short else self._marks) if mark.time > start.time]
        if short:
            if not marks:
                return None
            now, step = marks[-1].time, marks[-1].step  # the window ends at the last epoch end
        if self._steady_calls < MEASURE_CALLS or now - start.time < max(MEASURE_SECONDS, MEASURE_SHARE * self.seconds):
            return None
        middle = min(marks, key=lambda mark: abs(mark.time - (start.time + now) / 2))
        end = self._here(now, step) if not short else marks[-1]
        waited = now - began.time >= MEASURE_MAX_SHARE * self.seconds
        if middle.step in (start.step, end.step):
            return (start, end) if waited else None
        first, second = self._between(start, middle), self._between(middle, end)
        if abs(first.step_s / second.step_s - 1) <= STEADY_TOLERANCE or waited:
            return middle, end
        self._window = middle  # still warming up: the earlier half is dropped
        return None

    def _maybe_replan(self, now: float, step: int) -> None:
        mark = self._mark
        due = now - mark.time >= REPLAN_SHARE * self.seconds
        if not due and step >= self.planned and self.costs is not None:  # the plan is done: is there time left?
            left = self.seconds - (now - self.started) - self.costs.after_s - self.costs.eval_s
            due = left > 0.03 * self.seconds + 2 * self.costs.step_s
        if not due:
            return
        since = mark if now - mark.time >= 0.5 * REPLAN_SHARE * self.seconds else self._start
        self._plan(now, step, since, first=False)

    def _plan(self, now: float, step: int, since: _Mark, first: bool, until: _Mark | None = None) -> None:
        """Plan from the costs between `since` and `until` (default: now)."""
        costs = self._between(since, until) if until else self._costs(now, step, since)
        if costs is None:
            return
        self.costs = costs
        self._mark = self._here(now, step)
        left = self.seconds - (now - self.started) - costs.after_s
        spe = self.steps_per_epoch
        every = spacing(costs, spe, steps_that_fit(left, costs, spe) / spe)
        fit = step + steps_that_fit(left, costs, spe, every)
        total = max(step, self.cap if fit >= self.cap else snapped(fit, step, spe))  # the cap is the user's: kept
        self._every.assign(every)
        spaced = f", evaluating every {every} epochs" if every > 1 else ""
        capped = " (capped by trainer.epochs/max_steps)" if total == self.cap else ""
        if first:
            self.horizon.first_plan(total)
            self._planned.assign(True)
            self._first.assign(total)
            log.info("trainer.time_budget %s: %.1f ms a step, %.2f s an evaluation, %.1f s for test and export "
                     "-> %d steps (%.1f epochs%s)%s; the learning-rate schedule ends there", _words(self.seconds),
                     1000 * costs.step_s, costs.eval_s, costs.after_s, total, total / spe, spaced, capped)
            return
        if total == self.planned:
            return
        before = self.planned
        self.horizon.replan(step, total)
        self._replans.assign_add(1)
        log.info("trainer.time_budget: %.0f s left, %.1f ms a step, %.2f s an evaluation: re-planned %d -> %d steps"
                 "%s%s", self.seconds - (now - self.started), 1000 * costs.step_s, costs.eval_s, before, total, spaced,
                 capped)

    def _stop_if_out_of_time(self, now: float, step: int) -> None:
        costs = self.costs
        if costs is None or not bool(self._planned.numpy()) or step >= self.planned:
            return
        elapsed = now - self.started
        if elapsed + costs.after_s + costs.eval_s + costs.step_s >= self.seconds:
            self.horizon.variable.assign(step)  # out of time: stop here (the epoch-end actions evaluate and save)
            self._by_time.assign(True)
            log.warning("trainer.time_budget: %.0f s of %.0f s spent at step %d; stopping there (the "
                        "rest is kept for evaluation, test and export)", elapsed, self.seconds, step)

    def after_epoch(self, end: EpochEnd) -> str | None:
        if self._start is not None and self._first_epoch_end is None:
            self._first_epoch_end = self._here(self.clock(), end.step)
        elif self._start is not None and not bool(self._planned.numpy()):
            self._epoch_marks.append(self._here(self.clock(), end.step))
        return None

    def summary(self, steps: int) -> dict:
        """report.json `budget`."""
        planned = self.planned
        if bool(self._by_time.numpy()):
            stopped_by = "time"
        elif steps >= planned:
            stopped_by = "plan" if planned < self.cap else "trainer.epochs"  # (or trainer.max_steps: the cap)
        else:
            stopped_by = "early_stopping"
        costs = self.costs
        return {"seconds": self.seconds, "planned_steps": planned, "first_plan": int(self._first.numpy()),
                "steps": steps, "replans": int(self._replans.numpy()), "stopped_by": stopped_by,
                "step_ms": round(1000 * costs.step_s, 2) if costs else None,
                "eval_seconds": round(costs.eval_s, 3) if costs else None,
                "after_training_seconds": round(costs.after_s, 2) if costs else None,
                "eval_every_epochs": self.eval_every, "warmup_steps": self.horizon.warmup_steps,
                "replanning": (f"every {REPLAN_SHARE:.0%} of the budget from steady-state costs; the learning rate "
                               f"bends from where it is, never up" if self.allow_replan else
                               "off (trainer.deterministic=true: the first plan is kept, so a resume is bitwise)")}


def _words(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s" if minutes else f"{rest:g}s"
