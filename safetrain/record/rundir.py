"""The run directory must take what the run will write, checked before training starts.

A run dir on a read-only mount or a full disk would otherwise fail at the first checkpoint —
possibly an hour in — or leave no report at all. TensorFlow-free: runs right after validation.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from safetrain.core.errors import ConfigError

# TensorBoard logs, report, logs and the scan's notes: a generous allowance beside checkpoints.
_OVERHEAD_BYTES = 64 * 2**20


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".safetrain-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"the run directory {run_dir} cannot be written ({err.__class__.__name__}: "
                          f"{err.strerror or err})",
                          hint="set hydra.run.dir to a folder you can write to", config_key="hydra.run.dir") from None


def checkpoint_bytes(params: int, max_to_keep: int = 3) -> int:
    """float32 weights plus up to two optimizer slots (Adam), for each checkpoint kept (+1 being written)."""
    return params * 4 * 3 * (max_to_keep + 1)


def check_free_space(run_dir: Path, params: int, usage: Callable[[str], tuple] = shutil.disk_usage) -> None:
    need = checkpoint_bytes(params) + _OVERHEAD_BYTES
    free = usage(str(run_dir)).free
    if free < need:
        raise ConfigError(f"the run directory {run_dir} has {free / 2**20:,.0f} MiB free, but this run's "
                          f"checkpoints and logs need about {need / 2**20:,.0f} MiB "
                          f"({params:,} parameters, 3 checkpoints kept)",
                          hint="free disk space, or set hydra.run.dir to a disk with room", config_key="hydra.run.dir")
