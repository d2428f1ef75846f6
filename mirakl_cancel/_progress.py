"""Progress display for bulk jobs: a live bar on a terminal, periodic log lines otherwise.

A redrawn `\\r` bar is the right thing on a terminal and garbage in a CI log or a file,
so the display picks its form from `stream.isatty()`: on a terminal it redraws one line
a few times per second; elsewhere it prints a plain line every `interval` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TextIO

from ._constants import DEFAULT_PROGRESS_INTERVAL

__all__ = ["Progress", "ProgressLogHandler"]

_REDRAW = 0.2


class Progress:
    """Counts requests sent / accepted / resolved out of `total` and shows them."""

    def __init__(self, total: int, stream: TextIO, *, enabled: bool = True,
                 tty: bool | None = None, interval: float = DEFAULT_PROGRESS_INTERVAL,
                 already: int = 0) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self.sent = 0
        self.accepted = 0
        #: Requests with a known final result (including those finished by an earlier run).
        self.resolved = already
        self._already = already
        self._started = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._drawn = 0
        self._stopped = False

    def render(self) -> str:
        """The status line, e.g. `[#####-----] 300/600 resolved | sent 600 ...`."""
        elapsed = time.monotonic() - self._started
        done = self.resolved
        fraction = done / self.total if self.total else 1.0
        bar_width = 24
        filled = int(bar_width * fraction)
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        resolved_rate = (done - self._already) / elapsed if elapsed > 0 else 0.0
        minutes, seconds = divmod(int(elapsed), 60)
        text = (f"{done}/{self.total} resolved | sent {self.sent} accepted {self.accepted} | "
                f"{rate:.1f} sent/s {resolved_rate:.1f} resolved/s | {minutes}:{seconds:02d}")
        if self.tty:
            return f"[{'#' * filled}{'-' * (bar_width - filled)}] {text}"
        return f"progress: {text}"

    def draw(self) -> None:
        """Show the current state once (redraw in place on a terminal)."""
        if not self.enabled:
            return
        line = self.render()
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._drawn = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar (before a log line or the summary), to be redrawn on the next tick."""
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = 0

    async def _run(self) -> None:
        period = _REDRAW if self.tty else self.interval
        while True:
            await asyncio.sleep(period)
            self.draw()

    def start(self) -> None:
        """Start redrawing in the background (no-op when disabled)."""
        if self.enabled and self._task is None:
            if self.tty:
                self.draw()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop redrawing; leave the final state on screen (on a terminal). Once only."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.enabled:
            self.draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = 0


class ProgressLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr log handler that erases the progress bar before each record."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.progress: Progress | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
