"""report.json and errors.jsonl: the run's record, written whatever happens.

report.json is replaced atomically (write a temp file, fsync, rename) so a crash or a kill never
leaves a half-written report; errors.jsonl is appended line by line and flushed, so each event
survives the process. TensorFlow-free.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetrain.core.errors import Status
from safetrain.record import names


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(_clean(data), fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class RunReport:
    """The fields of report.json (SPEC "Run directory"); filled in as the run goes."""

    name: str = ""
    status: Status = Status.failed     # ok | failed | interrupted
    exit_code: int = 1
    error: dict | None = None
    metrics: dict = field(default_factory=lambda: {
        "train_loss": None, "train_accuracy": None, "eval_accuracy": None, "test_accuracy": None,
        "eval_loss": None, "test_loss": None})
    throughput: dict = field(default_factory=lambda: {
        "examples_per_sec": None, "input_wait_fraction": None,
        "step_time_ms_p50": None, "step_time_ms_p90": None})
    hardware: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # name, params, flops_per_example (forward, inferred)
    data: dict = field(default_factory=lambda: {"skipped": 0, "counts": {}})
    versions: dict = field(default_factory=dict)
    steps: int = 0
    epochs: int = 0
    wall_seconds: float = 0.0
    time_to_first_step_s: float | None = None
    export: dict | None = None        # the SavedModel's path, input, classes and self-check
    calibration: dict | None = None   # {temperature, eval_examples, test: {ece_before, ...}, unsure}
    best: dict | None = None          # the best eval epoch {epoch, step, metric, value}, when one was chosen
    budget: dict | None = None        # trainer.time_budget: {seconds, planned_steps, steps, replans, stopped_by, ...}
    lr_find: dict | None = None       # trainer.lr_find: the suggestion (the curve is in lr_find.json)
    run_dir: str = ""

    def write(self, run_dir: Path) -> Path:
        path = run_dir / names.REPORT
        write_json_atomic(path, asdict(self))
        return path


class ErrorLog:
    """errors.jsonl: one JSON object per captured error or bad-example event."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, *, phase: str, kind: str, message: str, hint: str = "", step: int | None = None,
              config_key: str | None = None, tf_error_class: str | None = None, op: str | None = None,
              example: str | int | None = None, other_example: str | None = None, sync: bool = True) -> None:
        """`other_example`: the second file of a pair (duplicates, leakage). `sync=False` for all but
        the last of many records written at once (one fsync, not thousands)."""
        record = {"time": time.time(), "step": step, "phase": phase, "kind": kind,
                  "tf_error_class": tf_error_class, "op": op, "message": message, "hint": hint,
                  "config_key": config_key}
        if example is not None:
            record["example"] = example
        if other_example is not None:
            record["other_example"] = other_example
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(record)) + "\n")
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
