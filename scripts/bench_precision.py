"""Which bfloat16 route (and thread setting) trains fastest on this CPU, at what accuracy.

    python scripts/bench_precision.py                 # 3 rounds, both models, prints a table
    python scripts/bench_precision.py --rounds 5 --json precision.json

Routes, each a whole `python -m safetrain` run in its own process (oneDNN reads its math mode
and TensorFlow its thread pools once, at start-up, so they cannot change inside one process):
  float32         hardware.precision=float32
  fpmath_bf16     float32 weights and tensors, oneDNN computing matmuls/convolutions in bfloat16
                  (TF_SET_ONEDNN_FPMATH_MODE=BF16)
  mixed_bfloat16  Keras' mixed_bfloat16 policy (bfloat16 activations, float32 weights)
  auto            hardware.precision=auto: the precision trial's choice (measured in the first
                  round, then taken from its cache; the trial's own seconds are not in the rate)
and, in float32, the thread pools: TensorFlow's defaults vs TF_NUM_INTRAOP_THREADS=<cores>
with TF_NUM_INTEROP_THREADS=1 or 2. Models: cnn_small at 28x28 and cnn_residual at 96x96 (the
embedded digits, upsampled), a fixed number of steps each, steps_per_loop=1 so only the math
differs. Rounds run every variant once, in a rotated order (a cloud VM's speed jumps between two
levels; neighbours share it). Reported per variant: the median step rate and the eval accuracy
after the fixed steps (the same seed and batches for every variant).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    "cnn_small_28": ["model=cnn_small", "trainer.batch_size=128", "trainer.max_steps=60"],
    "cnn_residual_96": ["model=cnn_residual", "dataset.image.height=96", "dataset.image.width=96",
                        "trainer.batch_size=32", "trainer.max_steps=16"],
}
CORES = len(os.sched_getaffinity(0))
VARIANTS = {
    "auto": ({}, "auto"),  # the precision trial (its decision cached after the first round)
    "float32": ({}, "float32"),
    "fpmath_bf16": ({"TF_SET_ONEDNN_FPMATH_MODE": "BF16"}, "float32"),
    "mixed_bfloat16": ({}, "mixed_bfloat16"),
    f"float32 intra={CORES} inter=1": ({"TF_NUM_INTRAOP_THREADS": str(CORES), "TF_NUM_INTEROP_THREADS": "1"},
                                       "float32"),
    f"float32 intra={CORES} inter=2": ({"TF_NUM_INTRAOP_THREADS": str(CORES), "TF_NUM_INTEROP_THREADS": "2"},
                                       "float32"),
}


def run(model: str, variant: str, work: Path, index: int) -> dict:
    env_extra, precision = VARIANTS[variant]
    run_dir = work / f"{model}-{index}-{variant.replace(' ', '_').replace('=', '')}"
    cmd = [sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}", *MODELS[model],
           f"hardware.precision={precision}", "trainer.steps_per_loop=1", "trainer.export=false",
           "trainer.epochs=50", "dataset.resize=bilinear"]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_SET_ONEDNN_FPMATH_MODE", "TF_NUM_INTRAOP_THREADS",
                                                             "TF_NUM_INTEROP_THREADS")}
    done = subprocess.run(cmd, cwd=ROOT, env={**env, **env_extra}, capture_output=True, text=True, timeout=900)
    report = json.loads((run_dir / "report.json").read_text())
    if done.returncode:
        return {"refused": (report.get("error") or {}).get("message", f"exit {done.returncode}")}
    return {"examples_per_sec": report["throughput"]["examples_per_sec"],
            "eval_accuracy": report["metrics"]["eval_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="safetrain-precision-"))
    results: dict[str, dict[str, list[dict]]] = {m: {v: [] for v in args.variants} for m in args.models}
    index = 0
    for r in range(args.rounds):
        for model in args.models:
            order = args.variants[r % len(args.variants):] + args.variants[:r % len(args.variants)]
            for variant in order:
                index += 1
                got = run(model, variant, work, index)
                results[model][variant].append(got)
                print(f"round {r + 1} {model:16s} {variant:26s} " + (
                    f"refused: {got['refused'][:90]}" if "refused" in got else
                    f"{got['examples_per_sec']:8,.0f} ex/s  eval acc {got['eval_accuracy']:.4f}"), flush=True)
    table = {}
    for model, variants in results.items():
        plain = [x["examples_per_sec"] for x in variants["float32"] if "refused" not in x]
        base = statistics.median(plain) if plain else None
        print(f"\n{model}")
        for variant, runs in variants.items():
            ok = [x for x in runs if "refused" not in x]
            if not ok:
                table.setdefault(model, {})[variant] = {"refused": runs[0]["refused"]}
                print(f"  {variant:26s} refused here: {runs[0]['refused'][:100]}")
                continue
            rate = statistics.median(x["examples_per_sec"] for x in ok)
            accuracy = statistics.median(x["eval_accuracy"] for x in ok)
            base = base or rate  # no float32 run: the first variant's
            table.setdefault(model, {})[variant] = {"examples_per_sec": round(rate, 1),
                                                    "vs_float32": round(rate / base, 3),
                                                    "eval_accuracy": round(accuracy, 4), "runs": len(ok)}
            print(f"  {variant:26s} {rate:8,.0f} ex/s  {rate / base:5.2f}x float32  eval acc {accuracy:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": CORES, "results": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
