"""The Hydra app behind `python -m safetrain` (safetrain/cli.py) and `python -m safetrain.lr_find`,
with config errors turned into exit 2 and one paragraph.

Hydra normally prints composition errors itself and exits 1. We set HYDRA_FULL_ERROR so they
propagate here, explain them against the schema, and exit 2 — all before TensorFlow is
imported (that happens inside the task, after validation). Each job's exit code is collected;
a multirun exits with the worst one.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from safetrain.config import config_dir
from safetrain.config.hydra_errors import explain
from safetrain.config.schema import register
from safetrain.core.errors import ConfigError
from safetrain.experiment.sweep import CONFIG_FLAGS, child_command, run_job_process, uses_basic_launcher

_exit_codes: list[int] = []
# `debug` is both a config key (full tracebacks) and a config group (`+debug=tiny`), and Hydra
# reads `debug=true` on the command line as a group choice. So main() takes `debug=true|false`
# out of argv itself and the task sets the key; YAML configs can still say `debug: true`.
_debug_override: list[bool] = []
_DEBUG_VALUES = {"debug=true": True, "debug=1": True, "debug=false": False, "debug=0": False}
_config_flags: list[str] = []  # --config-dir and friends, repeated for isolated sweep jobs

# `python -m safetrain` is this experiment: its values live in its own file only
# (configs/experiment/digits_cnn.yaml), not also in config.yaml.
DEFAULT_EXPERIMENT = "digits_cnn"


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_app(cfg: DictConfig) -> int:
    from safetrain.experiment.run import execute  # TensorFlow-free until validation has passed

    if _debug_override:
        cfg.debug = _debug_override[-1]
    hc = HydraConfig.get()
    if (hc.mode == RunMode.MULTIRUN and cfg.get("isolate_jobs", True)
            and uses_basic_launcher(str(hc.launcher.get("_target_", "")))):
        code = run_job_process(child_command(hc.overrides.task, hc.overrides.hydra,
                                             Path(hc.runtime.output_dir), _config_flags,
                                             debug=bool(cfg.get("debug", False))))
    else:
        code = execute(cfg, Path(hc.runtime.output_dir))
    _exit_codes.append(code)
    return code


def _flags(args: list[str], names: tuple[str, ...]) -> list[str]:
    """The `names` flags of `args` with their values (`--flag value` or `--flag=value`)."""
    out = []
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            out += [arg, args[i + 1]]
        elif arg.split("=", 1)[0] in names and "=" in arg:
            out.append(arg)
    return out


def refuse_code_execution(args: list[str]) -> ConfigError | None:
    """Configs name components from registries; nothing a command line says is imported or run.
    Hydra itself would instantiate `hydra.callbacks` (and honour `_target_` where a caller asks
    for it) before any safetrain code sees the config, so such overrides are refused up front."""
    for arg in args:
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        # A key segment that *is* _target_ (model._target_, a[0]._target_), or a dict value that
        # names one ({_target_: os.system}); a key that only contains the word
        # (trainer.serving_target_accuracy) is an ordinary setting.
        named = "_target_" in re.split(r"[./\[\]]", key) or re.search(r"(^|[{,\s])_target_\s*:", value)
        if named or key.startswith(("hydra.callbacks", "hydra/callbacks")):
            return ConfigError(
                f"the override {arg!r} asks to import and run code named in a config; safetrain never does "
                f"(no _target_ instantiation, no Hydra callbacks from the command line).",
                hint="choose components by name from the registries (model.layers[].type, optimizer.name, "
                     "dataset.source); Python code goes in models/custom_layers.py", config_key=key)
    return None


_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-dir", "-cd",
                "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def with_default_experiment(args: list[str]) -> list[str]:
    """`args` plus `+experiment=digits_cnn` when they choose no experiment (and no other primary
    config), so the default run and `+experiment=digits_cnn` compose to the same config."""
    chosen = any(a.split("=", 1)[0].lstrip("+~") == "experiment" for a in args)
    if chosen or any(a.split("=", 1)[0] in ("--config-name", "-cn") for a in args):
        return args
    # Hydra's argparse takes the overrides as one run of positional arguments: the added one goes
    # right before the first override, never between flags (or into an optional `--info` value).
    at = 0
    while at < len(args) and args[at].startswith("-"):
        takes_value = args[at] in _VALUE_FLAGS or (args[at] in ("--info", "-i") and at + 1 < len(args)
                                                     and args[at + 1] in _INFO_CHOICES)
        at += 2 if takes_value else 1
    if at == len(args) and args and args[-1] in ("--info", "-i"):
        at -= 1
    return [*args[:at], f"+experiment={DEFAULT_EXPERIMENT}", *args[at:]]


def main(argv: list[str] | None = None) -> None:
    args = with_default_experiment(sys.argv[1:] if argv is None else list(argv))
    refused = refuse_code_execution(args)
    if refused is not None:
        print(f"safetrain: config error (exit {refused.exit_code}): {refused}", file=sys.stderr)
        sys.exit(refused.exit_code)
    _debug_override[:] = [_DEBUG_VALUES[a.lower()] for a in args if a.lower() in _DEBUG_VALUES]
    sys.argv = [sys.argv[0], *(a for a in args if a.lower() not in _DEBUG_VALUES)]
    _config_flags[:] = _flags(args, CONFIG_FLAGS)
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
    except OSError as exc:  # Hydra creates the run dir (and writes .hydra/) before any task code runs
        if debug:
            raise
        error = ConfigError(f"the run directory cannot be created or written: {exc.filename or ''} "
                            f"({exc.__class__.__name__}: {exc.strerror or exc})",
                            hint="set hydra.run.dir (or hydra.sweep.dir) to a folder you can write to",
                            config_key="hydra.run.dir")
        print(f"safetrain: config error (exit {error.exit_code}): {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    sys.exit(max(_exit_codes, default=0))
