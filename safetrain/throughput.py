"""Step timing: examples/s, step time percentiles and the share of time spent waiting for input.

Steady state excludes the first `warmup_steps` of the run (tracing: the loop's gradient probe
runs its first steps through a second traced function, then the plain one is traced, so the loop
passes the probe's step count + 1) and the first step of each epoch (a new iterator), so the
medians describe training, not start-up.
A wait of None means it was not measured (trainer.deterministic=true forbids the in-graph
timestamps it comes from); the input-wait fraction is then None, never a made-up 0.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class StepTimer:
    warmup_steps: int = 1
    waits: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    _interval: list[float] = field(default_factory=lambda: [0.0, 0.0, 0, 0])  # wait, total, steps, examples
    _seen: int = 0
    _wait_known: bool = True

    def add(self, wait: float | None, total: float, examples: int, first_of_epoch: bool) -> None:
        self._seen += 1
        if wait is None:
            self._wait_known, wait = False, 0.0
        iv = self._interval
        iv[0] += wait
        iv[1] += total
        iv[2] += 1
        iv[3] += examples
        if self._seen <= self.warmup_steps or first_of_epoch or total <= 0:
            return
        self.waits.append(wait)
        self.totals.append(total)
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
        ms = sorted(1000.0 * t for t in self.totals)
        return {"examples_per_sec": round(statistics.median(self.rates), 1),
                "input_wait_fraction": round(sum(self.waits) / sum(self.totals), 4) if self._wait_known else None,
                "step_time_ms_p50": round(statistics.median(ms), 3),
                "step_time_ms_p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3)}
