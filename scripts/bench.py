"""Throughput: safetrain vs Keras `model.fit`, with and without its checks, against the CPU's peak.

    python scripts/bench.py                         # both models, prints the ratios, writes bench.json
    python scripts/bench.py --models cnn_small_28 --repeats 7

For each model — cnn_small at 28x28 and cnn_residual at 96x96 (embedded digits, upsampled) — in
one process, one short run of each side after another, the order rotated every repeat (a cloud VM's
speed jumps between two levels; neighbours share it):
  (a) `auto_vs_fit`: safetrain as a user gets it (hardware.precision=auto, steps_per_loop=auto,
      every check on) over `fit` with Keras' defaults (float32; jit_compile "auto", which is off
      on a CPU; one step per call). Goal >= 1.5.
  (b) `equal_precision_vs_fit`: the same safetrain over `fit` at the precision auto chose.
      Goal >= 1.0.
  (c) `checks_overhead`: the same loop with its checks off (no NaN/Inf check, no input timing, no
      gradient probe, no TensorBoard, no checkpoints) over it with them on, minus 1. Goal <= 0.03.
  (d) `flops_fraction_of_peak`: safetrain's training FLOP/s (3x the inferred forward FLOPs per
      example) over this script's own measure of one big Conv2D's FLOP/s at the run's precision.
      Goal >= 0.35.
The four numbers compare steady-state rates — a run's median step (safetrain: over the calls
after its timer's warm-up, i.e. after the probe's single steps and the first traced call; fit:
over the steps after the first 4 of each run) — as ratios within each repeat, then the median
over repeats; the peak is measured again after each repeat. Whole runs of a few steps also pay fixed costs
per run — safetrain's checkpoints at the start and the end, its three probing steps, fit's epoch
set-up — which a real run of thousands of steps spreads thin: those ratios are printed and kept
in bench.json (`whole_run_ratios_median`) beside them. Every side starts from the same weights
and sees the same batches; `accuracy_after_same_steps` is each side's test accuracy after all its
steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetrain.core.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from safetrain.models.build import build_model  # noqa: E402
from safetrain.models.parse import parse_layers  # noqa: E402
from safetrain.models.presets import preset_layers  # noqa: E402
from safetrain.models.shapes import infer  # noqa: E402
from safetrain.pipelines.build import build_datasets  # noqa: E402
from safetrain.train.actions import GradientProbe, LogScalars, SaveCheckpoints  # noqa: E402
from safetrain.train.checkpoints import Checkpoints  # noqa: E402
from safetrain.config.schema import (DatasetConfig, ImageConfig, OptimizerConfig, Precision, ResizePolicy,  # noqa: E402
                                     TrainerConfig)
from safetrain.train import precision_trial  # noqa: E402
from safetrain.train.hardware import choose_precision, describe_cpu, detect_devices, read_cpuinfo  # noqa: E402
from safetrain.train.loop import TrainLoop  # noqa: E402
from safetrain.train.optimizers import OPTIMIZERS  # noqa: E402
from safetrain.train.task import build_task  # noqa: E402
from safetrain.train.progress import Progress  # noqa: E402
from safetrain.record.run_record import RunRecord  # noqa: E402
from safetrain.core.run_state import Position  # noqa: E402
from safetrain.train.throughput import StepTimer  # noqa: E402

GOALS = {"auto_vs_fit": (">=", 1.5), "equal_precision_vs_fit": (">=", 1.0), "checks_overhead": ("<=", 0.03),
         "flops_fraction_of_peak": (">=", 0.35)}


@dataclass(frozen=True)
class Model:
    name: str
    preset: str
    size: int
    batch_size: int
    steps: int   # per run


MODELS = {"cnn_small_28": Model("cnn_small_28", "cnn_small", 28, 128, 60),
          "cnn_residual_96": Model("cnn_residual_96", "cnn_residual", 96, 16, 8)}
SKIP = 4  # first steps of each fit run left out of its steady state (safetrain: its timer's warm-up)


class _NullStream:
    def write(self, _: str) -> None: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: return False


def conv_peak(dtype: str, seconds: float = 3.0) -> float:
    """FLOP/s of a large 3x3 Conv2D forward (batch 32, 56x56, 64 -> 64 channels) in `dtype`, ten
    chained per call (each on the previous one's output, so grappler cannot fold them into one),
    median over calls: what this CPU's convolution kernels reach at best."""
    x = tf.cast(tf.random.normal((32, 56, 56, 64)), dtype)
    w = tf.cast(tf.random.normal((3, 3, 64, 64), stddev=1 / 24), dtype)
    flops = 2 * 32 * 56 * 56 * 9 * 64 * 64 * 10

    @tf.function
    def ten(x):
        for _ in range(10):
            x = tf.nn.conv2d(x, w, 1, "SAME")
        return tf.reduce_sum(tf.cast(x, tf.float32))

    ten(x).numpy()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        ten(x).numpy()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times)


class Bench:
    """The four sides for one model: fit (Keras defaults), fit at auto's precision, safetrain auto,
    and safetrain with its checks off — each its own model, built from the same seed."""

    def __init__(self, spec: Model, policy: str, work: Path, data_dir: str | None) -> None:
        self.spec, self.policy, self.work = spec, policy, work
        cfg = DatasetConfig(image=ImageConfig(height=spec.size, width=spec.size), resize=ResizePolicy.bilinear,
                            data_dir=data_dir)
        keras.utils.set_random_seed(0)
        self.data = build_datasets(cfg, spec.batch_size, spec.batch_size, seed=0)
        self.stream = self.data.train_epoch(1).repeat()
        self.plan = infer(parse_layers(preset_layers(spec.preset)), self.data.spec.shape,
                          self.data.source.num_classes)
        self.fit_default = self._fit_model("float32")
        self.fit_equal = self._fit_model(policy) if policy != "float32" else None
        self.on = self._safetrain(checks=True)
        self.off = self._safetrain(checks=False)
        (work / spec.name).mkdir(parents=True, exist_ok=True)
        self.record = RunRecord(work / spec.name)
        self.record.open_tensorboard()
        sides = ("fit", "fit_equal", "safetrain", "safetrain_off")
        self.rates: dict[str, list[float]] = {k: [] for k in sides}   # whole runs
        self.steady: dict[str, float] = {}  # the latest run's median steady-state step (call) rate, per side
        self.steps_per_loop: int | None = None
        self.runs = 0

    def _fit_model(self, policy: str):
        keras.mixed_precision.set_global_policy(policy)
        model = build_model(self.plan, seed=0)
        model.compile(optimizer=OPTIMIZERS.get("adam")(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        keras.mixed_precision.set_global_policy("float32")
        return model

    def _safetrain(self, checks: bool):
        keras.mixed_precision.set_global_policy(self.policy)
        strategy = tf.distribute.get_strategy()
        task = build_task(self.plan, optimizer=OptimizerConfig(), trainer=TrainerConfig(), strategy=strategy,
                          steps_per_epoch=self.spec.steps, policy=self.policy)  # adam 1e-3, as fit's
        keras.mixed_precision.set_global_policy("float32")
        spec = strategy.experimental_distribute_dataset(self.data.train_epoch(1)).element_spec
        steps = task.steps(eval_spec=spec, time_input=checks, check_finite=checks)
        return task.model, task.optimizer, steps

    def run_fit(self, equal: bool) -> float:
        model = self.fit_equal if equal else self.fit_default
        clock = _StepClock()
        start = time.perf_counter()
        model.fit(self.stream, steps_per_epoch=self.spec.steps, epochs=1, verbose=0, callbacks=[clock])
        elapsed = time.perf_counter() - start
        intervals = [b - a for a, b in zip(clock.ends, clock.ends[1:])][SKIP:]
        self.steady["fit_equal" if equal else "fit"] = statistics.median(self.spec.batch_size / t for t in intervals)
        return self.spec.steps * self.spec.batch_size / elapsed

    def run_safetrain(self, checks: bool) -> float:
        model, optimizer, steps = self.on if checks else self.off
        n, self.runs = self.spec.steps, self.runs + 1
        cfg = TrainerConfig(epochs=1, batch_size=self.spec.batch_size, log_every_steps=10,
                            checkpoint_every_steps=10**6)
        strategy = tf.distribute.get_strategy()
        progress, timer = Progress(stream=_NullStream(), is_tty=False), StepTimer(warmup_steps=4 if checks else 1)
        checkpoints = Checkpoints(self.work / self.spec.name / f"ckpt{self.runs}", model, optimizer)
        probe = GradientProbe(steps.variable_paths, lambda paths, step: None) if checks else None
        loop = TrainLoop(steps=steps, train_batches=lambda epoch, skip: strategy.experimental_distribute_dataset(
                             self.stream.take(n)), distribute=strategy.experimental_distribute_dataset, cfg=cfg,
                         record=self.record, checkpoints=checkpoints if checks else _NoCheckpoints(),
                         steps_per_epoch=n, timer=timer, progress=progress, probe=probe,
                         steps_per_loop=None if checks else self.steps_per_loop or 1)
        if checks:
            loop.actions = [probe, LogScalars(cfg.log_every_steps, self.record, progress, timer,
                                              learning_rate=lambda: float(optimizer.learning_rate.numpy())),
                            SaveCheckpoints(checkpoints, cfg.checkpoint_every_steps, None, time.perf_counter)]
        start = time.perf_counter()
        result = loop.run()
        elapsed = time.perf_counter() - start
        if result.steps != n:
            raise RuntimeError(f"safetrain ran {result.steps} steps, expected {n}")
        if checks:
            self.steps_per_loop = result.steps_per_loop
        self.steady["safetrain" if checks else "safetrain_off"] = statistics.median(loop.timer.rates)
        return n * self.spec.batch_size / elapsed

    def sides(self):
        sides = [("fit", lambda: self.run_fit(False)), ("safetrain", lambda: self.run_safetrain(True)),
                 ("safetrain_off", lambda: self.run_safetrain(False))]
        if self.fit_equal is not None:
            sides.append(("fit_equal", lambda: self.run_fit(True)))
        return sides

    def accuracy(self) -> dict[str, float]:
        def test(model):
            correct = total = 0
            for images, labels in self.data.test:
                predicted = np.argmax(model(images, training=False), axis=-1)
                correct += int((predicted == labels.numpy()).sum())
                total += len(predicted)
            return round(correct / total, 4)
        out = {"fit": test(self.fit_default), "safetrain": test(self.on[0]), "safetrain_off": test(self.off[0])}
        if self.fit_equal is not None:
            out["fit_equal"] = test(self.fit_equal)
        return out


class _StepClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


class _NoCheckpoints:
    warnings: list[str] = []

    def restore(self):
        return Position()

    def save(self, at) -> None:
        return None


def auto_precision(spec: Model, devices, data_dir: str | None) -> tuple[str, str, dict | None]:
    """What hardware.precision=auto trains this model in: the precision trial (as a run of 10,000
    steps would afford it; a run applies oneDNN's math mode from its next start, which this one
    process cannot, so a win for it is reported and the best in-process candidate used)."""
    names = precision_trial.candidates(devices)
    if len(names) < 2:
        return (*choose_precision(devices, Precision.auto), None)
    cfg = DatasetConfig(image=ImageConfig(height=spec.size, width=spec.size), resize=ResizePolicy.bilinear,
                        data_dir=data_dir)
    data = build_datasets(cfg, spec.batch_size, spec.batch_size, seed=0)
    plan = infer(parse_layers(preset_layers(spec.preset)), data.spec.shape, data.source.num_classes)
    batches = list(data.train_plain(1).take(8))
    strategy = tf.distribute.get_strategy()

    def build(policy: str):
        return build_task(plan, optimizer=OptimizerConfig(), trainer=TrainerConfig(), strategy=strategy,
                          steps_per_epoch=1, policy=policy)

    worker = {"optimizer": {"name": "adam", "learning_rate": 1e-3, "clipnorm": None, "weight_decay": 0.0},
              "trainer": {"loss": "sparse_categorical_crossentropy", "label_smoothing": 0.0, "seed": 0, "ema": None,
                          "jit_compile": False},
              "layers": preset_layers(spec.preset), "input_shape": list(data.spec.shape),
              "num_classes": data.source.num_classes, "input_dtype": data.spec.dtype}
    trial = precision_trial.run_trial(names, precision_trial.TrialInputs(
        images=np.stack([b[0].numpy() for b in batches]), labels=np.stack([b[1].numpy() for b in batches]),
        build=build, strategy=strategy, planned_steps=10_000, worker_spec=worker))
    in_process = {n: r for n, r in trial.candidates.items()
                  if r and n not in trial.rejected and n != precision_trial.ONEDNN_BF16}
    chosen = trial.chosen if trial.chosen != precision_trial.ONEDNN_BF16 else max(in_process, key=in_process.get)
    print(f"  {spec.name} precision trial ({trial.seconds:.1f} s):\n{trial.table()}", flush=True)
    return precision_trial.POLICY[chosen], f"auto (trial): {chosen}", trial.record()


def measure(spec: Model, args, work: Path) -> dict:
    devices = detect_devices()
    policy, reason, trial = auto_precision(spec, devices, args.data_dir)
    bench = Bench(spec, policy, work, args.data_dir)
    sides = bench.sides()
    peak_dtype = "bfloat16" if policy == "mixed_bfloat16" else "float32"
    for _, run in sides:  # warm-up: tracing, first iterators
        run()
    conv_peak(peak_dtype, seconds=0.5)
    ratios: dict[str, list[float]] = {k: [] for k in GOALS}
    wall: dict[str, list[float]] = {k: [] for k in GOALS if k != "flops_fraction_of_peak"}
    steady_runs: dict[str, list[float]] = {}
    peaks = []
    for r in range(args.repeats):
        # Ratios are taken within a repeat, whose runs sit next to each other in time, then the median
        # over repeats: a cloud VM's speed level (it jumps about 2x) changes between repeats, not inside most.
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        got = {name: run() for name, run in order}
        st = dict(bench.steady)
        peaks.append(conv_peak(peak_dtype, seconds=1.0))
        for name, rate in got.items():
            bench.rates[name].append(rate)
            steady_runs.setdefault(name, []).append(st[name])
        for into, rates in ((ratios, st), (wall, got)):
            into["auto_vs_fit"].append(rates["safetrain"] / rates["fit"])
            into["equal_precision_vs_fit"].append(rates["safetrain"] / rates.get("fit_equal", rates["fit"]))
            into["checks_overhead"].append(rates["safetrain_off"] / rates["safetrain"] - 1)
        ratios["flops_fraction_of_peak"].append(3 * bench.plan.total_flops * st["safetrain"] / peaks[-1])
        print(f"  {spec.name} repeat {r + 1}/{args.repeats}: steady " + "  ".join(
            f"{name} {st[name]:,.0f}" for name in got) + " ex/s; whole runs " + "  ".join(
            f"{name} {rate:,.0f}" for name, rate in got.items()) + f" ex/s; conv peak {peaks[-1] / 1e9:.0f} GFLOP/s",
            flush=True)
    bench.record.board.close()
    result = {k: round(statistics.median(v), 3) for k, v in ratios.items()}
    rate = statistics.median(steady_runs["safetrain"])
    result.update({
        "model": f"{spec.preset} at {spec.size}x{spec.size}x1 ({bench.plan.total_params:,} params, "
                 f"{bench.plan.total_flops / 1e6:.1f} MFLOP forward per example)",
        "batch_size": spec.batch_size, "steps_per_run": spec.steps, "repeats": args.repeats,
        "precision_auto": policy, "precision_reason": reason, "precision_trial": trial,
        "cpu": describe_cpu(read_cpuinfo(), os.cpu_count() or 1, {})[0],
        "steps_per_loop_auto": bench.steps_per_loop,
        "steady_state_examples_per_sec": {k: round(statistics.median(v), 1) for k, v in steady_runs.items()},
        "whole_run_examples_per_sec": {k: round(statistics.median(v), 1) for k, v in bench.rates.items() if v},
        "whole_run_ratios_median": {k: round(statistics.median(v), 3) for k, v in wall.items()},
        "ratios_per_repeat": {k: [round(x, 3) for x in v] for k, v in ratios.items()},
        "accuracy_after_same_steps": bench.accuracy(),
        "train_gflops_per_sec": round(3 * bench.plan.total_flops * rate / 1e9, 1),
        "conv_peak_gflops_per_sec": round(statistics.median(peaks) / 1e9, 1),
    })
    return result


def _verdict(name: str, value: float) -> str:
    op, goal = GOALS[name]
    met = value >= goal if op == ">=" else value <= goal
    return f"{name:24s} {value:7.3f}   goal {op} {goal:<5g} {'met' if met else 'NOT met'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="safetrain-bench-"))
    out = {"devices": [d.describe() for d in detect_devices()],
           "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}, "models": {}}
    for name in args.models:
        print(f"{name}:", flush=True)
        out["models"][name] = measure(MODELS[name], args, work)
        # the four numbers at the top level too, per model
        for key in GOALS:
            out.setdefault(key, {})[name] = out["models"][name][key]
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for name, result in out["models"].items():
        print(f"\n{name} ({result['precision_auto']}, steps_per_loop auto = {result['steps_per_loop_auto']}; "
              f"accuracy after the same steps {result['accuracy_after_same_steps']}):")
        for key in GOALS:
            print("  " + _verdict(key, result[key]))
        print(f"  whole runs of {result['steps_per_run']} steps: {result['whole_run_ratios_median']}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
