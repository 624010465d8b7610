"""Fault soak: short real runs with injected faults, and a check of every final state.

    python scripts/soak.py                  # 10 runs, faults drawn at random (seeded)
    python scripts/soak.py --runs 25 --seed 7
    python scripts/soak.py --runs 5 --faults sigkill,sigterm,truncated_checkpoint   # the CI subset

Each run is `python -m safetrain +debug=tiny` (24 steps over 3 epochs, a checkpoint every 3
steps) in a fresh run dir, with one fault:

- sigkill: SIGKILL at a random step, then rerun the same command. Nothing can be saved at a
  SIGKILL; the rerun must resume from the newest checkpoint on disk and finish.
- sigterm: SIGTERM at a random step: exit 143, report.json `interrupted`, a checkpoint at exactly
  the step reached; the rerun resumes there and finishes.
- truncated_checkpoint: a run stops at a random step; its newest checkpoint is cut to a third
  (a crash mid-write); the rerun warns, falls back to the previous checkpoint and finishes.
- nan_steps: a learning rate of 1e12 with trainer.on_nan=skip_step: every non-finite update is
  dropped and listed, the run finishes, and every saved tensor is finite.
- corrupt_image: an image folder with one corrupt file and dataset.on_bad_example=skip: the run
  finishes, and the file is counted and named in errors.jsonl.

"Steps lost beyond the last checkpoint" counts, for the interrupted runs, the steps between the
newest readable checkpoint on disk and where the rerun resumed (or, for SIGTERM, between the step
reached and the checkpoint saved). It must be 0. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ("sigkill", "sigterm", "truncated_checkpoint", "nan_steps", "corrupt_image")
STEPS_PER_EPOCH, EPOCHS = 8, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS
BASE = ("+debug=tiny", f"trainer.epochs={EPOCHS}", "trainer.max_steps=null", "trainer.checkpoint_every_steps=3",
        "trainer.log_every_steps=1")
DEADLINE_S = 240


class Soak:
    def __init__(self, work: Path, data_dir: Path) -> None:
        self.work, self.data_dir = work, data_dir
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.lost = 0
        self.failures: list[str] = []

    def cmd(self, run_dir: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "safetrain", *BASE, f"hydra.run.dir={run_dir}",
                f"dataset.data_dir={self.data_dir}", *extra]

    def run(self, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(self.cmd(run_dir, *extra), capture_output=True, text=True, env=self.env,
                                  timeout=DEADLINE_S, cwd=self.work)
        except subprocess.TimeoutExpired as err:  # subprocess.run kills the child
            return subprocess.CompletedProcess(err.cmd, -9, "", f"timed out after {DEADLINE_S} s")

    def signal_at(self, run_dir: Path, step: int, signum: int) -> int:
        """Start a run and send `signum` once it logs global step `step`; return its exit code."""
        proc = subprocess.Popen(self.cmd(run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=self.env, cwd=self.work)
        deadline = time.monotonic() + DEADLINE_S
        for line in proc.stderr:
            m = re.search(r"epoch (\d+)/\d+ step (\d+)/", line)
            if m and (int(m.group(1)) - 1) * STEPS_PER_EPOCH + int(m.group(2)) >= step:
                proc.send_signal(signum)
                break
            if time.monotonic() > deadline:
                proc.kill()
                break
        try:
            proc.communicate(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        return proc.returncode

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.failures.append(what)
        return ok

    # --- the faults ---------------------------------------------------------------------------

    def sigkill(self, run_dir: Path, rng: random.Random) -> bool:
        code = self.signal_at(run_dir, rng.randint(2, TOTAL - 2), signal.SIGKILL)
        newest = _newest_checkpoint(run_dir)
        again = self.run(run_dir)
        return self._resumed(run_dir, again, newest, f"sigkill (exit {code})")

    def sigterm(self, run_dir: Path, rng: random.Random) -> bool:
        code = self.signal_at(run_dir, rng.randint(2, TOTAL - 2), signal.SIGTERM)
        report = _report(run_dir)
        if not self.check(code == 143 and report.get("status") == "interrupted",
                          f"sigterm: exit {code}, {report.get('status')}"):
            return False
        saved = _newest_checkpoint(run_dir)
        self.lost += max(0, report["steps"] - (saved or 0))
        self.check(saved == report["steps"], f"sigterm: stopped at {report['steps']}, checkpoint at {saved}")
        return self._resumed(run_dir, self.run(run_dir), saved, "sigterm")

    def truncated_checkpoint(self, run_dir: Path, rng: random.Random) -> bool:
        first = self.run(run_dir, f"trainer.max_steps={rng.randint(7, TOTAL - 2)}")
        if not self.check(first.returncode == 0, f"truncated_checkpoint: first run exit {first.returncode}"):
            return False
        newest = _newest_checkpoint(run_dir)
        data = run_dir / "checkpoints" / f"ckpt-{newest}.data-00000-of-00001"
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
        previous = max(n for n in _checkpoint_steps(run_dir) if n != newest)
        again = self.run(run_dir)
        self.check(f"ckpt-{newest} is unreadable" in again.stderr, "truncated_checkpoint: no fallback warning")
        return self._resumed(run_dir, again, previous, "truncated_checkpoint")

    def nan_steps(self, run_dir: Path, rng: random.Random) -> bool:
        done = self.run(run_dir, "optimizer=sgd", "optimizer.learning_rate=1e12", "trainer.on_nan=skip_step")
        report = _report(run_dir)
        skipped = report.get("data", {}).get("skipped_steps", 0)
        listed = [e for e in _errors(run_dir) if e["kind"] == "non_finite"]
        return (self.check(done.returncode == 0 and report.get("steps") == TOTAL, f"nan_steps: exit {done.returncode}")
                and self.check(skipped >= 1 and len(listed) == skipped,
                               f"nan_steps: {skipped} skipped, {len(listed)} listed")
                and self.check(_checkpoints_finite(run_dir), "nan_steps: a saved tensor is not finite"))

    def corrupt_image(self, run_dir: Path, rng: random.Random) -> bool:
        folder = _image_folder(self.work / f"images-{run_dir.name}", rng)
        bad = folder / "b" / "corrupt.png"
        done = self.run(run_dir, "dataset=image_folder", f"dataset.path={folder}", "dataset.on_bad_example=skip",
                        "dataset.image.height=16", "dataset.image.width=16", "dataset.image.channels=1",
                        "dataset.channel_policy=convert", "dataset.max_examples=null", "trainer.batch_size=4")
        report = _report(run_dir)
        named = [e for e in _errors(run_dir) if e.get("example") == str(bad)]
        return (self.check(done.returncode == 0, f"corrupt_image: exit {done.returncode}: {done.stderr[-300:]}")
                and self.check(report["data"]["skipped"] == 1 and len(named) == 1, "corrupt_image: not counted/named"))

    def _resumed(self, run_dir: Path, again: subprocess.CompletedProcess, expected: int | None, fault: str) -> bool:
        m = re.search(r"resuming from checkpoint at step (\d+)", again.stderr)
        resumed = int(m.group(1)) if m else 0
        self.lost += max(0, (expected or 0) - resumed)
        return (self.check(again.returncode == 0, f"{fault}: rerun exit {again.returncode}: {again.stderr[-300:]}")
                and self.check(resumed == (expected or 0),
                               f"{fault}: resumed at {resumed}, newest checkpoint {expected}")
                and self.check(_report(run_dir).get("steps") == TOTAL, f"{fault}: rerun did not finish"))


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name[5:-6]) for p in (run_dir / "checkpoints").glob("ckpt-*.index"))


def _newest_checkpoint(run_dir: Path) -> int | None:
    steps = _checkpoint_steps(run_dir) if (run_dir / "checkpoints").is_dir() else []
    return steps[-1] if steps else None


def _report(run_dir: Path) -> dict:
    path = run_dir / "report.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _errors(run_dir: Path) -> list[dict]:
    path = run_dir / "errors.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpoints_finite(run_dir: Path) -> bool:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()  # quietly

    for step in _checkpoint_steps(run_dir):
        reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / f"ckpt-{step}"))
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if getattr(value, "dtype", None) is not None and value.dtype.kind == "f" and not np.isfinite(value).all():
                return False
    return True


def _image_folder(root: Path, rng: random.Random) -> Path:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(rng.randint(0, 2**31))
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            Image.fromarray(pixels.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "b" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(pixels.integers(0, 256, 200, dtype=np.uint8)))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of " + ", ".join(FAULTS))
    parser.add_argument("--data-dir", default=None, help="TFDS data dir for the digits (default: a temporary one)")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="safetrain-soak-"))
    soak = Soak(work, Path(args.data_dir) if args.data_dir else work / "tfds")
    completed = 0
    for i in range(args.runs):
        fault = faults[i % len(faults)] if i < len(faults) else rng.choice(faults)
        started = time.monotonic()
        ok = getattr(soak, fault)(work / f"run{i:02d}-{fault}", rng)
        completed += ok
        took = time.monotonic() - started
        print(f"run {i + 1:2d}/{args.runs}  {fault:<21} {'ok' if ok else 'FAILED'}  ({took:.0f} s)", flush=True)
    print(f"faults injected {args.runs}, runs completed {completed}, steps lost beyond last checkpoint {soak.lost}")
    for failure in soak.failures:
        print(f"  failed: {failure}")
    return 0 if completed == args.runs and soak.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
