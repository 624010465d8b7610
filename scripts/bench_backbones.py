"""Every registered backbone on this machine: params, FLOPs, and float32 vs mixed_bfloat16 speed.

    python scripts/bench_backbones.py                  # all backbones, batch 32, 128x128
    python scripts/bench_backbones.py --only mobilenet_v3_small --steps 5 --repeats 3
    python scripts/bench_backbones.py --learn          # also: a weights=null run on a generated folder

Per backbone (include_top=False, avg pooling, weights=None — no ImageNet weights can be downloaded
here, and speed does not depend on their values): the parameter count of the built model, the
forward FLOPs at 224x224 from TensorFlow's profiler (multiply-add = 2), and forward+backward
examples/s of a training step (the backbone trainable, called with training=False as safetrain
does, a dense head, SGD) in float32 and in mixed_bfloat16, both models built once and timed in
rounds that alternate the order, so the VM's two speed levels hit both alike. The medians and
their ratio are printed and written to bench_backbones.json; `--record` prints the lines for
models/backbones.py.

`--learn` then trains mobilenet_v3_small from scratch (weights=null) on a generated folder of
colour images through the real CLI and prints the first and last epoch's loss and the test
accuracy against chance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetrain.core.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402

from safetrain.models.backbones import BACKBONES  # noqa: E402


def build(name: str, size: int, policy: str):
    keras.mixed_precision.set_global_policy(policy)
    entry = BACKBONES.get(name)
    backbone = getattr(keras.applications, entry.keras_name)(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    inputs = keras.Input((size, size, 3))
    logits = keras.layers.Dense(10, dtype="float32")(backbone(inputs, training=False))
    keras.mixed_precision.set_global_policy("float32")
    return backbone, keras.Model(inputs, logits)


def profiled_flops(backbone, size: int) -> int:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: backbone(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, size, size, 3], tf.float32))
    graph = convert_variables_to_constants_v2(fn).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op",
                                         options=options).total_float_ops


def train_step(model, optimizer=None):
    """A plain `tf.function` training step (forward, gradient, update; SGD unless given)."""
    optimizer = optimizer or keras.optimizers.SGD(0.01)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def timed(step, x, y, steps: int) -> float:
    """Examples/s over `steps` steps (after the caller's warmup)."""
    started = time.perf_counter()
    for _ in range(steps):
        loss = step(x, y)
    float(loss)
    return steps * int(x.shape[0]) / (time.perf_counter() - started)


def measure(name: str, args) -> dict:
    size, batch = args.size, args.batch_size
    rng = tf.random.Generator.from_seed(0)
    x = rng.uniform((batch, size, size, 3), 0, 255)
    y = rng.uniform((batch,), 0, 10, dtype=tf.int32)
    started = time.perf_counter()
    backbone224, _ = build(name, 224, "float32")
    params, flops = backbone224.count_params(), profiled_flops(backbone224, 224)
    del backbone224
    steps = {policy: train_step(build(name, size, policy)[1]) for policy in ("float32", "mixed_bfloat16")}
    for step in steps.values():  # trace and warm up
        timed(step, x, y, 2)
    rates = {policy: [] for policy in steps}
    for r in range(args.repeats):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for policy in order:
            rates[policy].append(timed(steps[policy], x, y, args.steps))
    f32, bf16 = (statistics.median(rates[p]) for p in ("float32", "mixed_bfloat16"))
    return {"backbone": name, "params": params, "flops_224": flops,
            "flops_at_size": round(flops * size * size / (224 * 224)), "float32_ex_s": round(f32, 1),
            "mixed_bfloat16_ex_s": round(bf16, 1), "bf16_speedup": round(bf16 / f32, 2),
            "rates": rates, "seconds": round(time.perf_counter() - started, 1)}


def learn(args) -> dict:
    """A from-scratch (weights=null) mobilenet_v3_small run on generated colour images, via the CLI."""
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="safetrain-bench-backbone-") as tmp:
        data, rng = Path(tmp) / "shapes", np.random.default_rng(0)
        colours = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
        for cls, colour in colours.items():
            (data / cls).mkdir(parents=True)
            for i in range(120):
                pixels = rng.integers(0, 90, (96, 96, 3)).astype(np.uint8)
                y0, x0 = rng.integers(0, 48, 2)
                pixels[y0:y0 + 40, x0:x0 + 40] = np.clip(np.array(colour) + rng.integers(-30, 30, 3), 0, 255)
                Image.fromarray(pixels).save(data / cls / f"{i}.png")
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "safetrain", "dataset=image_folder", f"dataset.path={data}",
                   "model=backbone", "model.backbone.weights=null", "model.backbone.trainable=true",
                   "dataset.image.height=64", "dataset.image.width=64", "trainer.epochs=10", "trainer.batch_size=32",
                   "trainer.export=false", "trainer.log_every_steps=1", f"hydra.run.dir={run_dir}"]
        started = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        report = json.loads((run_dir / "report.json").read_text())
        from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

        events = EventAccumulator(str(run_dir / "tb"), size_guidance={TENSORS: 0}).Reload()  # TF2 scalars
        losses = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("train/loss")]
        return {"command": " ".join(command[1:]), "first_logged_loss": round(losses[0], 4),
                "last_logged_loss": round(losses[-1], 4), "steps": report["steps"],
                "eval_accuracy": report["metrics"]["eval_accuracy"],
                "test_accuracy": report["metrics"]["test_accuracy"], "chance": round(1 / len(colours), 3),
                "wall_seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="backbone names (default: all registered)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=4, help="rounds per policy, alternating the order")
    parser.add_argument("--record", action="store_true", help="print the numbers for models/backbones.py")
    parser.add_argument("--learn", action="store_true", help="also train from scratch on a generated folder")
    parser.add_argument("--skip-speed", action="store_true", help="only --learn")
    parser.add_argument("--out", default="bench_backbones.json")
    args = parser.parse_args()

    results = []
    if not args.skip_speed:
        print(f"backbone             params       FLOPs@224   FLOPs@{args.size}  float32 ex/s  bf16 ex/s  bf16/f32")
        for name in args.only or BACKBONES.names():
            r = measure(name, args)
            results.append(r)
            print(f"{name:<20} {r['params']:>10,} {r['flops_224'] / 1e9:>9.2f} G {r['flops_at_size'] / 1e9:>8.2f} G "
                  f"{r['float32_ex_s']:>11.1f} {r['mixed_bfloat16_ex_s']:>10.1f} {r['bf16_speedup']:>8.2f}x",
                  flush=True)
        if args.record:
            for r in results:
                print(f"{r['backbone']}: params={r['params']} flops_224={r['flops_224']} "
                      f"bf16_speedup={r['bf16_speedup']}")
    out = {"size": args.size, "batch_size": args.batch_size, "backbones": results}
    if args.learn:
        out["learn"] = learn(args)
        print(json.dumps(out["learn"], indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
