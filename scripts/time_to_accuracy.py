"""Seconds until a run's eval accuracy first reached each target, read from its TensorBoard events.

    python scripts/time_to_accuracy.py outputs/2026-12-02/08-00-00            # 0.91 and 0.93
    python scripts/time_to_accuracy.py RUN_DIR --targets 0.9 0.95 --tag eval/accuracy

The clock starts at the run's first TensorBoard event (written while the run starts, before the
data is scanned: the set-up is counted) and stops at the wall time of the first `--tag` event at
or above the target. A resumed run's events span both processes; the gap between them counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator
from tensorboard.util import tensor_util


def times_to(logdir: Path, tag: str, targets: list[float]) -> tuple[dict[float, tuple[float, int] | None], float]:
    """{target: (seconds, step) or None if never reached}, and the best value seen."""
    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    if tag not in tags:
        raise SystemExit(f"no {tag!r} events in {logdir} (it has: {', '.join(sorted(tags)) or 'none'})")
    start = min(event.wall_time for t in tags for event in acc.Tensors(t))
    events = [(e.wall_time, e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    events.sort()
    found: dict[float, tuple[float, int] | None] = {}
    for target in targets:
        hit = next(((wall - start, step) for wall, step, value in events if value >= target), None)
        found[target] = hit
    return found, max(value for _, _, value in events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tag", default="eval/accuracy")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.91, 0.93])
    args = parser.parse_args(argv)
    logdir = args.run_dir / "tb" if (args.run_dir / "tb").is_dir() else args.run_dir
    found, best = times_to(logdir, args.tag, args.targets)
    for target, hit in found.items():
        print(f"{args.tag} >= {target:g}: " + (f"{hit[0]:.0f} s (step {hit[1]})" if hit else f"not reached "
                                                                                            f"(best {best:.4f})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
