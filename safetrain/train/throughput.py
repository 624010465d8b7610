"""Step timing: examples/s, step time percentiles and the share of time spent waiting for input;
how many steps one train call should run; where a run's wall time went.

The timer is fed once per train call (one step, or trainer.steps_per_loop steps run in the
graph). Steady state excludes the first `warmup_steps` calls of the run (tracing: the loop's
gradient probe runs its first steps through a second traced function, then the plain one is
traced, so the loop passes the probe's step count + 1) and the first call of each epoch (a new
iterator), so the medians describe training, not start-up. The median rate is therefore what a
step costs in steady state; the run's *effective* rate (examples over the seconds of its
training epochs, safetrain.experiment.train) also pays for each epoch's start, checkpoints and logging.
A wait of None means it was not measured (trainer.deterministic=true forbids the in-graph
timestamps it comes from); the input-wait fraction is then None, never a made-up 0.
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

CALL_SECONDS = 0.1  # auto steps_per_loop: the longest a train call should take (the target is 50-100 ms)


@dataclass
class StepTimer:
    warmup_steps: int = 1
    waits: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # steps in each timed call
    _interval: list[float] = field(default_factory=lambda: [0.0, 0.0, 0, 0])  # wait, total, steps, examples
    _seen: int = 0
    _wait_known: bool = True

    def add(self, wait: float | None, total: float, examples: int, first_of_epoch: bool, steps: int = 1) -> None:
        """One train call: `steps` steps that took `total` seconds, `wait` of them waiting for input."""
        self._seen += 1
        if wait is None:
            self._wait_known, wait = False, 0.0
        iv = self._interval
        iv[0] += wait
        iv[1] += total
        iv[2] += steps
        iv[3] += examples
        if self._seen <= self.warmup_steps or first_of_epoch or total <= 0:
            return
        self.waits.append(wait)
        self.totals.append(total)
        self.steps.append(steps)
        self.rates.append(examples / total)

    def interval(self) -> dict[str, float | None]:
        """Averages since the previous call: the values logged to TensorBoard at each log step."""
        wait, total, steps, examples = self._interval
        self._interval = [0.0, 0.0, 0, 0]
        if not steps or total <= 0:
            return {}
        return {"throughput/examples_per_sec": examples / total,
                "throughput/steps_per_sec": steps / total,
                "throughput/step_time_ms": 1000.0 * total / steps,
                "throughput/input_wait_fraction": wait / total if self._wait_known else None}

    def summary(self) -> dict[str, float | None]:
        if not self.totals:
            return {"examples_per_sec": None, "input_wait_fraction": None,
                    "step_time_ms_p50": None, "step_time_ms_p90": None}
        ms = sorted(1000.0 * t / n for t, n in zip(self.totals, self.steps))  # per step
        return {"examples_per_sec": round(statistics.median(self.rates), 1),
                "input_wait_fraction": round(sum(self.waits) / sum(self.totals), 4) if self._wait_known else None,
                "step_time_ms_p50": round(statistics.median(ms), 3),
                "step_time_ms_p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3)}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_steps_per_loop(step_seconds: float, log_every: int, checkpoint_every: int,
                          call_seconds: float = CALL_SECONDS) -> tuple[int, str]:
    """trainer.steps_per_loop=auto: the most steps per call that keep a call within `call_seconds`,
    among those that divide both trainer.log_every_steps and trainer.checkpoint_every_steps (a call
    never runs past a step where logging or a checkpoint is due). Returns (K, why, in words)."""
    common = math.gcd(log_every, checkpoint_every)
    fits = [d for d in divisors(common) if d * step_seconds <= call_seconds] or [1]
    k = max(fits)
    why = (f"{k} step{'s' if k > 1 else ''} per call (a step took {1000 * step_seconds:.1f} ms, so a call takes about "
           f"{1000 * k * step_seconds:.0f} ms")
    if k == common and k * step_seconds < call_seconds / 2:  # under the 50 ms the target asks for
        why += (f"; capped at {common}, which divides trainer.log_every_steps={log_every} and "
                f"trainer.checkpoint_every_steps={checkpoint_every}: raise both for longer calls")
    return k, why + ")"


@dataclass
class WallTime:
    """Seconds per phase of a run (report.json throughput.wall_seconds): each `phase(name)` block
    adds its duration; `since_start` is measured from when the run began."""

    clock: Callable[[], float] = time.perf_counter
    seconds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.started = self.clock()

    @contextmanager
    def phase(self, name: str):
        began = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - began)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def timed(self, name: str, fn: Callable):
        """`fn` with each call's duration added to phase `name`."""
        def call(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return call

    def since_start(self) -> float:
        return self.clock() - self.started
