"""What a trained model ships with, measured: calibration, the "unsure" answer, every export format.

    python scripts/bench_export.py                 # Fashion-MNIST's recipe and the scaffold on the shared
                                                   # drawings, 5 minutes each
    python scripts/bench_export.py fashion --minutes 15
    python scripts/bench_export.py shapes --shapes DIR

Each run is `python -m safetrain` in a fresh process, as a user types it, with
`trainer.export_formats=[saved_model,keras,tflite,tflite_int8,onnx]` and
`trainer.serving_target_accuracy=0.99`; the figures come from its report.json:

- calibration: the temperature fitted on eval; ECE (15 bins), NLL and Brier on test before and after.
- unsure: the threshold that reached 99% on eval, and the share of test images answered above it
  with their accuracy.
- parity: per format, proven on the test split's files through its own serving path — size,
  agreement with the trained model, max |dp|, accuracy, worst class recall drop, single-image latency.

- fashion: `+experiment=fashion_mnist_recipe` (Debian's Fashion-MNIST) with `trainer.time_budget`.
- shapes: `scripts/new_experiment.py` on the 545 hand-drawn shapes (4 classes; CC BY 4.0) writes the
  experiment, which trains with `trainer.time_budget`.

Prints the tables with the CPU model and writes bench_export.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_budget import ENV, SHAPES, cpu_model, scaffold  # noqa: E402

FORMATS = "trainer.export_formats=[saved_model,keras,tflite,tflite_int8,onnx]"
TARGET = 0.99


def train(args: list[str], run_dir: Path) -> dict:
    import subprocess

    done = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}", FORMATS,
                           f"trainer.serving_target_accuracy={TARGET}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    report = json.loads((run_dir / "report.json").read_text())
    if done.returncode != 0:
        raise SystemExit(f"safetrain {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {"args": " ".join(args), "test_accuracy": report["metrics"]["test_accuracy"],
            "seconds": {k: report["throughput"]["wall_seconds"].get(k) for k in ("total", "results", "export")},
            "calibration": report["calibration"], "export": {k: report["export"].get(k) for k in
                                                              ("parity", "tflite_int8", "onnx", "tflite")}}


def fashion(tmp: Path, minutes: str) -> dict:
    return train(["+experiment=fashion_mnist_recipe", f"trainer.time_budget={minutes}m"], tmp / "fashion")


def shapes(tmp: Path, minutes: str, folder: Path) -> dict:
    configs = tmp / "configs"
    scaffold(folder, "shapes", configs)
    return train([f"hydra.searchpath=[file://{configs}]", "+experiment=shapes", f"trainer.time_budget={minutes}m"],
                 tmp / "shapes")


def show(name: str, row: dict) -> None:
    c, t = row["calibration"], row["calibration"]["test"]
    print(f"\n{name}: {row['args']} -> test accuracy {row['test_accuracy']:.4f}")
    print(f"calibration: T = {c['temperature']:.3f} on {c['eval_examples']} eval images"
          + (f" (skipped: {c['skipped']})" if c.get("skipped") else ""))
    print("| test | before | after |\n|---|---:|---:|")
    for metric in ("ece", "nll", "brier"):
        print(f"| {metric.upper() if metric != 'brier' else 'Brier'} | {t[f'{metric}_before']:.4f} | "
              f"{t[f'{metric}_after']:.4f} |")
    unsure = c.get("unsure") or {}
    if unsure.get("threshold") is not None:
        at = t["at_unsure_threshold"]
        print(f"unsure below {unsure['threshold']:.4f} (target {unsure['target_accuracy']}): eval answers "
              f"{unsure['eval']['coverage']:.1%} at {unsure['eval']['accuracy']:.4f}; test answers {at['coverage']:.1%} "
              f"at {at['accuracy']:.4f}")
    elif unsure:
        print(f"unsure: {unsure.get('reason')}")
    int8 = row["export"].get("tflite_int8") or {}
    print(f"\n| format | size | agreement | max abs dp | accuracy | worst class drop | ms / image |\n"
          f"|---|---:|---:|---:|---:|---:|---:|")
    for r in row["export"]["parity"]:
        label = r["format"] + (f" ({int8.get('quantization')})" if r["format"] == "tflite_int8" else "")
        print(f"| {label} | {r['bytes'] / 1e6:.2f} MB | {r['agreement']:.4f} | {r['max_abs_diff']:.2g} | "
              f"{r['accuracy']:.4f} | {r['worst_class_drop']:.4f} ({r['worst_class']}) | {r['latency_ms']:.2f} |")
    print(f"({row['export']['parity'][0]['files']} test files; the run took {row['seconds']['total']:.0f} s, "
          f"{row['seconds']['results']:.0f} s of it for the results and calibration, {row['seconds']['export']:.0f} s "
          f"for the export and its proof)")
    if int8.get("fallback_reason"):
        print(f"int8: {int8['fallback_reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", help="fashion, shapes (default: both)")
    parser.add_argument("--minutes", default="5")
    parser.add_argument("--shapes", type=Path, default=SHAPES)
    args = parser.parse_args()
    unknown = set(args.which) - {"fashion", "shapes"}
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}; choose fashion and/or shapes")
    print(f"CPU: {cpu_model()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for which in args.which or ["fashion", "shapes"]:
            row = fashion(Path(tmp), args.minutes) if which == "fashion" else shapes(Path(tmp), args.minutes,
                                                                                     args.shapes)
            results[which] = row
            show(which, row)
    (ROOT / "bench_export.json").write_text(json.dumps({"cpu": cpu_model(), **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
