"""trainer.time_budget measured: does a run fill its budget, decay its rate over it, and learn?

    python scripts/bench_budget.py default       # a 90 s budget on the default experiment
    python scripts/bench_budget.py shapes        # the scaffold on ../shared/data/hand_drawn_shapes: 1 and 5 minutes
    python scripts/bench_budget.py fashion       # fashion_mnist_recipe with 15m, beside plain Keras for the same time

Every run is `python -m safetrain` in a fresh process (what a user types); figures come from its
report.json (`wall_seconds`, `budget`, `metrics`) and its TensorBoard learning-rate curve.

- default: seconds the run took vs the budget, planned and trained steps, re-plans, the first and
  last learning rate, test accuracy.
- shapes: `scripts/new_experiment.py` writes the experiment and runs its learning check, then the
  experiment trains with `trainer.time_budget=1m` and `=5m`: test accuracy (goal at 5 minutes:
  >= 85%; chance 25%).
- fashion: `+experiment=fashion_mnist_recipe trainer.time_budget=15m` (goal >= 94% test accuracy),
  then a plain Keras script — the same layers (built by safetrain.models.build from the same
  config), `model.fit` with Adam at 0.001, batch 128, the same 54,000/6,000 split — stopped after
  the same wall time (a callback checks the clock after every batch), tested on the 10,000 test
  images.

Prints a table with the CPU model and writes bench_budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
SHAPES = ROOT.parent / "shared" / "data" / "hand_drawn_shapes"
FASHION = Path("/usr/share/datasets/fashion-mnist")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run(args: list[str], run_dir: Path) -> dict:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    took = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"safetrain {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    report = json.loads((run_dir / "report.json").read_text())
    rates = learning_rates(run_dir / "tb")
    budget = report.get("budget") or {}
    return {"args": " ".join(args), "process_seconds": round(took, 1), "run_seconds": report["wall_seconds"],
            "budget_seconds": budget.get("seconds"), "planned_steps": budget.get("planned_steps"),
            "first_plan": budget.get("first_plan"), "steps": report["steps"], "epochs": report["epochs"],
            "replans": budget.get("replans"), "stopped_by": budget.get("stopped_by"),
            "first_lr": rates[0] if rates else None, "last_lr": rates[-1] if rates else None,
            "test_accuracy": report["metrics"]["test_accuracy"],
            "best_eval": (report.get("best") or {}).get("value")}


def learning_rates(logdir: Path) -> list[float]:
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    tag = "optimizer/learning_rate"
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)] if tag in acc.Tags()["tensors"] else []


def default(tmp: Path) -> list[dict]:
    return [run(["trainer.time_budget=90s", "trainer.epochs=1000", "optimizer.schedule=cosine"], tmp / "default")]


def shapes(tmp: Path) -> list[dict]:
    configs = tmp / "configs"
    scaffold = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(SHAPES), "shapes",
                               "--configs", str(configs)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    lines = [line for line in scaffold.stdout.splitlines() if line.startswith(("recipe:", "learning check"))]
    print("\n".join(lines))
    if scaffold.returncode != 0:
        raise SystemExit(scaffold.stdout + scaffold.stderr)
    rows = []
    for budget in ("1m", "5m"):
        row = run([f"hydra.searchpath=[file://{configs}]", "+experiment=shapes", f"trainer.time_budget={budget}"],
                  tmp / f"shapes-{budget}")
        row["scaffold"] = lines
        rows.append(row)
    return rows


def fashion(tmp: Path) -> list[dict]:
    ours = run(["+experiment=fashion_mnist_recipe", "trainer.time_budget=15m", "dataset.download=false"],
               tmp / "fashion")
    keras_row = keras_baseline(ours["run_seconds"])
    return [ours, keras_row]


def keras_baseline(seconds: float) -> dict:
    """The recipe's layers in plain Keras `fit`, for `seconds` of wall time from the start."""
    began = time.monotonic()
    import keras
    from omegaconf import OmegaConf

    from safetrain.models.build import build_model
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer
    from safetrain.pipelines.sources.idx import find_idx_files, read_idx

    files = find_idx_files(FASHION)
    (x_train, y_train), (x_test, y_test) = [(read_idx(a), read_idx(b)) for a, b in (files["train"], files["test"])]
    x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    layers = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "experiment" / "fashion_mnist_recipe.yaml"))
    keras.utils.set_random_seed(0)
    model = build_model(infer(parse_layers(layers["model"]["layers"]), (28, 28, 1), 10))
    model.compile(optimizer=keras.optimizers.Adam(0.001),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class TimeLimit(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - began >= seconds - 15:  # the rest: testing
                self.model.stop_training = True

    history = model.fit(x_train[:54000], y_train[:54000], batch_size=128, epochs=1000, verbose=0,
                        validation_data=(x_train[54000:], y_train[54000:]), callbacks=[TimeLimit()])
    _, accuracy = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    return {"args": "plain Keras fit (same layers, Adam 0.001, batch 128), stopped at the same wall time",
            "process_seconds": round(time.monotonic() - began, 1), "epochs": len(history.history["loss"]),
            "test_accuracy": float(accuracy), "best_eval": max(history.history["val_accuracy"])}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=("default", "shapes", "fashion"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        for what in args.what:
            rows += [{"bench": what, **row} for row in globals()[what](Path(tmp))]
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {cpu_model()}")
    print("| bench | run | budget s | run s | planned (first plan) | steps | epochs | re-plans | stopped by | "
          "first -> last LR | test accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        lr = f"{r['first_lr']:.2e} -> {r['last_lr']:.2e}" if r.get("first_lr") else ""
        seconds = r.get("run_seconds", r["process_seconds"])
        print(f"| {r['bench']} | {r['args']} | {r.get('budget_seconds') or ''} | {seconds} | "
              f"{r.get('planned_steps') or ''} ({r.get('first_plan') or ''}) | {r.get('steps', '')} | {r['epochs']} | "
              f"{r.get('replans', '')} | {r.get('stopped_by') or ''} | {lr} | {r['test_accuracy']:.4f} |")
    out = ROOT / "bench_budget.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update({what: [r for r in rows if r["bench"] == what] for what in args.what}, cpu=cpu_model())
    out.write_text(json.dumps(old, indent=2) + "\n")


if __name__ == "__main__":
    main()
