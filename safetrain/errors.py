"""One error hierarchy for everything a user can get wrong, each with its exit code.

Every error carries the parts of the one-paragraph message the SPEC asks for: what went wrong
(`message`), where (`config_key`, and whatever the message names: layer, file, op) and the fix
(`hint`). The CLI prints `str(error)` and exits with `error.exit_code`; no traceback unless
`debug=true`. Each class also subclasses the matching builtin so generic callers still work.
This module must stay importable without TensorFlow.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_GRAPH = 4
EXIT_NUMERICS = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class SafetrainError(Exception):
    """Base of all expected errors; never raised directly."""

    exit_code = 1
    kind = "error"
    phase = "train"

    def __init__(self, message: str, *, hint: str = "", config_key: str | None = None,
                 kind: str | None = None, op: str | None = None,
                 tf_error_class: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.config_key = config_key
        self.op = op
        self.tf_error_class = tf_error_class
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text

    def as_record(self) -> dict:
        """The `error` object of report.json."""
        return {"kind": self.kind, "message": self.message, "hint": self.hint,
                "config_key": self.config_key}


class ConfigError(SafetrainError, ValueError):
    """A config value, key or name is wrong; found before TensorFlow is imported."""

    exit_code = EXIT_CONFIG
    kind = "config"
    phase = "config"


class SpecError(SafetrainError, ValueError):
    """The data and model specs cannot fit together (shapes, dtypes, channels)."""

    exit_code = EXIT_CONFIG
    kind = "spec"
    phase = "build"


class HardwareError(SafetrainError, RuntimeError):
    """The requested precision or strategy cannot run on the detected devices."""

    exit_code = EXIT_CONFIG
    kind = "hardware"
    phase = "config"


class DataError(SafetrainError, IOError):
    """The data could not be loaded (download failed, missing files, bad example)."""

    exit_code = EXIT_DATA
    kind = "data"
    phase = "data"


class GraphError(SafetrainError, RuntimeError):
    """TensorFlow failed while tracing or running a step."""

    exit_code = EXIT_GRAPH
    kind = "graph"
    phase = "train"


class ClusterError(SafetrainError, RuntimeError):
    """The workers of a multi-worker run could not form or keep their cluster."""

    exit_code = EXIT_GRAPH
    kind = "cluster"
    phase = "build"


class NumericsError(SafetrainError, ArithmeticError):
    """The loss became NaN or Inf and `trainer.on_nan=stop`."""

    exit_code = EXIT_NUMERICS
    kind = "non_finite"
    phase = "train"
