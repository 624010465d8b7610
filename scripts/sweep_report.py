"""One row per job of a Hydra multirun: what it ran with and what it got.

    python -m safetrain -m hardware.precision=float32,auto trainer.batch_size=64,256
    python scripts/sweep_report.py multirun/2026-11-22/10-00-00

Reads each job's report.json and .hydra/overrides.yaml; prints precision, batch size, strategy,
examples/s, eval and test accuracy, status and exit code, with the job's overrides. Failed jobs
are rows too (with their error kind), so a sweep never hides a crash. Then the best job — chosen
on eval accuracy, never on test (choosing on test would make its test score optimistic) — and,
when exactly one override varies across the jobs, a plot of that value against the final eval and
test accuracy (`sweep_<key>.png` in the sweep dir, matplotlib). `--json` prints
{rows, best, plot} as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def rows(sweep_dir: Path) -> list[dict]:
    out = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        report_path = job / "report.json"
        overrides_path = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        if not report_path.exists():
            out.append({"job": int(job.name), "status": "no report", "overrides": " ".join(overrides)})
            continue
        report = json.loads(report_path.read_text())
        hardware, throughput = report.get("hardware") or {}, report.get("throughput") or {}
        batch = next((o.split("=", 1)[1] for o in overrides if o.startswith("trainer.batch_size=")), None)
        out.append({
            "job": int(job.name),
            "precision": hardware.get("precision_policy"),
            "batch_size": int(batch) if batch else None,
            "strategy": hardware.get("strategy"),
            "examples_per_sec": throughput.get("examples_per_sec"),
            "eval_accuracy": (report.get("metrics") or {}).get("eval_accuracy"),
            "test_accuracy": (report.get("metrics") or {}).get("test_accuracy"),
            "status": report.get("status") + (f" ({report['error']['kind']})" if report.get("error") else ""),
            "exit_code": report.get("exit_code"),
            "overrides": " ".join(overrides),
        })
    return out


def table(found: list[dict]) -> str:
    columns = ("job", "precision", "batch_size", "strategy", "examples_per_sec", "eval_accuracy", "test_accuracy",
               "status", "exit_code", "overrides")

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.1f}" if value > 1 else f"{value:.4f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in found]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def best(found: list[dict]) -> dict | None:
    """The finished job with the highest eval accuracy (None when no job has one)."""
    ok = [r for r in found if r.get("exit_code") == 0 and r.get("eval_accuracy") is not None]
    return max(ok, key=lambda r: r["eval_accuracy"]) if ok else None


def _parse_overrides(text: str) -> dict[str, str]:
    return dict(o.split("=", 1) for o in text.split() if "=" in o)


def varied(found: list[dict]) -> dict[str, list[str]]:
    """Override keys whose value differs between jobs: key -> the value of each job, in job order."""
    parsed = [_parse_overrides(r.get("overrides", "")) for r in found]
    keys = sorted({k for p in parsed for k in p})
    values = {k: [p.get(k, "(default)") for p in parsed] for k in keys}
    return {k: v for k, v in values.items() if len(set(v)) > 1}


def plot(found: list[dict], sweep_dir: Path) -> Path | None:
    """sweep_<key>.png: the one varied value against eval and test accuracy (None unless exactly one varies)."""
    keys = varied(found)
    if len(keys) != 1 or not found:
        return None
    key, labels = next(iter(keys.items()))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        xs, numeric = [float(v) for v in labels], True
    except ValueError:
        xs, numeric = list(range(len(labels))), False
    order = sorted(range(len(found)), key=lambda i: xs[i])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for metric, marker in (("eval_accuracy", "o-"), ("test_accuracy", "s--")):
        points = [(xs[i], found[i].get(metric)) for i in order if found[i].get(metric) is not None]
        if points:
            ax.plot(*zip(*points), marker, label=metric.replace("_", " "))
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, labels, rotation=20)
    failed = [xs[i] for i in range(len(found)) if found[i].get("exit_code") != 0]
    for x in failed:
        ax.axvline(x, color="red", alpha=0.3)
    ax.set_xlabel(key + ("  (red: failed jobs)" if failed else ""))
    ax.set_ylabel("final accuracy")
    ax.set_title(f"{sweep_dir.name}: {key}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = sweep_dir / f"sweep_{key.replace('/', '_')}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (multirun/DATE/TIME)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"sweep_report: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    found = rows(args.sweep_dir)
    chosen, picture = best(found), plot(found, args.sweep_dir)
    if args.json:
        print(json.dumps({"rows": found, "best": chosen, "plot": str(picture) if picture else None}, indent=2))
    else:
        print(table(found))
        if chosen is not None:
            print(f"best job: {chosen['job']} (eval accuracy {chosen['eval_accuracy']:.4f}, test accuracy "
                  f"{chosen['test_accuracy'] if chosen['test_accuracy'] is None else round(chosen['test_accuracy'], 4)}"
                  f", chosen on eval): {chosen['overrides']}")
        else:
            print("best job: none (no finished job has an eval accuracy; choosing on test would be optimistic)")
        if picture is not None:
            print(f"plot: {picture}")
    return 0 if all(r.get("exit_code") == 0 for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
