"""Recipe pieces measured per minute: named variants of an experiment at fixed time budgets, repeated.

    python scripts/recipe_study.py fashion --minutes 15 --variants recipe block_dropout
    python scripts/recipe_study.py shapes --minutes 5 --variants scaffold residual --seeds 0 1 2
    python scripts/recipe_study.py shapes --list        # the variants each study knows

Each run is `python -m safetrain` in a fresh process with `trainer.time_budget` (what a user types),
one after another (a 2-core machine shared by two runs would time neither). `fashion` is
`+experiment=fashion_mnist_recipe` on Debian's Fashion-MNIST (10,000 test images: one image is 0.01
points); `shapes` is the experiment `scripts/new_experiment.py` writes for the 545 real hand-drawn
shapes (`--shapes DIR`; a 54-drawing test split: one drawing is 1.9 points, so a piece is judged on
the mean over `--seeds` and on the 55-drawing eval split too). `trainer.seed` changes the initial
weights, the shuffles, augmentation and dropout; the carved splits stay the same.

Prints one row per run and the mean per variant and budget, with the CPU model; writes
recipe_study.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_budget  # noqa: E402  (runs python -m safetrain and reads its report.json)


def layers_override(*layers: str) -> str:
    """`model.layers=[...]` in Hydra's grammar from short names: c32 (3x3 conv, relu), bn, pool, flat,
    d256 (dense, relu), drop0.3."""
    def one(name: str) -> str:
        if name.startswith("c"):
            return f"{{type:conv2d,filters:{name[1:]},kernel_size:3,padding:same,activation:relu}}"
        if name.startswith("d") and not name.startswith("drop"):
            return f"{{type:dense,units:{name[1:]},activation:relu}}"
        if name.startswith("drop"):
            return f"{{type:dropout,rate:{name[4:]}}}"
        return {"bn": "{type:batch_norm}", "pool": "{type:max_pool,pool_size:2}", "flat": "{type:flatten}"}[name]
    return "model.layers=[" + ",".join(one(n) for n in layers) + "]"


# Each variant is the overrides it adds to the study's base command: a variant of the recipe as the
# config file is now (docs/training-recipes.md says which recipe each measured row ran on).
VARIANTS = {
    "fashion": {
        "recipe": [],
        # the recipe until this study: dropout 0.1 after each conv block too
        "block_dropout": [layers_override("c32", "bn", "c32", "bn", "pool", "drop0.1", "c64", "bn", "c64", "bn",
                                          "pool", "drop0.1", "flat", "d256", "drop0.3")],
        # one conv at 28x28 instead of two: 1.4x the examples a second (the second conv was 38% of the FLOPs)
        "first_single": [layers_override("c32", "bn", "pool", "c64", "bn", "c64", "bn", "pool", "flat", "d256",
                                         "drop0.3")],
        "batch_256": ["trainer.batch_size=256", "optimizer.learning_rate=0.003"],
        "no_ema": ["trainer.ema=null"],
        "no_label_smoothing": ["trainer.label_smoothing=0.0"],
        "augment_none": ["augment=none", "augment.erasing=0.0"],  # the experiment sets erasing over the group
        # the recipe before random erasing (augment.erasing=0.5 since this study)
        "no_erasing": ["augment.erasing=0.0"],
        # mixed_bfloat16 (CPUs with AVX512_BF16/AMX only): on an AMX Xeon the trial measured it at 2.4x float32
        # but rejected it then (its first steps' loss was 12% lower than float32's; the rule is one-sided since)
        "mixed_bf16": ["hardware.precision=mixed_bfloat16"],
    },
    "shapes": {
        "scaffold": [],
        "residual": ["model=cnn_residual"],
        "no_augment": ["augment=none"],
        # what the written experiment's comment offers for drawings whose class ignores orientation
        "any_orientation": ["augment.rotation=0.5", "augment.flip=both"],
        "batch_32": ["trainer.batch_size=32"],
        # the weights' moving average (about 36 epochs of this folder's 28 steps each at batch 16)
        "ema": ["trainer.ema=0.999"],
        # random erasing on half the training images (what took the Fashion-MNIST recipe over 94%)
        "erasing": ["augment.erasing=0.5"],
    },
}


def base(study: str, tmp: Path, shapes: Path, configs: Path | None) -> list[str]:
    if study == "fashion":
        return ["+experiment=fashion_mnist_recipe", "dataset.download=false", "trainer.export=false"]
    if configs is None:
        configs = tmp / "configs"
        bench_budget.scaffold(shapes, "shapes", configs)
    return [f"hydra.searchpath=[file://{configs}]", "+experiment=shapes", "trainer.export=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(VARIANTS))
    parser.add_argument("--variants", nargs="+", help="names from --list (default: all)")
    parser.add_argument("--minutes", nargs="+", default=["1", "5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--shapes", type=Path, default=bench_budget.SHAPES)
    parser.add_argument("--configs", type=Path, help="shapes: a folder where new_experiment.py already wrote "
                        "experiment/shapes.yaml (default: scaffold it again)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    known = VARIANTS[args.study]
    if args.list:
        for name, overrides in known.items():
            print(f"{name}: {' '.join(overrides) or '(as written)'}")
        return
    unknown = [v for v in args.variants or [] if v not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; {args.study} knows {sorted(known)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipe-study-") as tmp:
        command = base(args.study, Path(tmp), args.shapes, args.configs)
        for minutes in args.minutes:
            for seed in args.seeds:
                for name in args.variants or list(known):   # variants interleaved within a seed
                    run_dir = Path(tmp) / f"{name}-{minutes}-{seed}"
                    row = bench_budget.run([*command, *known[name], f"trainer.time_budget={minutes}m",
                                            f"trainer.seed={seed}"], run_dir)
                    rows.append({"variant": name, "minutes": minutes, "seed": seed, **row})
                    print(f"{name} {minutes}m seed {seed}: test {row['test_accuracy']:.4f}, best eval "
                          f"{row['best_eval']}, {row['epochs']} epochs, {row['run_seconds']} s", flush=True)
    cpu = bench_budget.cpu_model()
    print(f"\n{args.study}, {cpu}")
    print("| variant | budget | seed | epochs | run s (used) | best eval | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['minutes']} min | {r['seed']} | {r['epochs']} | {r['run_seconds']} "
              f"({r['used']:.0%}) | {r['best_eval'] or 0:.4f} | {r['test_accuracy']:.4f} |")
    print("\n| variant | budget | runs | mean best eval | mean test accuracy (range) |")
    print("|---|---:|---:|---:|---:|")
    for minutes in args.minutes:
        for name in args.variants or list(known):
            mine = [r for r in rows if r["variant"] == name and r["minutes"] == minutes]
            tests = [r["test_accuracy"] for r in mine]
            evals = [r["best_eval"] or 0.0 for r in mine]
            print(f"| {name} | {minutes} min | {len(mine)} | {statistics.mean(evals):.4f} | "
                  f"{statistics.mean(tests):.4f} ({min(tests):.4f}-{max(tests):.4f}) |")
    out = ROOT / "recipe_study.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    old.setdefault(args.study, []).extend(rows)
    old["cpu"] = cpu
    out.write_text(json.dumps(old, indent=2) + "\n")


if __name__ == "__main__":
    main()
