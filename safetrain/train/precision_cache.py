"""Precision trials, remembered: one decision per device, versions, model, batch and input.

A rerun, a sweep job or a resume of the same model on the same machine reuses the trial's
decision in milliseconds instead of measuring again. The file lives beside the TFDS data dir
(`<data_dir>/safetrain_precision/trials.json`), never in a run dir: every run on the machine
shares it. Writers take a file lock and replace the file atomically, so the jobs of a sweep
cannot lose each other's entries. TensorFlow-free: the run looks here before TensorFlow starts,
because oneDNN's bfloat16 math mode must be in the environment by then.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from importlib import metadata
from pathlib import Path

CACHE_FOLDER = "safetrain_precision"
# Which rule made a decision (precision_trial.decide); raised when the rule changes what it picks, so a
# decision an older rule made is measured again rather than reused. 2: a lower trial loss is no
# reason to reject (1 rejected any departure over the tolerance, lower ones too).
DECISION_RULE = 2
ONEDNN_MATH_ENV = "TF_SET_ONEDNN_FPMATH_MODE"


def cache_path(data_dir: str | None) -> Path:
    """Where the decisions live: beside the TFDS data dir (dataset.data_dir, TFDS_DATA_DIR, or TFDS's default)."""
    base = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(base).expanduser() / CACHE_FOLDER / "trials.json"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


def trial_key(device: str, model: dict, per_replica_batch: int, input_spec: tuple) -> dict:
    """What a decision depends on, readable (doctor prints it): the device, the TensorFlow and
    Keras versions, the model's layers (and backbone), the per-replica batch, the input spec, and
    the rule that decides (DECISION_RULE)."""
    return {"device": device, "tensorflow": _version("tensorflow"), "keras": _version("keras"),
            "model": model, "per_replica_batch": per_replica_batch, "input": list(input_spec),
            "rule": DECISION_RULE}


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


class PrecisionCache:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict:
        """Every entry: digest -> {key, trial, saved}; {} when there is no readable file."""
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def get(self, key: dict) -> dict | None:
        """The trial recorded for `key`, or None."""
        entry = self.read().get(_digest(key))
        return entry.get("trial") if isinstance(entry, dict) else None

    def put(self, key: dict, trial: dict) -> None:
        """Record `trial` for `key` (read, merge and replace under a lock: concurrent sweep jobs)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            entries = self.read()
            entries[_digest(key)] = {"key": key, "trial": trial, "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True, default=str) + "\n")
            tmp.replace(self.path)

    @contextlib.contextmanager
    def _locked(self):
        with open(self.path.with_name(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def for_device(self, device: str) -> list[dict]:
        """The decisions recorded on `device` (doctor)."""
        return [entry for entry in self.read().values()
                if isinstance(entry, dict) and entry.get("key", {}).get("device") == device]
