"""Throughput: safetrain's custom loop vs Keras `model.fit`, same model, data and global batch.

    python scripts/bench.py                      # prints both rates and the ratio, writes bench.json
    python scripts/bench.py --steps 300 --repeats 7 --batch-size 256

One process, interleaved short repeats (fit then safetrain, then safetrain then fit, ...) after a
warm-up of each,
so machine noise (this VM's hypervisor steals up to 30% of CPU, and its speed jumps between two
levels) hits both alike. Two measures: the steady-state step rate (median over every step after
the first few of each run: time between consecutive step ends, fit via a batch-end callback,
safetrain via its own step timer) and the wall clock of whole runs (set-up and the final
checkpoint included). safetrain runs with every safety check on: NaN guard, per-step metrics,
TensorBoard scalars, checkpoint at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetrain.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402

from models.build import build_model  # noqa: E402
from models.presets import preset_layers  # noqa: E402
from models.shapes import infer  # noqa: E402
from models.parse import parse_layers  # noqa: E402
from pipelines.build import build_datasets  # noqa: E402
from safetrain.actions import LogScalars, SaveCheckpoints  # noqa: E402
from safetrain.checkpoints import Checkpoints  # noqa: E402
from safetrain.config.schema import DatasetConfig, ResizePolicy, TrainerConfig  # noqa: E402
from safetrain.loop import TrainLoop  # noqa: E402
from safetrain.optimizers import LOSSES, OPTIMIZERS  # noqa: E402
from safetrain.progress import Progress  # noqa: E402
from safetrain.record import RunRecord  # noqa: E402
from safetrain.steps import Steps  # noqa: E402
from safetrain.throughput import StepTimer  # noqa: E402

CNN = preset_layers("cnn_small")


SKIP = 4  # first steps of each run left out of the medians (safetrain's loop: its probe's 3 + 1)


class _NullStream:
    def write(self, _: str) -> None: ...
    def flush(self) -> None: ...
    def isatty(self) -> bool: return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    data = build_datasets(DatasetConfig(resize=ResizePolicy.bilinear, data_dir=args.data_dir),
                          args.batch_size, args.batch_size, seed=0)
    stream = data.train_epoch(1).repeat()
    plan = infer(parse_layers(CNN), data.spec.shape, data.source.num_classes)
    work = Path(tempfile.mkdtemp(prefix="safetrain-bench-"))

    fit_model = build_model(plan, seed=0)
    fit_model.compile(optimizer=OPTIMIZERS.get("adam")(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], jit_compile=False)

    st_model = build_model(plan, seed=0)
    st_opt = OPTIMIZERS.get("adam")(1e-3)
    st_opt.build(st_model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    spec = strategy.experimental_distribute_dataset(data.train_epoch(1)).element_spec
    steps = Steps(strategy=strategy, model=st_model, optimizer=st_opt, loss_fn=LOSSES.get(
        "sparse_categorical_crossentropy")(), eval_spec=spec)
    record = RunRecord(work)
    record.open_tensorboard()

    fit_step_s: list[float] = []
    st_step_s: list[float] = []

    class StepClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    def run_fit(n: int) -> float:
        clock = StepClock()
        start = time.perf_counter()
        fit_model.fit(stream, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[clock])
        elapsed = time.perf_counter() - start
        fit_step_s.extend(b - a for a, b in list(zip(clock.ends, clock.ends[1:]))[SKIP:])
        return elapsed

    def run_safetrain(n: int, repeat: int) -> float:
        cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, log_every_steps=10,
                            checkpoint_every_steps=10**9)
        checkpoints = Checkpoints(work / f"ckpt{repeat}", st_model, st_opt)
        progress, timer = Progress(stream=_NullStream(), is_tty=False), StepTimer(warmup_steps=SKIP)
        loop = TrainLoop(steps=steps, train_batches=lambda epoch, skip: strategy.experimental_distribute_dataset(
                             stream.take(n)), distribute=strategy.experimental_distribute_dataset, cfg=cfg,
                         record=record, checkpoints=checkpoints, steps_per_epoch=n, timer=timer, progress=progress,
                         actions=[LogScalars(cfg.log_every_steps, record, progress, timer,
                                             learning_rate=lambda: float(st_opt.learning_rate.numpy())),
                                  SaveCheckpoints(checkpoints, cfg.checkpoint_every_steps, None, time.perf_counter)])
        start = time.perf_counter()
        result = loop.run()
        elapsed = time.perf_counter() - start
        if result.steps != n:
            raise RuntimeError(f"safetrain ran {result.steps} steps, expected {n}")
        st_step_s.extend(loop.timer.totals)  # already without its first SKIP steps
        return elapsed

    warm = max(10, args.steps // 10)
    run_fit(warm)
    run_safetrain(warm, -1)
    fit_step_s.clear()
    st_step_s.clear()

    fit_rates, st_rates, ratios = [], [], []
    for r in range(args.repeats):
        if r % 2:  # alternate the order so neither always runs second
            st_s = run_safetrain(args.steps, r)
            fit_s = run_fit(args.steps)
        else:
            fit_s = run_fit(args.steps)
            st_s = run_safetrain(args.steps, r)
        examples = args.steps * args.batch_size
        fit_rates.append(examples / fit_s)
        st_rates.append(examples / st_s)
        ratios.append(fit_s / st_s)
        print(f"repeat {r + 1}/{args.repeats}: fit {fit_rates[-1]:8,.0f} ex/s   "
              f"safetrain {st_rates[-1]:8,.0f} ex/s   ratio {ratios[-1]:.3f}", flush=True)
    record.board.close()
    fit_steady = args.batch_size / statistics.median(fit_step_s)
    st_steady = args.batch_size / statistics.median(st_step_s)

    result = {
        "model": "cnn_small (conv32-pool-conv64-pool-dense128-dropout, 421,642 params)",
        "data": f"embedded digits upsampled to 28x28x1, cached; {data.counts['train']} train examples",
        "batch_size": args.batch_size, "steps_per_repeat": args.steps, "repeats": args.repeats,
        "precision": keras.mixed_precision.global_policy().name,
        "devices": [d.name for d in tf.config.list_physical_devices()],
        "steady_state": {"fit_examples_per_sec": round(fit_steady, 1),
                         "safetrain_examples_per_sec": round(st_steady, 1),
                         "ratio_safetrain_over_fit": round(st_steady / fit_steady, 3),
                         "steps_measured": {"fit": len(fit_step_s), "safetrain": len(st_step_s)}},
        "wall_clock": {"fit_examples_per_sec_median": round(statistics.median(fit_rates), 1),
                       "safetrain_examples_per_sec_median": round(statistics.median(st_rates), 1),
                       "ratio_safetrain_over_fit_median": round(statistics.median(ratios), 3),
                       "ratios": [round(x, 3) for x in ratios]},
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        # One trace for all runs: new iterators each epoch must not retrace the train step.
        "safetrain_train_step_traces": steps.train.experimental_get_tracing_count(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ss, wc = result["steady_state"], result["wall_clock"]
    print(f"\nsteady state (median step):  fit {ss['fit_examples_per_sec']:,.0f} ex/s  "
          f"safetrain {ss['safetrain_examples_per_sec']:,.0f} ex/s  ratio {ss['ratio_safetrain_over_fit']:.3f}")
    print(f"wall clock (median of {args.repeats} runs): fit {wc['fit_examples_per_sec_median']:,.0f} ex/s  "
          f"safetrain {wc['safetrain_examples_per_sec_median']:,.0f} ex/s  "
          f"ratio {wc['ratio_safetrain_over_fit_median']:.3f}  -> {args.out}")


if __name__ == "__main__":
    main()
