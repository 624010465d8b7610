"""What would `tf.debugging.enable_check_numerics` cost if it were on in the hot path?

    python scripts/bench_check_numerics.py                  # cnn_small on the digits, batch 128
    python scripts/bench_check_numerics.py --steps 100 --repeats 5

safetrain keeps it off while training and turns it on only to replay the steps up to a NaN/Inf
stop (safetrain/diagnose/replay.py). This measures why: the same train step traced twice, once plain and
once instrumented (a CheckNumerics op on every float output, forward and backward), timed in
alternating repeats in one process. Prints the median step times and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetrain.core.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402

from safetrain.models.presets import preset_layers  # noqa: E402
from safetrain.models.shapes import infer  # noqa: E402
from safetrain.models.parse import parse_layers  # noqa: E402
from safetrain.pipelines.build import build_datasets  # noqa: E402
from safetrain.config.schema import DatasetConfig, OptimizerConfig, ResizePolicy, TrainerConfig  # noqa: E402
from safetrain.train.task import build_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    data = build_datasets(DatasetConfig(resize=ResizePolicy.bilinear, data_dir=args.data_dir),
                          args.batch_size, args.batch_size, seed=0)
    stream = iter(data.train_epoch(1).repeat())
    plan = infer(parse_layers(preset_layers("cnn_small")), data.spec.shape, data.source.num_classes)
    task = build_task(plan, optimizer=OptimizerConfig(), trainer=TrainerConfig(), strategy=tf.distribute.get_strategy(),
                      steps_per_epoch=args.steps)
    make = task.steps

    plain = make()
    plain.train(stream)  # traced without checks
    tf.debugging.enable_check_numerics()
    checked = make()
    checked.train(stream)  # traced with a CheckNumerics op on every float output
    tf.debugging.disable_check_numerics()  # the graph keeps its checks; eager reads are unchecked

    times: dict[str, list[float]] = {"plain": [], "check_numerics": []}

    def run(name: str, steps) -> None:
        for _ in range(args.steps):
            start = time.perf_counter()
            out = steps.train(stream)
            float(out["loss_sum"])  # wait for the step
            times[name].append(time.perf_counter() - start)

    for repeat in range(args.repeats):
        order = [("plain", plain), ("check_numerics", checked)]
        for name, steps in order if repeat % 2 == 0 else reversed(order):
            run(name, steps)

    plain_ms = 1000 * statistics.median(times["plain"])
    checked_ms = 1000 * statistics.median(times["check_numerics"])
    print(f"cnn_small, batch {args.batch_size}, {args.repeats} x {args.steps} steps each, interleaved")
    print(f"plain step          {plain_ms:8.2f} ms (median)")
    print(f"check_numerics step {checked_ms:8.2f} ms (median)")
    print(f"check_numerics / plain = {checked_ms / plain_ms:.2f}x")


if __name__ == "__main__":
    main()
