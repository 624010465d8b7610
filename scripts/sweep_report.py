"""One row per job of a Hydra multirun: what it ran with and what it got.

    python -m safetrain -m hardware.precision=float32,auto trainer.batch_size=64,256
    python scripts/sweep_report.py multirun/2026-11-22/10-00-00

Reads each job's report.json and .hydra/overrides.yaml; prints precision, batch size, strategy,
examples/s, test accuracy, status and exit code, with the job's overrides. Failed jobs are rows
too (with their error kind), so a sweep never hides a crash. `--json` prints the rows as JSON.
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
            "test_accuracy": (report.get("metrics") or {}).get("test_accuracy"),
            "status": report.get("status") + (f" ({report['error']['kind']})" if report.get("error") else ""),
            "exit_code": report.get("exit_code"),
            "overrides": " ".join(overrides),
        })
    return out


def table(found: list[dict]) -> str:
    columns = ("job", "precision", "batch_size", "strategy", "examples_per_sec", "test_accuracy", "status",
               "exit_code", "overrides")

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (multirun/DATE/TIME)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        print(f"sweep_report: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    found = rows(args.sweep_dir)
    print(json.dumps(found, indent=2) if args.json else table(found))
    return 0 if all(r.get("exit_code") == 0 for r in found) else 1


if __name__ == "__main__":
    sys.exit(main())
