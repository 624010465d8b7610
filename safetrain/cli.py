"""`python -m safetrain`: the Hydra app, with config errors turned into exit 2 and one paragraph.

Hydra normally prints composition errors itself and exits 1. We set HYDRA_FULL_ERROR so they
propagate here, explain them against the schema, and exit 2 — all before TensorFlow is
imported (that happens inside the task, after validation). Each job's exit code is collected;
a multirun exits with the worst one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from safetrain.config import config_dir
from safetrain.config.hydra_errors import explain
from safetrain.config.schema import register

_exit_codes: list[int] = []
# `debug` is both a config key (full tracebacks) and a config group (`+debug=tiny`), and Hydra
# reads `debug=true` on the command line as a group choice. So main() takes `debug=true|false`
# out of argv itself and the task sets the key; YAML configs can still say `debug: true`.
_debug_override: list[bool] = []
_DEBUG_VALUES = {"debug=true": True, "debug=1": True, "debug=false": False, "debug=0": False}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_app(cfg: DictConfig) -> int:
    from safetrain.run import execute  # TensorFlow-free until validation has passed

    if _debug_override:
        cfg.debug = _debug_override[-1]

    code = execute(cfg, Path(HydraConfig.get().runtime.output_dir))
    _exit_codes.append(code)
    return code


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    _debug_override[:] = [_DEBUG_VALUES[a.lower()] for a in args if a.lower() in _DEBUG_VALUES]
    sys.argv = [sys.argv[0], *(a for a in args if a.lower() not in _DEBUG_VALUES)]
    debug = bool(_debug_override and _debug_override[-1])
    os.environ["HYDRA_FULL_ERROR"] = "1"
    register()
    _exit_codes.clear()
    try:
        _hydra_app()
    except (HydraException, OmegaConfBaseException) as exc:
        if debug:
            raise
        error = explain(exc)
        print(f"safetrain: config error (exit {error.exit_code}): {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(max(_exit_codes, default=0))
