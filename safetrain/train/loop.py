"""The outer loop: plain Python a reader can follow top to bottom.

Epochs of train calls (the tf.functions in safetrain.train.steps). A call runs one step, or with
trainer.steps_per_loop=K up to K steps inside the graph (one host sync for all of them); calls
end on multiples of K, so the periodic actions — which must be due only on multiples of K
(validate() insists, as Orbit does) — never fall inside one. After each call: time it, check the
NaN guard (the in-graph loop stops right after a non-finite step, so the stop or skip happens at
that exact step), then call the periodic actions (safetrain.train.actions: logging, checkpoints, the
gradient probe), which decide themselves whether they are due; a pending SIGTERM/SIGINT saves a
checkpoint at that exact step and stops. After each epoch: the epoch actions (evaluation, the
epoch-end checkpoint). Invariant: the step counter advances by exactly the steps run.

The loop knows nothing of TensorFlow graphs or the run directory: batches come from
`train_batches(epoch, skip)`, evaluation data through `distribute`, and what is recorded goes to
`record` (safetrain.record.run_record) — so it is unit-tested with a fake step function and a fake clock.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from safetrain.train.actions import Action, EpochEnd, GradientProbe, StepEnd
from safetrain.train.metrics import COUNT, Totals
from safetrain.config.schema import OnNan, TrainerConfig
from safetrain.core.errors import ErrorKind, NanStop, Phase
from safetrain.train.progress import Progress
from safetrain.core.run_state import Context, Position
from safetrain.train.signals import SignalGuard
from safetrain.train.throughput import StepTimer, choose_steps_per_loop

log = logging.getLogger("safetrain")

_NAN_HINT = ("lower optimizer.learning_rate (e.g. by 10x), set optimizer.clipnorm=1.0, check the "
             "input normalization (dataset.image.normalization), or set trainer.on_nan=skip_step")


@dataclass
class LoopResult:
    steps: int = 0
    epochs: int = 0
    train_loss: float | None = None
    train_accuracy: float | None = None  # the task's headline: accuracy, or subset_accuracy (multi-label)
    train_headline: str = "accuracy"     # which of the two
    skipped_steps: int = 0
    time_to_first_step_s: float | None = None
    examples: int = 0                 # trained in this process (finite steps)
    train_seconds: float = 0.0        # inside training epochs: the train calls and the actions after them
    # train_seconds in parts: setting up each epoch's iterator, each epoch's first call and the calls
    # that traced (a new iterator filling its buffers, tracing), the other calls, the actions after
    # calls (logging, checkpoints)
    epoch_setup_seconds: float = 0.0  # building each epoch's pipeline and iterator
    first_call_seconds: float = 0.0
    steady_call_seconds: float = 0.0
    action_seconds: float = 0.0
    steps_per_loop: int | None = None  # steps per train call, once known
    steps_per_loop_reason: str | None = None


class TrainLoop:
    def __init__(self, *, steps, train_batches: Callable[[int, int], Iterable],
                 distribute: Callable[[Any], Iterable], cfg: TrainerConfig, record, checkpoints,
                 steps_per_epoch: int | None, actions: Sequence[Action] = (),
                 probe: GradientProbe | None = None, timer: StepTimer | None = None,
                 progress: Progress | None = None,
                 started: float | None = None, clock: Callable[[], float] = time.perf_counter,
                 guard: SignalGuard | None = None, context: Context | None = None,
                 steps_for_epoch: Callable[[int], Any] | None = None, steps_per_loop: int | None = 1) -> None:
        """`steps`: `train_steps(iterator, n)` (up to n steps in one call; n an int32 tensor),
        `train_probe(iterator)`, `eval(images, labels)` and `missing_gradients_error()`
        (safetrain.train.steps.Steps). `train_batches(epoch, skip)`: the epoch's training batches after
        the first `skip`, ready for the step functions.
        `actions` run in order after each step and epoch; put checkpointing last, so it saves what
        the others decided. `probe`, when given, is one of the actions: while it is active the
        loop runs the probing step. `timer` measures the steps (its warmup should cover every traced
        step); `started`: when the run began (time to first step). `steps_for_epoch(epoch)`, when
        given, returns the step functions for that epoch (a backbone frozen in the first epochs and
        fine-tuned from a later one trains different variables); it is asked before each epoch,
        also the one a resume starts in. `steps_per_loop`: steps per train call (the probe's steps
        are single calls); None = auto, chosen from the first untraced single steps so a call
        lasts about 100 ms (safetrain.train.throughput.choose_steps_per_loop)."""
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
        self.steps_per_loop = steps_per_loop
        if steps_per_loop is not None:
            self.result.steps_per_loop = steps_per_loop
            self.result.steps_per_loop_reason = "trainer.steps_per_loop"
        self._released: threading.Thread | None = None  # dropping the last epoch's iterator (see _release)
        self._single_s: list[float] = []  # untraced single-step calls: what auto decides from
        self._called: set[str] = set()     # the step functions called once already (traced)

    def run(self) -> LoopResult:
        result = self.result
        start = self.checkpoints.restore()
        for warning in self.checkpoints.warnings:
            self.record.event(phase=Phase.train, kind=ErrorKind.checkpoint_fallback, message=warning, step=start.step,
                              hint="the run resumed from an older checkpoint; steps after it are trained again")
        if start.step:
            log.info("resuming from checkpoint at step %d (epoch %d)", start.step, start.epoch)
        else:  # the starting point: a NaN in the first steps can still be replayed from here
            self.checkpoints.save(Position())
        result.steps, result.epochs = start.step, start.epoch - 1
        # Signals are held from the first step to the last epoch's end, not only while steps run:
        # one that came after an epoch's last step raised in the middle of its evaluation (or with
        # the weights' moving average swapped in), and the run stopped with only the previous
        # epoch's checkpoint (seen in CI: a SIGTERM right after step 16 resumed from step 8). Held,
        # it waits for the step or the epoch's end it came in, then a save; a second signal stops
        # at once (SignalGuard).
        with self.guard.deferred():
            last = self._epochs(start)
        self._stop_if_signalled(last)  # one that came after the last epoch end's check
        return result

    def _stop_if_signalled(self, at: Position) -> None:
        if self.guard.pending:
            self.checkpoints.save(at)
            self.guard.raise_if_pending(saved_step=at.step)

    def _epochs(self, start: Position) -> Position:
        """Train epochs from `start`; returns where a resume would start after the last one."""
        cfg, result = self.cfg, self.result
        skip, resume_at = start.in_epoch, start
        for epoch in range(start.epoch, cfg.epochs + 1):
            if self._budget_spent() or self.stopped_early:
                break
            totals, in_epoch, completed = self._train_epoch(epoch, skip)
            skip = 0
            completed = completed or (self.steps_per_epoch is not None and in_epoch >= self.steps_per_epoch)
            result.epochs = epoch
            result.train_loss, result.train_accuracy = totals.mean_loss, totals.accuracy
            result.train_headline = totals.headline[0]
            # Where a resume starts: the next epoch, or the rest of this one (max_steps hit).
            resume_at = Position(result.steps, epoch + 1, 0) if completed else Position(result.steps, epoch, in_epoch)
            end = EpochEnd(epoch=epoch, step=result.steps, totals=totals, next_position=resume_at,
                           ending=lambda: epoch >= cfg.epochs or self._budget_spent() or self.stopped_early)
            line = [f"train loss {totals.mean_loss:.4f} {totals.headline[1]} {totals.accuracy:.4f}"]
            line += [text for action in self.actions if (text := action.after_epoch(end))]
            self.progress.end_epoch(" | ".join(line))
            self.record.flush()
            self._stop_if_signalled(resume_at)  # after the actions: the save holds what they decided
        return resume_at

    def close(self, timeout: float = 5.0) -> None:
        """Wait (a little) for the last epoch's iterator to be dropped. Not at the end of `run`:
        an iterator left inside an epoch of augmented batches (a time budget ends mid-epoch) took
        8-30 s to drop on a 2-core CPU (measured on 22,000 70x70 drawings), time the test, the
        result pictures and the export can use meanwhile."""
        if self._released is not None:
            self._released.join(timeout=timeout)

    @property
    def stopped_early(self) -> bool:
        """An action (early stopping) ended training; after a resume too, from its restored state."""
        return any(action.wants_stop for action in self.actions)

    def _step_limit(self) -> int | None:
        """trainer.max_steps and the actions' limits (trainer.time_budget's planned steps)."""
        limits = [self.cfg.max_steps] + [getattr(action, "step_limit", lambda: None)() for action in self.actions]
        limits = [limit for limit in limits if limit is not None]
        return min(limits) if limits else None

    def _budget_spent(self) -> bool:
        limit = self._step_limit()
        return limit is not None and self.result.steps >= limit

    def _train_epoch(self, epoch: int, skip: int) -> tuple[Totals, int, bool]:
        """Returns the epoch's totals, the batches done in it, and whether it ran to the end."""
        result = self.result
        began = self.clock()
        try:
            if self.steps_for_epoch is not None:
                self.steps = self.steps_for_epoch(epoch)
            holder = [iter(self.train_batches(epoch, skip))]
            self.progress.start_epoch(epoch, self.cfg.epochs, self.steps_per_epoch)
            result.epoch_setup_seconds += self.clock() - began
            done = self._train_calls(epoch, skip, holder[0])
            self._release(holder)  # the only reference left: _train_calls' frame has gone
            return done
        finally:
            result.train_seconds += self.clock() - began

    def _train_calls(self, epoch: int, skip: int, iterator) -> tuple[Totals, int, bool]:
        result = self.result
        totals = Totals(self.steps.train_metrics)
        in_epoch, calls = skip, 0
        rate_from: tuple[float, int] | None = None  # (time, examples) after the epoch's first call
        while not self._budget_spent():
            left = None if self.steps_per_epoch is None else self.steps_per_epoch - in_epoch
            if left is not None and left <= 0:
                return totals, in_epoch, True
            name, call, asked = self._next_call(left)
            self.context.phase, self.context.step = Phase.train, result.steps + 1
            t0 = self.clock()
            try:
                out = {k: np.asarray(v) for k, v in call(iterator).items()}
            except tf.errors.OutOfRangeError:  # the data ran out before the counted steps
                return totals, in_epoch, True
            t1 = self.clock()
            ran = int(out.get("steps", 1))
            if not ran:  # the multi-step call found no batch left
                return totals, in_epoch, True
            if asked == 1 and name in self._called:
                self._single_s.append(t1 - t0)
            calls += 1
            steady = calls > 1 and name in self._called  # neither a trace nor a new iterator's first fill
            if not steady:
                result.first_call_seconds += t1 - t0
            else:
                result.steady_call_seconds += t1 - t0
            self._called.add(name)
            result.steps += ran
            in_epoch += ran
            missing = self.steps.missing_gradients_error()
            if missing is not None:
                raise missing
            if result.time_to_first_step_s is None:
                result.time_to_first_step_s = round(t1 - self.started, 3)
            finite = bool(out["finite"])
            if finite or "last_loss_sum" in out:  # a multi-step call's sums cover its finite steps only
                totals.add(out)
                result.examples += int(out["count"])
            if finite:
                wait = float(out["input_wait_s"])
                self.timer.add(wait=None if wait < 0 else min(wait, t1 - t0), total=t1 - t0,
                               examples=int(out["count"]), first_of_epoch=calls == 1, steps=ran)
            else:  # raises unless on_nan=skip_step
                self._non_finite(epoch, float(out.get("last_loss_sum", out["loss_sum"])))
            # This epoch so far, input waits included, first call (tracing, new iterator) excluded.
            rate = (totals.count - rate_from[1]) / (t1 - rate_from[0]) if rate_from and t1 > rate_from[0] else None
            rate_from = rate_from or (t1, totals.count)
            at = Position(result.steps, epoch, in_epoch)
            end = StepEnd(at=at, outputs=out, totals=totals, rate=rate, finite=finite, steady=steady)
            for action in self.actions:
                action.after_step(end)
            result.action_seconds += self.clock() - t1
            self._stop_if_signalled(at)  # SIGTERM/SIGINT: save exactly here, then stop
            if finite and ran < asked:  # the data ran out inside the call
                return totals, in_epoch, True
        return totals, in_epoch, False

    def _release(self, holder: list) -> None:
        """Drop a finished epoch's iterator on a background thread. Measured on digits_cnn (2-core
        CPU): destroying the epoch's tf.data iterator, which the loop stops short of its end (the
        last partial batch is dropped, no end-of-sequence is ever read), blocked the loop 1.0-2.3 s
        in 5 of 6 epochs while the pipeline's background threads wound down (a fifth to a third of
        the training phase).
        Dropped here instead, it goes while the epoch-end evaluation and the next epoch start."""
        if self._released is not None:
            self._released.join(timeout=30)
        self._released = threading.Thread(target=holder.clear, name="safetrain-drop-iterator", daemon=True)
        self._released.start()

    def _next_call(self, left: int | None) -> tuple[str, Callable[[Any], dict], int]:
        """(name, call, steps asked) for the next train call: the probe's single step while it is
        active, else up to steps_per_loop steps, ending on the next multiple of it (where logging
        and checkpoints can be due), at the epoch's end or at trainer.max_steps."""
        if self.probe is not None and self.probe.active:
            return "probe", self.steps.train_probe, 1
        if self.steps_per_loop is None and len(self._single_s) >= 2:
            self.steps_per_loop, reason = choose_steps_per_loop(
                float(np.median(self._single_s)), self.cfg.log_every_steps, self.cfg.checkpoint_every_steps)
            self.result.steps_per_loop, self.result.steps_per_loop_reason = self.steps_per_loop, reason
            log.info("trainer.steps_per_loop=auto: %s", reason)
        k = self.steps_per_loop or 1  # auto, still measuring: single steps
        n = k - self.result.steps % k
        limit_ = self._step_limit()
        for limit in (left, None if limit_ is None else limit_ - self.result.steps):
            if limit is not None:
                n = min(n, limit)
        return "steps", lambda iterator: self.steps.train_steps(iterator, tf.constant(n, tf.int32)), n

    def _non_finite(self, epoch: int, loss_sum: float) -> None:
        step = self.result.steps
        message = (f"the loss or a gradient became NaN/Inf at step {step} (epoch {epoch}, batch loss "
                   f"sum {loss_sum})")
        if self.cfg.on_nan is OnNan.stop:
            raise NanStop(message + "; training stopped and no checkpoint was saved after it", step=step,
                          hint=_NAN_HINT)
        self.result.skipped_steps += 1
        self.record.event(phase=Phase.train, kind=ErrorKind.non_finite,
                          message=message + "; its update was not applied (trainer.on_nan=skip_step)",
                          hint=_NAN_HINT, step=step, config_key="trainer.on_nan")

    def time_evaluation(self, dataset, batches: int = 3) -> tuple[float, float | None]:
        """(seconds of the first batch — the eval step's trace and the pipeline's first fill —,
        seconds per example of up to `batches` batches after it, None when there were none). The
        evaluations that follow find the step traced, so their times are steady ones
        (trainer.time_budget plans with these)."""
        self.context.phase, self.context.step = Phase.eval, self.result.steps
        iterator = iter(self.distribute(dataset))
        t0 = self.clock()
        first = next(iterator, None)
        if first is None:
            return 0.0, None
        int(np.asarray(self.steps.eval(*first)[COUNT]))
        t1, examples = self.clock(), 0
        for images, labels in itertools.islice(iterator, batches):
            examples += int(np.asarray(self.steps.eval(images, labels)[COUNT]))
        t2 = self.clock()
        return t1 - t0, ((t2 - t1) / examples if examples else None)

    def evaluate(self, dataset) -> dict[str, float]:
        """The eval step's metrics over `dataset` ({name: value}: loss, trainer.metrics, ...)."""
        self.context.phase, self.context.step = Phase.eval, self.result.steps
        totals = Totals(self.steps.eval_metrics)
        for images, labels in self.distribute(dataset):
            totals.add({k: np.asarray(v) for k, v in self.steps.eval(images, labels).items()})
        return totals.results()
