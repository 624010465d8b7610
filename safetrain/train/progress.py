"""Per-epoch progress: a redrawn bar on a terminal, plain log lines otherwise (CI, files, pipes).

On a terminal the bar is the line the cursor is on; a message logged during the epoch (the
steps-per-call choice, a warning) first clears it — a logger filter that runs before any handler
writes — so the message gets a line of its own instead of being glued to the bar; the bar is
drawn again below it at the next update."""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

log = logging.getLogger("safetrain")

_BAR = 24
_REDRAW_S = 0.1


class Progress:
    def __init__(self, stream: TextIO | None = None, is_tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.clock = clock
        self._last_draw = float("-inf")
        self._prefix = ""
        self._total: int | None = None
        self._drawn = False  # the bar is on the cursor's line

    def filter(self, record: logging.LogRecord) -> bool:
        """logging.Filter protocol: clear the bar before a message is written."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
        return True

    def start_epoch(self, epoch: int, epochs: int, total_steps: int | None) -> None:
        self._prefix = f"epoch {epoch}/{epochs}"
        self._total = total_steps
        self._last_draw = float("-inf")
        if self.is_tty and self not in log.filters:
            log.addFilter(self)

    def update(self, step: int, loss: float, accuracy: float, examples_per_sec: float | None,
               force: bool = False, label: str = "acc") -> None:
        """Terminal: redraw at most every 0.1 s. Not a terminal: only when `force` (log cadence)."""
        if not self.is_tty and not force:
            return  # called every step: no formatting work for lines nobody sees
        stats = f"loss {loss:.4f}  {label} {accuracy:.4f}"
        if examples_per_sec:
            stats += f"  {examples_per_sec:,.0f} ex/s"
        if self.is_tty:
            now = self.clock()
            if not force and now - self._last_draw < _REDRAW_S:
                return
            self._last_draw = now
            if self._total:
                done = min(step, self._total)
                filled = int(_BAR * done / self._total)
                bar = "=" * filled + (">" if filled < _BAR else "") + " " * (_BAR - filled - 1)
                self.stream.write(f"\r{self._prefix} [{bar}] {done}/{self._total}  {stats}\x1b[K")
            else:
                self.stream.write(f"\r{self._prefix} step {step}  {stats}\x1b[K")
            self.stream.flush()
            self._drawn = True
        elif force:
            total = f"/{self._total}" if self._total else ""
            log.info("%s step %d%s  %s", self._prefix, step, total, stats)

    def end_epoch(self, line: str) -> None:
        if self.is_tty:
            self.filter(None)  # clears the bar
            log.removeFilter(self)
        log.info("%s  %s", self._prefix, line)
