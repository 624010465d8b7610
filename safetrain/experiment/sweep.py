"""Each multirun job in its own process, so no TensorFlow state leaks from one job into the next.

Hydra's basic launcher calls the task function once per job in one process. TensorFlow keeps
process-global state that a job cannot undo: logical device splits (`hardware.logical_cpus`),
`enable_op_determinism`, the Keras dtype policy, traced functions and allocator memory. So with
`isolate_jobs=true` (the default) the Hydra process only composes each job's config (type
errors fail there) and then runs `python -m safetrain` for it in a child process, in the job's own output directory.
The parent never imports TensorFlow. Launchers other than the basic one (submitit, joblib)
already give every job its own process and are left alone.

Signals: the child runs in its own session, so a Ctrl-C reaches it once — forwarded by the
parent — and it checkpoints and exits 130/143 as a single run would; the sweep then stops.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from safetrain.core.errors import EXIT_SIGINT, EXIT_SIGTERM

# Hydra overrides that describe the sweep itself; the child is a plain run in the job's directory.
_SWEEP_ONLY = ("hydra.mode=", "hydra.sweep.", "hydra.run.", "hydra.job.num=", "hydra.job.id=",
               "hydra/launcher=", "hydra/sweeper=", "hydra.launcher.", "hydra.sweeper.")

# Command-line flags (not overrides) that choose where configs come from; the child needs them too.
CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def uses_basic_launcher(launcher_target: str) -> bool:
    return launcher_target.endswith("BasicLauncher")


def child_command(task_overrides: Sequence[str], hydra_overrides: Sequence[str], job_dir: Path,
                  config_flags: Sequence[str] = (), debug: bool = False) -> list[str]:
    hydra = [o for o in hydra_overrides if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
    return [sys.executable, "-m", "safetrain", *config_flags, *task_overrides, *hydra,
            f"hydra.run.dir={job_dir}", *(["debug=true"] if debug else [])]


def run_job_process(command: list[str]) -> int:
    """Run one job to its end and return its exit code; stop the sweep if it was interrupted."""
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum, frame):
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code < 0:  # killed by a signal it did not handle (SIGKILL, say): report it like a shell does
        code = 128 - code
    if code in (EXIT_SIGINT, EXIT_SIGTERM):
        sys.exit(code)  # the user stopped the sweep; the remaining jobs do not start
    return code
