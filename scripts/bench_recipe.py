"""A recipe through safetrain vs the same recipe through plain Keras `model.fit`, side by side.

    python scripts/bench_recipe.py                         # fashion_mnist_recipe, 3 epochs, 2 rounds each
    python scripts/bench_recipe.py --epochs 25 --rounds 1  # the whole recipe: its accuracy both ways
    python scripts/bench_recipe.py --experiment my_recipe --override trainer.batch_size=256

Both sides train the same recipe, read from the composed experiment config: the same model (built
by models.build from the same layer list), the same Fashion-MNIST files and splits (the first 90%
of train, the last 10% as eval, test), batch size, Keras' own augmentation layers (the ones
augment= asks for, in the same order), AdamW with the same decay on the same weights, Keras'
cosine decay with its own linear warmup, label smoothing, the weights' moving average (Keras'
`use_ema` + `SwapEMAWeights`) and the best eval epoch (`ModelCheckpoint(save_best_only)`), at the
precision safetrain chose (`hardware.precision=auto`; read from its report.json). `fit` is what a
careful Keras user writes; it has none of safetrain's checks (spec enforcement, NaN guard, exact
resume, per-batch reseeded augmentation, scans).

Each run is a fresh process (`python -m safetrain ...` as a user types it; `fit` via this script's
`--fit-child`), and the sides alternate (safetrain, fit, fit, safetrain, ...) so a cloud VM's two
speed levels hit both alike. Examples/s is training examples x epochs / the run's wall clock from
process start to exit (set-up, per-epoch eval and test included: what a user waits for; safetrain's
export is turned off, as fit exports nothing).
Prints a table and writes bench_recipe.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
IDX = Path("/usr/share/datasets/fashion-mnist")


def _compose(experiment: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from safetrain.config import config_dir
    from safetrain.config.schema import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        node = compose("config", overrides=[f"+experiment={experiment}", *overrides])
    return OmegaConf.to_object(node)


def _read_idx(path: Path):
    import numpy as np

    raw = gzip.open(path).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fit_child(args) -> None:
    """One plain-Keras run of the recipe; writes its result as JSON to args.result."""
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    import keras

    from safetrain.models.build import build_model
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer
    from safetrain.pipelines.augment import layers_for

    cfg = _compose(args.experiment, args.override)
    t, o = cfg.trainer, cfg.optimizer
    keras.utils.set_random_seed(t.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    x = _read_idx(IDX / "train-images-idx3-ubyte.gz")[..., None]
    y = _read_idx(IDX / "train-labels-idx1-ubyte.gz").astype("int32")
    x_test = _read_idx(IDX / "t10k-images-idx3-ubyte.gz")[..., None]
    y_test = _read_idx(IDX / "t10k-labels-idx1-ubyte.gz").astype("int32")
    cut = len(x) * 9 // 10  # train[:90%] / train[90%:]
    k, n = 10, cfg.dataset.max_examples or len(x)  # dataset.max_examples: the first n of each split, as safetrain
    (x_train, y_train), (x_val, y_val) = (x[:cut][:n], y[:cut][:n]), (x[cut:][:n], y[cut:][:n])
    x_test, y_test = x_test[:n], y_test[:n]
    augment = keras.Sequential(layers_for(cfg.augment, (0.0, 255.0), t.seed))

    def batches(images, labels, train: bool):
        ds = tf.data.Dataset.from_tensor_slices((images, tf.one_hot(labels, k)))
        if train:
            ds = ds.shuffle(cfg.dataset.shuffle_buffer, seed=t.seed)
        ds = ds.batch(t.batch_size, drop_remainder=train).map(lambda a, b: (tf.cast(a, tf.float32), b))
        if train and augment.layers:
            ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(lambda a, b: (a / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    train, val = batches(x_train, y_train, True), batches(x_val, y_val, False)
    test = batches(x_test, y_test, False)
    steps_per_epoch = len(x_train) // t.batch_size
    total = steps_per_epoch * t.epochs
    warmup = round(o.warmup_epochs * steps_per_epoch)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else o.learning_rate, warmup_target=o.learning_rate if warmup else None,
        warmup_steps=warmup, decay_steps=max(1, total - warmup - 1), alpha=o.min_learning_rate / o.learning_rate)
    plan = infer(parse_layers(cfg.model.layers), (28, 28, 1), k)
    model = build_model(plan, seed=t.seed)
    ema = dict(use_ema=True, ema_momentum=t.ema) if t.ema else {}
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=o.weight_decay, **ema)
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=t.label_smoothing))
    best = Path(args.result).with_suffix(".best.weights.h5")
    callbacks = ([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if t.ema else []) + [
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_accuracy", mode="max", save_best_only=True,
                                        save_weights_only=True)]
    history = model.fit(train, validation_data=val, epochs=t.epochs, callbacks=callbacks, verbose=2)
    model.load_weights(str(best))
    _, test_accuracy = model.evaluate(test, verbose=0)
    val_acc = history.history["val_accuracy"]
    Path(args.result).write_text(json.dumps({
        "test_accuracy": float(test_accuracy), "best_eval_accuracy": max(val_acc),
        "best_epoch": 1 + val_acc.index(max(val_acc)), "train_examples": len(x_train), "epochs": t.epochs,
        "precision": args.precision}))


def _safetrain(args, run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "safetrain", f"+experiment={args.experiment}", f"hydra.run.dir={run_dir}",
           "trainer.export=false", *args.override]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"safetrain failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((run_dir / "report.json").read_text())
    best = report.get("best") or {}
    return {"wall_s": wall, "test_accuracy": report["metrics"]["test_accuracy"],
            "best_eval_accuracy": best.get("value"), "best_epoch": best.get("epoch"),
            "examples": report["data"]["counts"]["train"] * report["epochs"],
            "precision": report["hardware"]["precision_policy"]}


def _fit(args, work: Path, precision: str, i: int) -> dict:
    result = work / f"fit{i}.json"
    cmd = [sys.executable, __file__, "--fit-child", "--result", str(result), "--precision", precision,
           "--experiment", args.experiment, *sum((["--override", o] for o in args.override), [])]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the fit run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(result.read_text())
    return {"wall_s": wall, "test_accuracy": out["test_accuracy"], "best_eval_accuracy": out["best_eval_accuracy"],
            "best_epoch": out["best_epoch"], "examples": out["train_examples"] * out["epochs"],
            "precision": out["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="fashion_mnist_recipe")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="runs per side")
    parser.add_argument("--override", action="append", default=[], help="a config override for both sides")
    parser.add_argument("--out", default="bench_recipe.json")
    parser.add_argument("--fit-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fit_child:
        return fit_child(args)
    if not IDX.is_dir():
        raise SystemExit(f"needs Debian's Fashion-MNIST files in {IDX}: apt-get install dataset-fashion-mnist")
    args.override = [f"trainer.epochs={args.epochs}", *args.override]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="safetrain-bench-recipe-"))
    runs: dict[str, list[dict]] = {"safetrain": [], "fit": []}
    precision = None
    for r in range(args.rounds):
        order = ("safetrain", "fit") if r % 2 == 0 else ("fit", "safetrain")
        for side in order:
            if side == "safetrain":
                run = _safetrain(args, work / f"safetrain{r}")
                precision = run["precision"]
            else:
                if precision is None:  # fit needs safetrain's choice: the first round starts with safetrain
                    raise AssertionError("safetrain runs first")
                run = _fit(args, work, precision, r)
            runs[side].append(run)
            print(f"round {r + 1}/{args.rounds} {side:9s}: {run['examples'] / run['wall_s']:7,.0f} ex/s  "
                  f"wall {run['wall_s']:6.1f} s  test {run['test_accuracy']:.4f}  best eval "
                  f"{run['best_eval_accuracy']:.4f} (epoch {run['best_epoch']})", flush=True)

    def summary(side: str) -> dict:
        rs = runs[side]
        return {"examples_per_sec_median": round(statistics.median(r["examples"] / r["wall_s"] for r in rs), 1),
                "wall_s_median": round(statistics.median(r["wall_s"] for r in rs), 1),
                "test_accuracy": [round(r["test_accuracy"], 4) for r in rs],
                "best_eval_accuracy": [round(r["best_eval_accuracy"], 4) for r in rs]}

    result = {"experiment": args.experiment, "epochs": args.epochs, "rounds": args.rounds,
              "overrides": args.override, "precision": precision,
              "safetrain": summary("safetrain"), "fit": summary("fit"),
              "ratio_safetrain_over_fit": round(statistics.median(  # examples/s, per round
                  (s["examples"] / s["wall_s"]) / (f["examples"] / f["wall_s"])
                  for s, f in zip(runs["safetrain"], runs["fit"])), 3),
              "runs": runs}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    s, f = result["safetrain"], result["fit"]
    print(f"\n{args.experiment}, {args.epochs} epochs, {precision}, median of {args.rounds}:")
    print(f"  safetrain  {s['examples_per_sec_median']:7,.0f} ex/s  test {s['test_accuracy']}")
    print(f"  fit        {f['examples_per_sec_median']:7,.0f} ex/s  test {f['test_accuracy']}")
    print(f"  examples/s ratio safetrain/fit {result['ratio_safetrain_over_fit']:.3f}  -> {args.out}")


if __name__ == "__main__":
    main()
