"""Multi-label measured: safetrain's recipe against a plain Keras sigmoid + binary cross-entropy
`fit` of the same layers at the same wall time, and tuned thresholds against a fixed 0.5.

    python scripts/bench_multi_label.py [--minutes 5] [--train 12000] [--test 2000] [--seed 0]

Data (offline, real): scripts/fashion_pastes.py pastes two or three Fashion-MNIST items on a
56x56 canvas, labels = the set of the items' classes (10 labels); `--train` canvases from
Fashion-MNIST's train part (numpy `default_rng(seed)`), `--test` from its test part (seed + 1),
one table with a split column. Both sides train on the same train rows (safetrain carves its eval
split, 10%, from them; Keras holds out the same share with `validation_split=0.1`) and are scored
on the same test images:

- safetrain: `+experiment=multi_label_table trainer.time_budget=<minutes>m` (its whole command's
  wall time; export off, as fit exports nothing). Scores at the thresholds it tuned on eval, and
  at 0.5 (report.json `test_*`, `test_at_0.5`).
- Keras: the experiment's layers built by models.build, a sigmoid on the logits, Adam 0.001,
  binary cross-entropy, batch 128, `fit` stopped when the process has run the same minutes
  (less the seconds its test prediction takes); scored at 0.5 with scikit-learn.

mAP is scikit-learn's `average_precision_score` per label, averaged; micro F1 and subset accuracy
at each side's thresholds. The rarest label's F1 is read at both of safetrain's thresholds. One
round each, safetrain first (a VM's speed can change between them: the CPU is printed).
Writes bench_multi_label.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

import fashion_pastes  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def safetrain_side(table: Path, minutes: float, work: Path) -> dict:
    run_dir = work / "safetrain"
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "safetrain", "+experiment=multi_label_table",
                           f"dataset.table={table}", f"dataset.cache_dir={work / 'cache'}",
                           f"trainer.time_budget={minutes}m", "trainer.epochs=1000", "trainer.export=false",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"safetrain failed:\n{done.stderr[-3000:]}")
    report = json.loads((run_dir / "report.json").read_text())
    m = report["metrics"]
    rare = min(m["per_label"].items(), key=lambda item: (item[1]["support"], item[0]))
    return {"side": "safetrain (multi_label_table, tuned thresholds)", "process_seconds": round(time.monotonic() - began, 1),
            "epochs": report["epochs"], "map": m["test_map"], "micro_f1": m["test_micro_f1"],
            "subset_accuracy": m["test_subset_accuracy"], "at_0.5": m["test_at_0.5"],
            "rarest_label": rare[0], "rarest_f1_tuned": rare[1]["f1"], "rarest_f1_at_0.5": rare[1]["f1_at_0.5"],
            "rarest_support": rare[1]["support"],
            "thresholds": {k: v["threshold"] for k, v in m["thresholds"].items()}}


def _load(table: Path) -> tuple[dict, list[str]]:
    from PIL import Image

    names = list(fashion_pastes.CLASSES)
    splits: dict = {"train": ([], []), "test": ([], [])}
    with open(table, newline="") as handle:
        for row in csv.DictReader(handle):
            x, y = splits[row["split"]]
            x.append(np.asarray(Image.open(table.parent / row["path"]), np.float32)[..., None] / 255.0)
            y.append([1.0 if n in row["labels"].split("|") else 0.0 for n in names])
    return {k: (np.stack(x), np.asarray(y, np.float32)) for k, (x, y) in splits.items()}, names


def keras_side(table: Path, minutes: float) -> dict:
    """Run in its own process (`--keras-child`): the same layers in plain Keras `fit`."""
    began = time.monotonic()
    import keras
    from omegaconf import OmegaConf
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    from safetrain.models.build import build_model
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer

    data, names = _load(table)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "experiment" / "multi_label_table.yaml"))
    keras.utils.set_random_seed(0)
    body = build_model(infer(parse_layers(config["model"]["layers"]), (56, 56, 1), len(names), multi_label=True))
    model = keras.Sequential([body, keras.layers.Activation("sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss=keras.losses.BinaryCrossentropy())
    stop_at = minutes * 60 - 10  # the rest: predicting the test images

    class TimeLimit(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.monotonic() - began >= stop_at:
                self.model.stop_training = True

    history = model.fit(x_train, y_train, batch_size=128, epochs=1000, validation_split=0.1, verbose=0,
                        shuffle=True, callbacks=[TimeLimit()])
    p = model.predict(x_test, batch_size=512, verbose=0)
    predicted = (p >= 0.5).astype(np.int64)
    truth = y_test.astype(np.int64)
    rare = int(np.argmin(truth.sum(0)))
    return {"side": "plain Keras fit (same layers, sigmoid + BCE, Adam 0.001, 0.5)",
            "process_seconds": round(time.monotonic() - began, 1), "epochs": len(history.history["loss"]),
            "map": float(np.mean([average_precision_score(truth[:, c], p[:, c]) for c in range(len(names))])),
            "micro_f1": float(f1_score(truth, predicted, average="micro")),
            "subset_accuracy": float(accuracy_score(truth, predicted)),
            "rarest_label": names[rare], "rarest_f1_at_0.5": float(f1_score(truth[:, rare], predicted[:, rare]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keras-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_child:
        print(json.dumps(keras_side(args.keras_child, args.minutes)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-multi-label-") as tmp:
        work = Path(tmp)
        began = time.monotonic()
        table = fashion_pastes.write(work / "images", args.train, args.seed, test_count=args.test)
        print(f"wrote {args.train} + {args.test} composites in {time.monotonic() - began:.0f} s", flush=True)
        ours = safetrain_side(table, args.minutes, work)
        print(json.dumps(ours), flush=True)
        child = subprocess.run([sys.executable, __file__, "--keras-child", str(table), "--minutes", str(args.minutes)],
                               cwd=ROOT, env=ENV, capture_output=True, text=True)
        if child.returncode != 0:
            raise SystemExit(f"the Keras side failed:\n{child.stderr[-3000:]}")
        theirs = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps(theirs), flush=True)
    cpu = cpu_model()
    print(f"\n{cpu}, {os.cpu_count()} CPUs; {args.train} train / {args.test} test composites, "
          f"{args.minutes:g} minutes each\n")
    print("| side | epochs | test mAP | micro F1 | subset accuracy |")
    print("|---|---|---|---|---|")
    half = ours["at_0.5"]
    print(f"| {ours['side']} | {ours['epochs']} | {ours['map']:.4f} | {ours['micro_f1']:.4f} | "
          f"{ours['subset_accuracy']:.4f} |")
    print(f"| safetrain, the same model at 0.5 | {ours['epochs']} | {half['map']:.4f} | {half['micro_f1']:.4f} | "
          f"{half['subset_accuracy']:.4f} |")
    print(f"| {theirs['side']} | {theirs['epochs']} | {theirs['map']:.4f} | {theirs['micro_f1']:.4f} | "
          f"{theirs['subset_accuracy']:.4f} |")
    print(f"\nrarest label ({ours['rarest_label']}, {ours['rarest_support']} test images): F1 "
          f"{ours['rarest_f1_tuned']:.4f} at safetrain's tuned threshold, {ours['rarest_f1_at_0.5']:.4f} at 0.5; "
          f"Keras' rarest ({theirs['rarest_label']}) "
          f"F1 {theirs['rarest_f1_at_0.5']:.4f} at 0.5")
    out = ROOT / "bench_multi_label.json"
    out.write_text(json.dumps({"cpu": cpu, "args": vars(args) | {"keras_child": None}, "safetrain": ours,
                               "keras": theirs}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
