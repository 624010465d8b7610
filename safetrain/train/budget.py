"""trainer.time_budget: the most training that fits a wall-clock budget, planned from measured costs.

Ultralytics' `time=` re-plans its epochs after the first; Lightning's `max_time` stops without
re-planning. Here the budget is turned into a number of **steps**, and everything follows the
steps: the learning-rate schedule decays over them (cosine, linear and one_cycle read the planned
total from a variable, safetrain.train.schedules.Horizon), evaluations come at epoch ends as usual
(and once more where the plan ends inside an epoch), and the loop stops at the planned step.

1. The first steps are measured (the epoch's rate after its first, tracing call: a few calls or
   two seconds), and the plan is made: the seconds left after start-up, minus a reserve for the
   test split, the result pictures and the export, divided by the cost of a step plus its share of
   an epoch-end evaluation (evaluation costs a third of a training step per example until one is
   measured). trainer.epochs and trainer.max_steps cap it.
2. After each epoch the plan is made again from what the last epoch really cost (its steps, its
   evaluation, the actions, the next epoch's set-up: the time between two epoch ends), when it
   differs from the current plan by more than 10% (`replans`): the first epoch is measured while
   TensorFlow still warms up (tracing, a new steps-per-call), so its rate is often far from the
   steady one. Under trainer.deterministic=true the first plan is kept: a plan measured by a
   resumed process would differ from the uninterrupted run's, and deterministic runs promise
   bitwise the same weights.
3. Should the run still reach its budget (the machine slowed down), it stops there at the next
   step: a checkpoint is saved by the epoch-end actions, the best eval weights are tested and
   exported (`stopped_by: time`).

The plan lives in tf.Variables the checkpoint keeps (`checkpointed`), so SIGTERM + rerun continues
the same plan: a resumed run plans nothing again (it times its steps only for the stop at the
budget). Plain Python around the variables; parsing and the arithmetic import no TensorFlow
(config validation uses them).
"""

from __future__ import annotations

import logging
import re
from typing import Callable

from safetrain.train.actions import BaseAction, EpochEnd, StepEnd

log = logging.getLogger("safetrain")

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
MIN_SECONDS = 10.0
MEASURE_CALLS, MEASURE_SECONDS = 5, 2.0   # steady calls (or seconds of them) before the first plan
EVAL_SHARE = 1 / 3                        # an evaluated example's cost, in training examples (forward only)
EXPORT_SECONDS = 8.0                      # SavedModel, self-check, .keras file (small models on a CPU: 2-5 s)
REPLAN_CHANGE = 0.10


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


def steps_that_fit(seconds: float, step_s: float, eval_s: float, steps_per_epoch: int) -> int:
    """Training steps that fit `seconds` when each epoch of `steps_per_epoch` steps also pays one
    evaluation of `eval_s`."""
    per_step = step_s + eval_s / max(1, steps_per_epoch)
    return max(0, int(seconds / per_step)) if per_step > 0 else 0


class Budget(BaseAction):
    """Plans the run's steps over trainer.time_budget, re-plans after epochs, stops at the budget."""

    def __init__(self, seconds: float, horizon, *, cap: int, steps_per_epoch: int, batch_size: int,
                 eval_examples: int, test_examples: int, export: bool, started: float,
                 clock: Callable[[], float], replan: bool) -> None:
        import tensorflow as tf

        self.seconds, self.horizon, self.cap = seconds, horizon, cap
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.eval_examples, self.test_examples, self.export = eval_examples, test_examples, export
        self.started, self.clock, self.allow_replan = started, clock, replan
        self._planned = tf.Variable(False, trainable=False, name="budget_planned")
        self._replans = tf.Variable(0, dtype=tf.int64, trainable=False, name="budget_replans")
        self._by_time = tf.Variable(False, trainable=False, name="budget_stopped_by_time")
        self._first = tf.Variable(0, dtype=tf.int64, trainable=False, name="budget_first_plan")
        self._measured: tuple[float, int] | None = None  # (time of the first, count) of this epoch's steady calls
        self._epoch_began: tuple[float, int] | None = None  # (time, step) where this process's epoch began
        self._since: tuple[float, int] | None = None  # (time, step) of this process's first epoch end
        self.step_s: float | None = None  # this process's measured step (a resumed run measures it for the stop)

    def checkpointed(self) -> dict:
        return {"budget_planned_steps": self.horizon, "budget_planned": self._planned,
                "budget_replans": self._replans, "budget_stopped_by_time": self._by_time,
                "budget_first_plan": self._first}

    @property
    def planned(self) -> int:
        return int(self.horizon.numpy())

    def step_limit(self) -> int | None:
        return self.planned

    def reserve(self, example_s: float) -> float:
        """Seconds kept for what follows training: testing, the result pictures (another pass
        over the test split) and the export."""
        return 2 * self.test_examples * example_s * EVAL_SHARE + (EXPORT_SECONDS if self.export else 0.0) + 2.0

    def after_step(self, end: StepEnd) -> None:
        now = self.clock()
        if self._epoch_began is None:
            self._epoch_began = (now, end.at.step)
        if self.step_s is None and end.rate:
            first_t, calls = self._measured or (now, 0)
            self._measured = (first_t, calls + 1)
            if calls + 1 > MEASURE_CALLS or now - first_t >= MEASURE_SECONDS:
                if bool(self._planned.numpy()):  # resumed: the checkpoint's plan stands; this is for the stop
                    self.step_s = self.batch_size / end.rate
                else:
                    self._plan(end.at.step, now, self.batch_size / end.rate)
        elapsed = now - self.started
        if bool(self._planned.numpy()) and end.at.step < self.planned and self.step_s:
            example_s = self.step_s / self.batch_size
            if elapsed + self.reserve(example_s) + self.eval_examples * example_s * EVAL_SHARE >= self.seconds:
                self.horizon.assign(end.at.step)  # out of time: stop here (the epoch-end actions save)
                self._by_time.assign(True)
                log.warning("trainer.time_budget: %.0f s of %.0f s spent at step %d; stopping there (the "
                            "rest is kept for evaluation, test and export)", elapsed, self.seconds, end.at.step)

    def _plan(self, step: int, now: float, step_s: float) -> None:
        self.step_s = step_s
        example_s = step_s / self.batch_size
        eval_s = self.eval_examples * example_s * EVAL_SHARE
        left = self.seconds - (now - self.started) - self.reserve(example_s)
        total = min(self.cap, step + steps_that_fit(left, step_s, eval_s, self.steps_per_epoch))
        total = max(total, step)
        self.horizon.assign(total)
        self._planned.assign(True)
        self._first.assign(total)
        log.info("trainer.time_budget %s: %.0f ms a step, %.1f s an evaluation -> %d steps (%.1f epochs)%s; the "
                 "learning-rate schedule ends there", _words(self.seconds), 1000 * step_s, eval_s, total,
                 total / self.steps_per_epoch, " (capped by trainer.epochs/max_steps)" if total == self.cap else "")

    def after_epoch(self, end: EpochEnd) -> str | None:
        now = self.clock()
        began, self._epoch_began = self._epoch_began, (now, end.step)  # the next epoch counts from here
        self._measured = None
        if (not self.allow_replan or not bool(self._planned.numpy()) or bool(self._by_time.numpy())
                or began is None or end.step >= self.planned):
            return None
        ran = end.step - began[1]
        if ran < max(1, self.steps_per_epoch // 2):
            return None  # too little of an epoch measured in this process
        # After the first epoch: everything since its end (the warm-up left out, the epochs' noise
        # averaged); before, the first epoch itself.
        since = self._since or began
        self._since = self._since or (now, end.step)
        if end.step - since[1] < max(1, self.steps_per_epoch // 2):
            since = began
        per_step = (now - since[0]) / (end.step - since[1])  # steps, evaluations, actions, epoch set-ups
        epoch_s = per_step * self.steps_per_epoch
        example_s = per_step / self.batch_size
        left = self.seconds - (now - self.started) - self.reserve(example_s) - self.eval_examples * example_s
        total = min(self.cap, end.step + max(0, int(left / per_step)))
        if abs(total - self.planned) <= REPLAN_CHANGE * self.planned:
            return None
        log.info("trainer.time_budget: an epoch takes %.1f s (evaluation included); re-planned %d -> %d steps",
                 epoch_s, self.planned, total)
        self.horizon.assign(total)
        self._replans.assign_add(1)
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
        return {"seconds": self.seconds, "planned_steps": planned, "first_plan": int(self._first.numpy()),
                "steps": steps,
                "replans": int(self._replans.numpy()), "stopped_by": stopped_by,
                "step_ms": round(1000 * self.step_s, 2) if self.step_s else None,
                "replanning": "after each epoch, when the plan changes by more than 10%" if self.allow_replan
                else "off (trainer.deterministic=true: the first plan is kept, so a resume is bitwise)"}


def _words(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{int(rest)}s" if minutes else f"{rest:g}s"


