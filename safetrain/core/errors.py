"""One error hierarchy for everything a user can get wrong, each with its exit code.

Every error carries the parts of the one-paragraph message the SPEC asks for: what went wrong
(`message`), where (`config_key`, and whatever the message names: layer, file, op) and the fix
(`hint`). The CLI prints `str(error)` and exits with `error.exit_code`; no traceback unless
`debug=true`. Each class also subclasses the matching builtin so generic callers still work.
This module must stay importable without TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_GRAPH = 4
EXIT_NUMERICS = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class ErrorKind(StrEnum):
    """Every `kind` a run records (report.json `error.kind`, errors.jsonl `kind`, the README's
    tables). A StrEnum: it is written to JSON and compared as its plain string."""

    # refused before training
    config = "config"
    spec = "spec"
    hardware = "hardware"
    data = "data"
    bad_example = "bad_example"              # one example refused or skipped (errors.jsonl)
    duplicate = "duplicate"                  # two files of one split hold the same (or a near) image
    leakage = "leakage"                      # the same (or a near) image in two splits
    missing_class = "missing_class"          # a split without any example of a class
    # diagnosed TensorFlow/Keras failures (safetrain.diagnose.diagnosis)
    shape_mismatch = "shape_mismatch"
    dtype_mismatch = "dtype_mismatch"
    unimplemented_kernel = "unimplemented_kernel"
    out_of_memory = "out_of_memory"
    non_finite = "non_finite"
    symbolic_tensor_numpy = "symbolic_tensor_numpy"
    variable_in_tf_function = "variable_in_tf_function"
    missing_gradient = "missing_gradient"
    zero_gradient = "zero_gradient"          # trainer.on_dead_gradient
    label_out_of_range = "label_out_of_range"
    data_decode = "data_decode"
    data_cache = "data_cache"                # an image folder's cached pixel file vanished or broke mid-run
    version_mismatch = "version_mismatch"
    unknown = "unknown"
    # other run events
    build = "build"                          # a custom layer failed its construction-time preflight
    graph = "graph"
    cluster = "cluster"
    checkpoint_fallback = "checkpoint_fallback"
    export_parity = "export_parity"          # an exported format disagrees with the trained model on test files
    interrupted = "interrupted"
    internal = "internal"                    # a safetrain bug (keeps its traceback)
    error = "error"


class Phase(StrEnum):
    """Where in a run something happened (errors.jsonl `phase`, the diagnosis' wording)."""

    config = "config"  # composing and checking the config, before TensorFlow
    data = "data"      # reading, scanning and checking the data
    build = "build"    # building the model, its optimizer, the backbone's weights
    trace = "trace"    # a Python exception while a step function was being traced
    train = "train"
    eval = "eval"


class Status(StrEnum):
    """How a run ended (report.json `status`)."""

    ok = "ok"
    failed = "failed"
    interrupted = "interrupted"


@dataclass(frozen=True)
class Explanation:
    """Why something failed, the fix, and the config key to change (None when no key fits)."""

    why: str
    fix: str
    config_key: str | None = None


class SafetrainError(Exception):
    """Base of all expected errors; never raised directly."""

    exit_code = 1
    kind: ErrorKind = ErrorKind.error
    phase = Phase.train

    def __init__(self, message: str, *, hint: str = "", config_key: str | None = None,
                 kind: ErrorKind | None = None, op: str | None = None,
                 tf_error_class: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.config_key = config_key
        self.op = op
        self.tf_error_class = tf_error_class
        # What a data source had found when it stopped (report.json `data`: a table's bad rows, the
        # duplicates), so a refused dry run still records it; set by the raiser, None when nothing.
        self.data: dict | None = None
        if kind is not None:
            self.kind = ErrorKind(kind)

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
    kind = ErrorKind.config
    phase = Phase.config


class SpecError(SafetrainError, ValueError):
    """The data and model specs cannot fit together (shapes, dtypes, channels)."""

    exit_code = EXIT_CONFIG
    kind = ErrorKind.spec
    phase = Phase.build


class HardwareError(SafetrainError, RuntimeError):
    """The requested precision or strategy cannot run on the detected devices."""

    exit_code = EXIT_CONFIG
    kind = ErrorKind.hardware
    phase = Phase.config


class DataError(SafetrainError, IOError):
    """The data could not be loaded (download failed, missing files, bad example)."""

    exit_code = EXIT_DATA
    kind = ErrorKind.data
    phase = Phase.data


class GraphError(SafetrainError, RuntimeError):
    """TensorFlow failed while tracing or running a step."""

    exit_code = EXIT_GRAPH
    kind = ErrorKind.graph
    phase = Phase.train


class ClusterError(SafetrainError, RuntimeError):
    """The workers of a multi-worker run could not form or keep their cluster."""

    exit_code = EXIT_GRAPH
    kind = ErrorKind.cluster
    phase = Phase.build


class NumericsError(SafetrainError, ArithmeticError):
    """The loss became NaN or Inf and `trainer.on_nan=stop`."""

    exit_code = EXIT_NUMERICS
    kind = ErrorKind.non_finite
    phase = Phase.train


class NanStop(NumericsError):
    """The loop's own stop at the first non-finite step (trainer.on_nan=stop), before any
    checkpoint could save the poisoned weights; `step` is the failing step. The assembler replays
    from the last checkpoint to name the op (safetrain.diagnose.replay)."""

    def __init__(self, message: str, *, step: int, hint: str = "") -> None:
        super().__init__(message, hint=hint, config_key="trainer.on_nan")
        self.step = step
