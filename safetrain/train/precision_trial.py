"""hardware.precision=auto by measurement: the user's own model and batches, timed under each
precision the device supports, and the fastest whose loss agrees with float32's.

Why measure: a table of capabilities cannot know the speed. On an Intel Xeon with AVX512_BF16 and
no AMX, mixed_bfloat16 trained at 0.68-0.79x float32's examples/s while oneDNN's bfloat16 math mode
ran a 96x96 residual net at 1.75x; with AMX, mixed_bfloat16 was 1.7x on a small CNN. Which route
wins depends on the CPU, the model and the batch, so the trial runs those.

The trial: each candidate gets a fresh model built from the run's seed (the same weights), the
same optimizer kind at a constant rate, and the same batches (the run's first training batches,
unaugmented, held in memory, so the pipeline's speed is not what is timed); one call traces, a
short call warms up, then timed calls of `n` steps each (one graph call: Keras'
steps_per_execution) in alternating rounds give examples/s (each candidate's best round) and the
mean loss of the first round, when every candidate has trained the same steps on the same
batches. A candidate whose loss is worse than float32's by more than 5% (+0.01) or goes non-finite
is rejected; one must beat float32 by more than 5% (15% when timed in another process) to be
chosen, so `auto` is never slower than float32 by more than the noise of a short measurement.

The loss rule is one-sided: what it guards against is a precision that trains worse (gradients
lost to underflow, a loss that stalls or overflows). A *lower* loss after the same steps on the
same batches is no such sign, and a rule that rejected it too cost the Fashion-MNIST recipe most
of its speed: mixed_bfloat16 trained 2.4x float32 on an AMX Xeon and 1.89x on an AMD EPYC (Zen 5)
with a trial loss 12-13% lower, was rejected, and the 15-minute run it was kept from tested best
when set by hand (40 epochs against 23: docs/training-recipes.md).

The trial never touches the run: its models are separate objects, Keras' name counters are put
back afterwards (so the run's variable names, and its weights' digest, are what they would have
been without a trial), and its batches come from a separate iterator over the epoch-1 order,
which is a function of the seed alone (exact resume and bitwise determinism stay as they are).

oneDNN's bfloat16 math (`TF_SET_ONEDNN_FPMATH_MODE=BF16`: float32 weights, bfloat16 arithmetic in
its convolutions and matmuls) is read once, when TensorFlow starts, so it is measured in a second
process (safetrain/trial_worker.py) and, when it wins, applied from the next run on (the run sets
the variable before it imports TensorFlow, from the cached decision: safetrain.train.precision_cache).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from safetrain.train.hardware import Device
from safetrain.train.precision_cache import ONEDNN_MATH_ENV

log = logging.getLogger("safetrain")

FLOAT32, MIXED_BF16, MIXED_F16, ONEDNN_BF16 = "float32", "mixed_bfloat16", "mixed_float16", "onednn_bf16"
POLICY = {FLOAT32: "float32", MIXED_BF16: "mixed_bfloat16", MIXED_F16: "mixed_float16", ONEDNN_BF16: "float32"}
LOSS_TOLERANCE = (0.05, 0.01)  # relative to float32's mean trial loss, plus absolute
NOISE = 1.05                   # a candidate must train > 5% faster than float32 to be chosen,
NOISE_OTHER_PROCESS = 1.15     # and > 15% when it was timed in another process (not side by side)
WARM_STEPS = 2                 # after the tracing call, before the timed ones
ROUNDS = 2                     # alternating timed rounds per candidate; each one's best counts
WORKER_START_S = 6.0           # a second process: Python, TensorFlow, the model, its trace (AMD EPYC, 2 cores)
TIMED_SECONDS = 0.6            # float32's timed call lasts about this long (5 to 40 steps)
OVER_BUDGET = "not measured: over the trial's budget"
MIN_BUDGET_S = 10.0            # the trial may take the larger of this and 3% of the planned training
BUDGET_SHARE = 0.03
# Under trainer.time_budget the trial's seconds come out of the budget: at most this share of it, and
# no trial when that share is under MIN_BUDGET_S (a 1-minute run spent half its training measuring).
TIME_BUDGET_SHARE = 0.05


def candidates(devices: list[Device], trains_backbone: bool = False) -> list[str]:
    """What the trial measures on these devices (float32 first: the reference)."""
    gpus = [d for d in devices if d.kind == "GPU"]
    if any(d.kind == "TPU" for d in devices):
        return []  # TPUs: bfloat16 is their native format; the table decides
    if gpus:
        names = [FLOAT32]
        if all(d.tensor_cores for d in gpus) and not trains_backbone:  # a backbone's own optimizer: no loss scale
            names.append(MIXED_F16)
        if min(d.compute_capability or (0, 0) for d in gpus) >= (8, 0):
            names.append(MIXED_BF16)
        return names
    if any(d.features & {"avx512_bf16", "amx_bf16"} for d in devices if d.kind == "CPU"):
        return [FLOAT32, MIXED_BF16, ONEDNN_BF16]
    return [FLOAT32]  # no native bfloat16: emulated, slower than float32 (nothing to measure)


class TrialFailed(RuntimeError):
    """float32, the reference, could not be measured: there is nothing to compare with."""


@dataclass
class Measured:
    examples_per_sec: float | None = None
    loss: float | None = None
    seconds: float = 0.0
    why: str | None = None  # not measured, or failed: why


@dataclass
class Trial:
    """report.json hardware.precision_trial, and what the cache keeps."""

    candidates: dict[str, float | None] = field(default_factory=dict)  # name -> examples/s
    rejected: dict[str, str] = field(default_factory=dict)             # name -> why
    chosen: str = FLOAT32
    seconds: float = 0.0
    steps: int = 0                     # timed steps per candidate
    losses: dict[str, float | None] = field(default_factory=dict)
    cached: bool = False
    budget_s: float = 0.0

    def record(self) -> dict:
        return {"candidates": self.candidates, "rejected": self.rejected, "chosen": self.chosen,
                "seconds": round(self.seconds, 3), "cached": self.cached, "steps": self.steps,
                "losses": self.losses, "budget_s": round(self.budget_s, 1)}

    @classmethod
    def from_record(cls, record: dict) -> "Trial":
        return cls(candidates=dict(record["candidates"]), rejected=dict(record["rejected"]), chosen=record["chosen"],
                   seconds=record["seconds"], steps=record.get("steps", 0), losses=dict(record.get("losses", {})),
                   cached=True, budget_s=record.get("budget_s", 0.0))

    @property
    def incomplete(self) -> bool:
        """A candidate was left out for the budget: a longer run may afford to measure it."""
        return any(why.startswith(OVER_BUDGET) for why in self.rejected.values())

    def speedup(self, name: str) -> float | None:
        base, rate = self.candidates.get(FLOAT32), self.candidates.get(name)
        return rate / base if base and rate else None

    def table(self) -> str:
        """The measured table, for the console."""
        rows = []
        for name, rate in self.candidates.items():
            ratio = self.speedup(name)
            said = (f"{rate:>10,.0f} ex/s  {ratio:4.2f}x" if rate else f"{'-':>10}      ") + \
                   (f"  loss {self.losses[name]:.4f}" if self.losses.get(name) is not None else "")
            note = ("  <- chosen" if name == self.chosen else
                    f"  ({self.rejected[name]})" if name in self.rejected else "")
            rows.append(f"  {name:<15}{said}{note}")
        return "\n".join(rows)


def decide(measured: dict[str, Measured]) -> tuple[str, dict[str, str]]:
    """(the chosen candidate, {rejected: why}) from the measurements; float32 is the reference."""
    ref = measured[FLOAT32]
    rejected = {}
    rel, absolute = LOSS_TOLERANCE
    for name, m in measured.items():
        if name == FLOAT32:
            continue
        if m.why is not None:
            rejected[name] = m.why
        elif m.loss is None or not math.isfinite(m.loss):
            rejected[name] = "the loss went non-finite in the trial steps"
        elif ref.loss is not None and m.loss - ref.loss > rel * abs(ref.loss) + absolute:
            rejected[name] = (f"its mean trial loss {m.loss:.4f} is worse than float32's {ref.loss:.4f} "
                              f"(by more than {rel:.0%} + {absolute:g})" + _faster(name, m, ref))
        elif name == ONEDNN_BF16 and ref.loss is not None and m.loss == ref.loss:
            rejected[name] = ("the math mode changed none of this model's arithmetic (its loss is float32's to the "
                              "last bit), so any speed difference is between the two processes")
        elif not m.examples_per_sec or m.examples_per_sec <= _noise(name) * ref.examples_per_sec:
            rejected[name] = (f"not faster than float32 by more than the measurement's noise "
                              f"({(m.examples_per_sec or 0) / ref.examples_per_sec:.2f}x, needs > {_noise(name):.2f}x)")
    fastest = max((n for n in measured if n not in rejected), key=lambda n: measured[n].examples_per_sec or 0)
    return fastest, rejected


def _faster(name: str, m: Measured, ref: Measured) -> str:
    """What a candidate rejected on its loss would have gained, and how to take it anyway (a few
    trial steps are a short look)."""
    if name not in (MIXED_BF16, MIXED_F16) or not m.examples_per_sec or not ref.examples_per_sec:
        return ""
    ratio = m.examples_per_sec / ref.examples_per_sec
    if ratio <= NOISE:
        return ""
    return f"; it trained {ratio:.2f}x float32's examples/s: hardware.precision={POLICY[name]} uses it anyway"


def _noise(name: str) -> float:
    return NOISE_OTHER_PROCESS if name == ONEDNN_BF16 else NOISE


def budget(planned_train_s: float, time_budget_s: float | None = None) -> float:
    """Seconds the trial may take: the larger of MIN_BUDGET_S and BUDGET_SHARE of the planned
    training, which a time budget bounds; and never more than TIME_BUDGET_SHARE of that budget."""
    if time_budget_s is None:
        return max(MIN_BUDGET_S, BUDGET_SHARE * planned_train_s)
    return min(max(MIN_BUDGET_S, BUDGET_SHARE * min(planned_train_s, time_budget_s)), TIME_BUDGET_SHARE * time_budget_s)


def affordable(time_budget_s: float | None) -> bool:
    """Whether a run with this trainer.time_budget (None: none) can pay for a trial."""
    return time_budget_s is None or TIME_BUDGET_SHARE * time_budget_s >= MIN_BUDGET_S


@dataclass
class TrialInputs:
    """What every candidate trains on: the batches (host arrays, one row per batch), how to make
    a fresh task under a policy, the strategy, and what a second process needs to rebuild the model."""

    images: np.ndarray
    labels: np.ndarray
    build: Callable[[str], object]       # policy -> safetrain.train.task.Task, from the run's seed
    strategy: object
    planned_steps: int                   # the run's training steps (for the budget)
    worker_spec: dict | None = None      # JSON for safetrain/trial_worker.py; None: no second process
    time_budget_s: float | None = None   # trainer.time_budget, which the trial's seconds come out of

    def batches(self):
        ds = tf.data.Dataset.from_tensor_slices((self.images, self.labels)).repeat()
        return iter(self.strategy.experimental_distribute_dataset(ds))


def run_trial(names: list[str], inputs: TrialInputs) -> Trial:
    """Measure `names` (float32 first), decide, and put the global policy back as it was.

    The in-process candidates are built and traced first, then timed in ROUNDS alternating rounds
    (the order reversed each round; each candidate's best round counts): a VM's speed drifts and
    jumps, and alternation keeps that from deciding. The worker's candidate is timed last."""
    started = time.perf_counter()
    saved_uids = _name_counters()
    previous = keras.mixed_precision.global_policy()
    measured: dict[str, Measured] = {}
    limit = MIN_BUDGET_S
    try:
        ready = {FLOAT32: prepare(FLOAT32, inputs)}
        reference = ready[FLOAT32]
        if isinstance(reference, Measured):  # the reference itself failed: nothing to compare with
            raise TrialFailed(reference.why)
        steps = int(min(40, max(3, TIMED_SECONDS / max(reference.step_s, 1e-6))))
        limit = budget(inputs.planned_steps * reference.step_s, inputs.time_budget_s)
        rounds_s = ROUNDS * steps * reference.step_s  # one candidate's timed calls, at float32's speed
        committed = time.perf_counter() - started + rounds_s
        for name in (n for n in names[1:] if n != ONEDNN_BF16):
            cost = reference.seconds + rounds_s
            if committed + cost > limit:
                measured[name] = Measured(why=f"{OVER_BUDGET} ({limit:.0f} s)")
                continue
            ready[name] = prepare(name, inputs)
            committed += cost
        timed = {n: r for n, r in ready.items() if isinstance(r, _Ready)}
        measured.update({n: r for n, r in ready.items() if isinstance(r, Measured)})
        measured.update(timed_rounds(timed, steps))
        if ONEDNN_BF16 in names:
            spent = time.perf_counter() - started
            if spent + WORKER_START_S + 2 * reference.seconds + rounds_s > limit:
                measured[ONEDNN_BF16] = Measured(why=f"{OVER_BUDGET} ({limit:.0f} s): it needs its own process")
            else:
                measured[ONEDNN_BF16] = _measure_in_worker(inputs, steps, limit - spent)
    finally:
        keras.mixed_precision.set_global_policy(previous)
        _restore_name_counters(saved_uids)
    ordered = {n: measured[n] for n in names if n in measured}
    chosen, rejected = decide(ordered)
    return Trial(candidates={n: _round(m.examples_per_sec) for n, m in ordered.items()}, rejected=rejected,
                 chosen=chosen, seconds=time.perf_counter() - started, steps=steps, budget_s=limit,
                 losses={n: (round(m.loss, 5) if m.loss is not None else None) for n, m in ordered.items()})


def _round(value: float | None) -> float | None:
    return round(value, 1) if value else None


@dataclass
class _Ready:
    """A candidate built, traced and warmed up, ready to be timed."""

    train_steps: Callable
    iterator: object
    step_s: float        # one warm step's time (for choosing the timed steps)
    seconds: float       # what building, tracing and warming cost


def prepare(name: str, inputs: TrialInputs) -> "_Ready | Measured":
    began = time.perf_counter()
    keras.mixed_precision.set_global_policy(POLICY[name])
    try:
        task = inputs.build(POLICY[name])
        fn = task.steps(time_input=False, guard_updates=False).train_steps
        iterator = inputs.batches()
        fn(iterator, tf.constant(1))["loss_sum"].numpy()  # traces
        t0 = time.perf_counter()
        fn(iterator, tf.constant(WARM_STEPS))["loss_sum"].numpy()
        step_s = (time.perf_counter() - t0) / WARM_STEPS
    except (tf.errors.OpError, ValueError, TypeError) as err:  # a kernel this policy lacks on this device
        return Measured(why=f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}",
                        seconds=time.perf_counter() - began)
    return _Ready(fn, iterator, step_s, time.perf_counter() - began)


def timed_rounds(ready: dict[str, _Ready], steps: int) -> dict[str, Measured]:
    """ROUNDS alternating rounds of one timed call per candidate; the loss is the first round's
    (every candidate has then trained the same steps on the same batches)."""
    best: dict[str, Measured] = {}
    order = list(ready)
    for r in range(ROUNDS):
        for name in (order if r % 2 == 0 else order[::-1]):
            m = timed_call(ready[name].train_steps, ready[name].iterator, steps)
            if name not in best:
                best[name] = m
            elif m.examples_per_sec and (best[name].examples_per_sec or 0) < m.examples_per_sec:
                best[name].examples_per_sec = m.examples_per_sec
    for name, m in best.items():
        m.seconds = ready[name].seconds
    return best


def timed_call(train_steps, iterator, steps: int) -> Measured:
    """`steps` train steps in one call: examples/s and the mean loss (NaN when a step was not finite)."""
    t0 = time.perf_counter()
    out = train_steps(iterator, tf.constant(steps))
    loss_sum, count, done = float(out["loss_sum"]), int(out["count"]), int(out["steps"])
    elapsed = time.perf_counter() - t0
    if not bool(out["finite"]) or done < steps:
        return Measured(loss=float("nan"))
    return Measured(examples_per_sec=count / elapsed, loss=loss_sum / count)


def _measure_in_worker(inputs: TrialInputs, steps: int, seconds_left: float) -> Measured:
    """oneDNN's bfloat16 math in a second process (the mode is read when TensorFlow starts)."""
    if inputs.worker_spec is None:
        return Measured(why="not measured: needs a second process, which this model cannot be rebuilt in "
                            "(a pretrained backbone, or a multi-device strategy)")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="safetrain-trial-") as scratch:
        folder = Path(scratch)
        np.savez(folder / "batches.npz", images=inputs.images, labels=inputs.labels)
        (folder / "spec.json").write_text(json.dumps({**inputs.worker_spec, "steps": steps}))
        env = {**os.environ, ONEDNN_MATH_ENV: "BF16"}
        try:
            proc = subprocess.run([sys.executable, "-m", "safetrain.trial_worker", str(folder)], env=env,
                                  capture_output=True, text=True, timeout=max(5.0, seconds_left))
        except subprocess.TimeoutExpired:
            return Measured(why=f"not measured: the second process took over {seconds_left:.0f} s",
                            seconds=time.perf_counter() - began)
        result = folder / "result.json"
        if proc.returncode != 0 or not result.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]
            return Measured(why=f"failed in its process: {last}", seconds=time.perf_counter() - began)
        found = json.loads(result.read_text())
    return Measured(examples_per_sec=found["examples_per_sec"], loss=found["loss"], seconds=time.perf_counter() - began)


def _name_counters():
    """Keras numbers unnamed objects (`seed_generator_3`) from a process-wide counter; the trial's
    models would shift the run's names, and so its weights' digest. No public API saves and
    restores it, so this reads Keras' own global state (keras.src.backend.common.global_state)."""
    from keras.src.backend.common import global_state

    return copy.deepcopy(global_state.get_global_attribute("object_name_uids"))


def _restore_name_counters(saved) -> None:
    from keras.src.backend.common import global_state

    global_state.set_global_attribute("object_name_uids", saved)
