"""The run's record: report.json, errors.jsonl and TensorBoard behind one small interface.

Everything a run writes about itself goes through one `RunRecord`: the run (safetrain.experiment)
records each setup result once, the loop and the actions log scalars and events, and `fail` records an
expected error everywhere it belongs (report.json `error`, an errors.jsonl line, TensorBoard's
`errors/graph` once TensorBoard is open). `close` flushes TensorBoard and writes report.json,
whatever happened. TensorFlow-free until TensorBoard is opened (config errors never import it).
"""

from __future__ import annotations

from pathlib import Path

from safetrain.core.errors import ErrorKind, SafetrainError, Status
from safetrain.core.run_state import run_started
from safetrain.record.report import ErrorLog, RunReport
from safetrain.record.summaries import Summaries
from safetrain.record import names


def graph_text(error: SafetrainError, note: str = "") -> str:
    """The TensorBoard errors/graph entry: the same paragraph the terminal shows, plus the record."""
    return (f"{error.kind} (phase {error.phase}, exit {error.exit_code})\n{error}\n"
            f"config key: {error.config_key or '-'} | op: {error.op or '-'} | "
            f"TensorFlow error: {error.tf_error_class or '-'}" + (f"\n{note}" if note else ""))


class RunRecord:
    def __init__(self, run_dir: Path, name: str = "") -> None:
        self.run_dir = run_dir
        self.started = run_started()  # the run's start (report.json wall_seconds; trainer.time_budget)
        self.report = RunReport(name=name, run_dir=str(run_dir))
        self.errors = ErrorLog(run_dir / names.ERRORS)
        self.errors.path.touch()
        self._board: Summaries | None = None

    # --- TensorBoard -------------------------------------------------------------------------
    def open_tensorboard(self) -> None:
        """From here on errors also go to TensorBoard (called once TensorFlow is imported)."""
        if self._board is None:
            self._board = Summaries(self.run_dir / names.TENSORBOARD)

    @property
    def board(self) -> Summaries:
        if self._board is None:
            raise RuntimeError("RunRecord.open_tensorboard() was not called")
        return self._board

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        self.board.scalars(step, values)

    def text(self, tag: str, body: str, step: int = 0, code: bool = True) -> None:
        self.board.text(tag, body, step=step, code=code)

    def image(self, tag: str, image, step: int = 0) -> None:
        self.board.image(tag, image, step=step)

    def hparams(self, values: dict) -> None:
        self.board.hparams(values)

    def flush(self) -> None:
        if self._board is not None:
            self._board.flush()

    # --- events and errors ---------------------------------------------------------------------
    def event(self, *, phase: str, kind: ErrorKind, message: str, hint: str = "", step: int | None = None,
              config_key: str | None = None, example: str | int | None = None, other_example: str | None = None,
              sync: bool = True) -> None:
        """One errors.jsonl line (a bad example, a skipped step, a warning)."""
        self.errors.write(phase=phase, kind=kind, message=message, hint=hint, step=step,
                          config_key=config_key, example=example, other_example=other_example, sync=sync)

    def failure(self, error: SafetrainError, step: int | None = None, message: str | None = None) -> None:
        """An error that happened (or a retry after one): errors.jsonl, and TensorBoard once open."""
        self.errors.write(phase=error.phase, kind=error.kind, message=message or error.message, hint=error.hint,
                          step=step, config_key=error.config_key, tf_error_class=error.tf_error_class, op=error.op)
        if self._board is not None:
            note = message if message and message != error.message else ""
            self._board.text("errors/graph", graph_text(error, note), step=self.report.steps)

    def fail(self, error: SafetrainError) -> None:
        """The error that ends the run: report.json `error` too."""
        self.report.status = Status.failed
        self.report.error = error.as_record()
        for key, value in (error.data or {}).items():  # what the data source found before it stopped
            self.report.data.setdefault(key, value)
        self.failure(error, step=self.report.steps or None)

    def close(self, exit_code: int, wall_seconds: float) -> None:
        """Flush TensorBoard and write report.json atomically; safe to call whatever happened."""
        try:
            if self._board is not None:
                self._board.close()
        finally:
            self.report.exit_code = exit_code
            self.report.wall_seconds = wall_seconds
            self.report.write(self.run_dir)
