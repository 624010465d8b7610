"""What batch normalization costs a training step: Keras' layer against safetrain's fused one.

    python scripts/bench_fused_norm.py                       # the Fashion-MNIST recipe's model
    python scripts/bench_fused_norm.py --experiment scaffold_shapes --rounds 7

Builds one experiment's model three ways from the same seed — with `FusedBatchNorm` (what
safetrain trains), with Keras' own `BatchNormalization` (`models.norm.portable` of the same build)
and with no batch norm at all (the floor) — and times a plain `tf.function` training step
(forward, gradient, AdamW update) on one fixed batch, the three interleaved round after round (a
cloud VM's speed jumps between levels; neighbours share it). Prints the median step per variant and
the ratios, and the largest difference between the two normalizations' first-step losses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from safetrain.core.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from safetrain.models.build import build_model  # noqa: E402
from safetrain.models.norm import portable  # noqa: E402
from safetrain.models.parse import parse_layers  # noqa: E402
from safetrain.models.shapes import infer  # noqa: E402
from bench_backbones import train_step  # noqa: E402
from bench_budget import cpu_model  # noqa: E402


def experiment_layers(name: str) -> tuple[list[dict], int]:
    config = OmegaConf.load(ROOT / "configs" / "experiment" / f"{name}.yaml")
    layers = OmegaConf.to_container(config.model.layers)
    batch = int(OmegaConf.select(config, "trainer.batch_size", default=128))
    return layers, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fashion_mnist_recipe", help="configs/experiment/NAME.yaml")
    parser.add_argument("--size", type=int, nargs=3, default=[28, 28, 1], metavar=("H", "W", "C"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    args = parser.parse_args()

    layers, batch = experiment_layers(args.experiment)
    shape = tuple(args.size)

    def build(specs):   # the same initial weights and dropout seeds each time
        keras.utils.set_random_seed(0)
        return build_model(infer(parse_layers(specs), shape, args.classes), seed=0)

    variants = {"fused": build(layers), "keras": portable(build(layers)),
                "none": build([s for s in layers if s["type"] != "batch_norm"])}
    x = tf.random.stateless_uniform((batch, *shape), seed=(0, 1))
    y = tf.random.stateless_uniform((batch,), seed=(0, 2), maxval=args.classes, dtype=tf.int32)
    steps = {name: train_step(model, keras.optimizers.AdamW(1e-3)) for name, model in variants.items()}
    first = {name: float(step(x, y)) for name, step in steps.items()}  # trace + the first update
    for step in steps.values():
        for _ in range(3):
            step(x, y)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            began = time.perf_counter()
            for _ in range(args.steps):
                value = step(x, y)
            value.numpy()
            times[name].append((time.perf_counter() - began) / args.steps * 1000)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.experiment}, batch {batch}, {shape}, float32, {cpu_model()}, {args.rounds} rounds x {args.steps} steps")
    for name in steps:
        print(f"  {name:6s} batch norm: {median[name]:7.1f} ms a step (rounds {min(times[name]):.1f}-{max(times[name]):.1f})")
    print(f"  fused / keras = {median['fused'] / median['keras']:.3f}   "
          f"(batch norm's share of a step: keras {1 - median['none'] / median['keras']:.0%}, "
          f"fused {1 - median['none'] / median['fused']:.0%})")
    print(f"  first-step loss: fused {first['fused']:.6f}, keras {first['keras']:.6f}")


if __name__ == "__main__":
    main()
