"""SIGINT/SIGTERM handling that lets the loop stop at a step boundary with a checkpoint.

Outside training a signal raises `Interrupted` at once. Inside `deferred()` (an epoch's steps
and its end: evaluation, best weights, save) it is only recorded; the loop finishes the step (or
the epoch's end) it is in, saves a checkpoint whose step count matches the weights exactly, then
raises. A second signal while one is pending raises at
once, so a stuck step can still be stopped.
"""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator

from safetrain.core.errors import EXIT_SIGINT, EXIT_SIGTERM


class Interrupted(BaseException):
    """A BaseException, so no `except Exception` in library code swallows it."""

    def __init__(self, exit_code: int, saved_step: int | None = None) -> None:
        super().__init__(f"interrupted (exit {exit_code})")
        self.exit_code = exit_code
        self.saved_step = saved_step  # the step the checkpoint written for this signal holds, if any

    @property
    def signal_name(self) -> str:
        return "SIGTERM" if self.exit_code == EXIT_SIGTERM else "SIGINT"


class SignalGuard:
    def __init__(self) -> None:
        self.pending: int | None = None
        self._deferring = False
        self._previous: dict[int, object] = {}

    def install(self) -> "SignalGuard":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        if self._deferring and self.pending is None:
            self.pending = code
            return
        raise Interrupted(code)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def raise_if_pending(self, saved_step: int | None = None) -> None:
        """`saved_step`: the step of the checkpoint just saved for the pending signal."""
        if self.pending is not None:
            raise Interrupted(self.pending, saved_step)
