"""trainer.time_budget measured: does a run fill its budget, decay its rate over it, and learn?

    python scripts/bench_budget.py default       # the default experiment (digits) with 1 and 5 minute budgets
    python scripts/bench_budget.py shapes        # the scaffold on the 545 real drawings (--shapes DIR): 1 and 5 minutes
    python scripts/bench_budget.py fashion       # fashion_mnist_recipe with 15m, beside plain Keras for the same time
    python scripts/bench_budget.py folder        # a generated folder of 22,000 drawings (70x70): the scaffold, its
                                                 # learning check, then the command it prints, with its budget
    python scripts/bench_budget.py default --minutes 1 5 15   # other budgets

Every run is `python -m safetrain` in a fresh process (what a user types); figures come from its
report.json (`wall_seconds`, `budget`, `metrics`) and its TensorBoard learning-rate curve.

- every run: seconds it took vs the budget (report.json `wall_seconds`, and the whole process), the
  first plan against the steps run, re-plans, the largest rise of the logged learning rate after
  its peak (goal 0: one warmup, one decay), the precision `auto` chose, each export format's
  largest probability difference from the trained model (report.json export.parity), test accuracy.
- default: the default experiment with `trainer.time_budget` of each `--minutes`.
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
SHAPES = ROOT.parent / "shared" / "data" / "hand_drawn_shapes"  # where CI keeps the real drawings; --shapes DIR
FASHION = Path("/usr/share/datasets/fashion-mnist")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
NO_KERAS = False


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
    seconds = budget.get("seconds")
    return {"args": " ".join(args), "process_seconds": round(took, 1), "run_seconds": report["wall_seconds"],
            "budget_seconds": seconds, "used": round(report["wall_seconds"] / seconds, 3) if seconds else None,
            "planned_steps": budget.get("planned_steps"), "first_plan": budget.get("first_plan"),
            "first_plan_error": (round(budget["first_plan"] / report["steps"] - 1, 3)
                                 if budget.get("first_plan") and report["steps"] else None),
            "steps": report["steps"], "epochs": report["epochs"],
            "replans": budget.get("replans"), "stopped_by": budget.get("stopped_by"),
            "eval_every": budget.get("eval_every_epochs"),
            "first_lr": rates[0] if rates else None, "last_lr": rates[-1] if rates else None,
            "lr_rise_after_peak": rise_after_peak(rates),
            "test_accuracy": report["metrics"]["test_accuracy"],
            "best_eval": (report.get("best") or {}).get("value"),
            "phases": report["throughput"].get("wall_seconds"),
            "precision": report["hardware"]["precision_policy"],
            "export_parity": [{k: row[k] for k in ("format", "agreement", "max_abs_diff", "passed")}
                              for row in (report.get("export") or {}).get("parity", [])],
            "after_training_estimate": budget.get("after_training_seconds")}


def rise_after_peak(rates: list[float]) -> float | None:
    """The largest step up of the logged learning rate after its first peak (the warmup's end):
    0 for one warmup and one decay."""
    if not rates:
        return None
    peak = rates.index(max(rates))
    return max([0.0] + [b - a for a, b in zip(rates[peak:], rates[peak + 1:])])


def learning_rates(logdir: Path) -> list[float]:
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    tag = "optimizer/learning_rate"
    return [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)] if tag in acc.Tags()["tensors"] else []


def default(tmp: Path, minutes: list[str]) -> list[dict]:
    return [run([f"trainer.time_budget={m}m", "trainer.epochs=100000", "optimizer.schedule=cosine"],
                tmp / f"default-{m}") for m in minutes]


def scaffold(folder: Path, name: str, configs: Path) -> tuple[list[str], str, str]:
    """scripts/new_experiment.py on `folder`: (its lines worth showing, the budget it wrote, its output)."""
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(folder), name,
                           "--configs", str(configs), "--force"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    took = time.monotonic() - began
    lines = [line for line in done.stdout.splitlines() if line.startswith(("model:", "recipe:", "learning check"))]
    lines.append(f"scaffold: {took:.0f} s, exit {done.returncode}")
    print("\n".join(lines), flush=True)
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    import yaml

    written = yaml.safe_load((configs / "experiment" / f"{name}.yaml").read_text())
    return lines, str(written["trainer"]["time_budget"]), done.stdout


def shapes(tmp: Path, minutes: list[str]) -> list[dict]:
    configs = tmp / "configs"
    lines, _, _ = scaffold(SHAPES, "shapes", configs)
    rows = []
    for m in minutes:
        row = run([f"hydra.searchpath=[file://{configs}]", "+experiment=shapes", f"trainer.time_budget={m}m"],
                  tmp / f"shapes-{m}")
        row["scaffold"] = lines
        rows.append(row)
    return rows


def folder(tmp: Path, minutes: list[str]) -> list[dict]:
    """A generated folder shaped like the full hand-drawn shapes set (27k RGBA-stored grey 70x70
    PNGs in train/ and test/): the scaffold, then the command it prints, with the budget it wrote."""
    images = tmp / "drawings"
    began = time.monotonic()
    count = generate_drawings(images)
    print(f"generated {count:,} drawings in {time.monotonic() - began:.0f} s", flush=True)
    configs = tmp / "configs"
    lines, budget, _ = scaffold(images, "drawings", configs)
    row = run([f"hydra.searchpath=[file://{configs}]", "+experiment=drawings"], tmp / "drawings-run")
    row["scaffold"] = lines
    row["args"] = f"the scaffold's printed command on {count:,} generated drawings (trainer.time_budget={budget})"
    return [row]


CLASSES = ("ellipse", "other", "rectangle", "triangle")


def generate_drawings(root: Path, train_per_class: int = 4500, test_per_class: int = 1000, size: int = 70) -> int:
    """Line drawings like hand-drawn shapes (seeded): wobbly outlines of each class at a random
    place, size, rotation and stroke width, black on white, stored as RGBA PNG (R = G = B, opaque)
    the way the real set is. "other": open zigzags and crosses."""
    import math

    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    count = 0
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for label in CLASSES:
            out = root / split / label
            out.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = Image.new("L", (size, size), 255)
                draw = ImageDraw.Draw(image)
                cx, cy = rng.uniform(0.35, 0.65, 2) * size
                radius = rng.uniform(0.18, 0.4) * size
                turn = rng.uniform(0, 2 * math.pi)
                aspect = rng.uniform(0.5, 1.0)
                if label == "ellipse":
                    angles = np.linspace(0, 2 * math.pi, 40)
                elif label == "rectangle":
                    angles = np.array([0.25, 0.75, 1.25, 1.75, 2.25]) * math.pi
                elif label == "triangle":
                    angles = np.array([0.5, 0.5 + 2 / 3, 0.5 + 4 / 3, 2.5]) * math.pi
                else:
                    angles = np.sort(rng.uniform(0, 2 * math.pi, rng.integers(3, 6)))
                wobble = 1 + rng.normal(0, 0.04, len(angles))
                xs = radius * wobble * np.cos(angles)
                ys = radius * aspect * wobble * np.sin(angles)
                points = [(cx + x * math.cos(turn) - y * math.sin(turn), cy + x * math.sin(turn) + y * math.cos(turn))
                          for x, y in zip(xs, ys)]
                if label == "ellipse":
                    points.append(points[0])
                draw.line(points, fill=int(rng.integers(0, 60)), width=int(rng.integers(1, 4)), joint="curve")
                grey = np.asarray(image)
                Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA").save(
                    out / f"{label}_{i:05d}.png")
                count += 1
    return count


def fashion(tmp: Path, minutes: list[str]) -> list[dict]:
    ours = run(["+experiment=fashion_mnist_recipe", "trainer.time_budget=15m", "dataset.download=false"],
               tmp / "fashion")
    return [ours] if NO_KERAS else [ours, keras_baseline(ours["run_seconds"])]


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
    global SHAPES, NO_KERAS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="+", choices=("default", "shapes", "fashion", "folder"))
    parser.add_argument("--minutes", nargs="+", default=["1", "5"], help="budgets of default and shapes (minutes)")
    parser.add_argument("--shapes", type=Path, default=SHAPES, help="the 545 hand-drawn shapes (one folder per class)")
    parser.add_argument("--no-keras", action="store_true", help="fashion: leave out the plain Keras run")
    args = parser.parse_args()
    SHAPES, NO_KERAS = args.shapes, args.no_keras
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as tmp:
        for what in args.what:
            for row in globals()[what](Path(tmp), args.minutes):
                rows.append({"bench": what, **row})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {cpu_model()}")
    print("| bench | run | budget s | run s (used) | first plan / steps run | re-plans | epochs | stopped by | "
          "LR first -> last | LR rise after peak | precision | export max abs dp | test accuracy |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---:|---|---|---:|")
    for r in rows:
        lr = f"{r['first_lr']:.1e} -> {r['last_lr']:.1e}" if r.get("first_lr") else ""
        seconds = r.get("run_seconds", r["process_seconds"])
        used = f" ({r['used']:.0%})" if r.get("used") else ""
        plan = (f"{r['first_plan']:,} / {r['steps']:,} ({r['first_plan_error']:+.0%})" if r.get("first_plan")
                else "")
        rise = f"{r['lr_rise_after_peak']:.1e}" if r.get("lr_rise_after_peak") is not None else ""
        parity = ", ".join(f"{p['format']} {p['max_abs_diff']:.2g}{'' if p['passed'] else ' FAILED'}"
                           for p in r.get("export_parity") or []) or "off"
        print(f"| {r['bench']} | {r['args']} | {r.get('budget_seconds') or ''} | {seconds}{used} | {plan} | "
              f"{r.get('replans', '')} | {r['epochs']} | {r.get('stopped_by') or ''} | {lr} | {rise} | "
              f"{r.get('precision', '')} | {parity} | {r['test_accuracy']:.4f} |")
    out = ROOT / "bench_budget.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update({what: [r for r in rows if r["bench"] == what] for what in args.what}, cpu=cpu_model())
    out.write_text(json.dumps(old, indent=2) + "\n")


if __name__ == "__main__":
    main()
