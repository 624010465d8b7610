"""One run, wrapped so that whatever happens the error is recorded and report.json is written.

Order: typed config -> validation (no TensorFlow yet; config errors exit 2 in about a second)
-> training (imports TensorFlow). Expected errors print one paragraph and no traceback unless
`debug=true`; unexpected ones are bugs and keep their traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from safetrain.train.cluster import output_dir
from safetrain.config.hydra_errors import check_keys
from safetrain.experiment.precision import math_mode_before_tensorflow
from safetrain.experiment.validate import resolve, validate
from safetrain.train.precision_cache import ONEDNN_MATH_ENV
from safetrain.core.errors import EXIT_SIGINT, ConfigError, ErrorKind, Phase, SafetrainError, Status
from safetrain.record.run_record import RunRecord
from safetrain.record.rundir import check_free_space, check_writable
from safetrain.train.signals import Interrupted, SignalGuard
from safetrain.record import names

log = logging.getLogger("safetrain")


def execute(node: DictConfig, run_dir: Path) -> int:
    checkpoint_dir = run_dir / names.CHECKPOINTS   # the chief's, which every worker restores from
    run_dir = output_dir(run_dir)              # a non-chief worker writes under worker-<i>/
    try:
        check_writable(run_dir)
    except ConfigError as err:  # no report.json can be written either: say it and stop
        log.error("safetrain: %s error (exit %d): %s", err.kind, err.exit_code, err)
        return err.exit_code
    record = RunRecord(run_dir, name=str(node.get("name", "")))
    started = record.started
    report = record.report
    debug = bool(node.get("debug", False))
    guard = SignalGuard().install()
    code = 1

    try:
        check_keys(node)
        cfg = resolve(OmegaConf.to_object(node))
        report.name = cfg.name
        plan = validate(cfg)
        check_free_space(run_dir, plan.total_params)
        math_mode = _math_mode(cfg)
        from safetrain.core.tf_import import import_tensorflow

        import_tensorflow(verbose=debug)  # the first TensorFlow import of the run
        from safetrain.experiment.train import train

        train(cfg, plan, record, guard, checkpoint_dir=checkpoint_dir, math_mode=math_mode)
        report.status, code = Status.ok, 0
    except SafetrainError as err:
        code = _failed(err, record, debug)
    except (KeyboardInterrupt, Interrupted) as err:
        code = getattr(err, "exit_code", EXIT_SIGINT)
        report.status = Status.interrupted
        report.error = _interrupted(err, code, report.steps, run_dir)
        log.error("safetrain: interrupted (exit %d): %s; %s", code, report.error["message"], report.error["hint"])
    except Exception as err:  # a bug in safetrain or an unclassified failure: keep the traceback
        report.error = {"kind": ErrorKind.internal, "message": f"{err.__class__.__name__}: {err}",
                        "hint": "this looks like a safetrain bug; rerun with debug=true and report it",
                        "config_key": None}
        record.event(phase=Phase.train, kind=ErrorKind.internal, message=report.error["message"],
                     hint=report.error["hint"], step=report.steps or None)
        traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        guard.restore()
        record.close(code, round(time.monotonic() - started, 3))
    log.info("run directory: %s", run_dir)
    return code


def _math_mode(cfg) -> str | None:
    """oneDNN's math mode TensorFlow will start with: a cached precision trial may set it (it is
    read only at start-up); None when TensorFlow already runs in this process (what it started
    with is then unknown here) or nothing sets it."""
    if "tensorflow" in sys.modules:
        return None
    math_mode_before_tensorflow(cfg)
    return os.environ.get(ONEDNN_MATH_ENV) or None


def _interrupted(err: BaseException, code: int, steps: int, run_dir: Path) -> dict:
    """report.json `error` for a run a signal ended: which signal, at which step, what was saved."""
    name = err.signal_name if isinstance(err, Interrupted) else "SIGINT"
    saved = err.saved_step if isinstance(err, Interrupted) else None
    where = (f"checkpoint saved at step {saved}" if saved is not None else
             "no checkpoint for it (the signal came outside training steps; the last periodic one stands)")
    return {"kind": ErrorKind.interrupted, "message": f"{name} at step {steps}; {where}",
            "hint": f"rerun the same command with hydra.run.dir={run_dir} to resume", "config_key": None}


def _failed(err: SafetrainError, record: RunRecord, debug: bool) -> int:
    """Record an expected error everywhere it belongs and print its one paragraph."""
    record.fail(err)
    log.error("safetrain: %s error (exit %d): %s", err.kind, err.exit_code, err)
    if debug:
        log.error("%s", traceback.format_exc())
    return err.exit_code
