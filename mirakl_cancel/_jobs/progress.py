"""Progress display for bulk jobs: one live line on a terminal, periodic log lines otherwise.

A redrawn `\\r` line is the right thing on a terminal and garbage in a CI log or a file,
so the display picks its form from `stream.isatty()`: on a terminal it redraws one line
a few times per second; elsewhere it prints a plain line every `interval` seconds.

What an operator needs from it, learnt from real runs:

- The live line must fit the terminal, whatever its width: a line one column too long
  wraps, and every later `\\r` redraw then starts a new screen line (a flood of
  scrollback). So it is measured against the width at every redraw (a resize is
  followed), the least useful parts are dropped first, and it is cut to `width - 1`
  (some terminals wrap when the last column is written).
- A wait must say what it waits for and until when ("all 1,676 sent; first status
  reads due 19:16:50", "settling until 19:31:00"): a silent minute looks like a hang.
- Rates are over the last `RATE_WINDOW` seconds, not the whole run: an average since the
  start keeps falling during every wait and says nothing about now.
- This run's counts (sent, accepted) are kept apart from the job's (done out of the
  plan, actions being tracked), since on a resume they count different things.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import os
import time
from collections.abc import Callable
from typing import TextIO

from .._constants import DEFAULT_PROGRESS_INTERVAL
from .._text import printable

__all__ = ["RATE_WINDOW", "Progress", "ProgressLogHandler", "terminal_width"]

_REDRAW = 0.2
#: Seconds the "recent" rates look back.
RATE_WINDOW = 30.0
_DEFAULT_WIDTH = 80
_MIN_WIDTH = 20


def terminal_width(stream: TextIO) -> int:
    """Columns of the terminal behind `stream`: `COLUMNS` if set, else the tty's size.

    `COLUMNS` first, as `shutil.get_terminal_size` does, so that a user (or a test) can
    impose a width; the size is asked of `stream` itself (stderr), not of stdout, which
    may well be redirected to a file.
    """
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # not a terminal (io.UnsupportedOperation)
        return _DEFAULT_WIDTH
    return columns if columns > 0 else _DEFAULT_WIDTH


def _clock_time(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fit(parts: list[tuple[int, str]], width: int, sep: str = " | ") -> str:
    """Join `parts` (priority, text) in order, dropping the lowest priorities (highest
    numbers) until the line fits `width`; cut the rest with `...` as a last resort."""
    kept = list(parts)
    while len(kept) > 1 and len(sep.join(t for _, t in kept)) > width:
        worst = max(range(len(kept)), key=lambda i: (kept[i][0], i))
        del kept[worst]
    line = sep.join(t for _, t in kept)
    if len(line) > width:
        line = line[:max(0, width - 3)] + "..." if width > 3 else line[:width]
    return line


class Progress:
    """Counts a job's requests (done out of `total`) and this run's sends, and shows them.

    The run updates the counters; `waiting` / reads-due bookkeeping tells the display
    what a quiet stretch is waiting for. `clock`/`wall` are injectable for tests.
    """

    def __init__(self, total: int, stream: TextIO, *, enabled: bool = True,
                 tty: bool | None = None, interval: float = DEFAULT_PROGRESS_INTERVAL,
                 already: int = 0, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self._width = width
        self._clock = clock
        self._wall = wall
        #: This run: cancels that may have reached the API (a refused connection is not one).
        self.sent = 0
        #: This run: cancels the API accepted (202).
        self.accepted = 0
        #: The job: requests with a known final result (including earlier runs').
        self.resolved = already
        #: The job: accepted actions being tracked now.
        self.tracking = 0
        #: This run: requests to send, and how many of them are over (sent or not).
        self.to_send = 0
        self.sends_over = 0
        #: What a wait is for, set by the run (e.g. "settling until 19:31:00").
        self.waiting: str | None = None
        self._reads_seen = False
        self._due: dict[str, float] = {}
        self._due_heap: list[tuple[float, str]] = []
        self._started = clock()
        self._run_resolved_base = already
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._drawn = 0
        self._stopped = False

    # --- what the run tells the display --------------------------------------------

    def read_due(self, action_id: str, at: float) -> None:
        """The next status read of `action_id` is due at wall time `at` (an estimate)."""
        self._due[action_id] = at
        heapq.heappush(self._due_heap, (at, action_id))

    def read_done(self, action_id: str, next_at: float | None) -> None:
        """A read of `action_id` ended; `next_at`: its next read, None if it is final."""
        self._reads_seen = True
        if next_at is None:
            self._due.pop(action_id, None)
        else:
            self.read_due(action_id, next_at)

    def forget(self, action_id: str) -> None:
        """`action_id` is no longer tracked."""
        self._due.pop(action_id, None)

    def next_read_due(self) -> float | None:
        """The earliest wall time a tracked action's read is due (None: none tracked)."""
        heap = self._due_heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: re-scheduled or finished since
        if not heap:
            if not self._due:
                self._due_heap = []
            return None
        return heap[0][0]

    def sample(self) -> None:
        """Record the counters now, for the recent rates."""
        now = self._clock()
        self._samples.append((now, self.sent, self.resolved))
        while len(self._samples) > 2 and self._samples[1][0] <= now - RATE_WINDOW:
            self._samples.popleft()

    def rates(self) -> tuple[float, float]:
        """(sent/s, done/s) over the last RATE_WINDOW seconds (since the start if sooner)."""
        now = self._clock()
        if self._samples and now - self._samples[0][0] >= 1.0:
            t0, sent0, done0 = self._samples[0]
        else:
            t0, sent0, done0 = self._started, 0, self._run_resolved_base
        span = now - t0
        if span <= 0:
            return 0.0, 0.0
        return (self.sent - sent0) / span, (self.resolved - done0) / span

    # --- rendering ----------------------------------------------------------------

    def phase(self) -> str:
        """What the job is doing or waiting for, in words."""
        if self.waiting:
            return printable(self.waiting)  # may quote ids from the server or the file
        if self.sends_over < self.to_send:
            return f"sending: {self.sent:,}/{self.to_send:,} sent"
        if self.tracking <= 0:
            if self.resolved >= self.total:
                return "done"
            return "starting" if not (self.to_send or self._reads_seen) else "finishing"
        due = self.next_read_due()
        if due is None or due <= self._wall():
            return f"reading the status of {self.tracking:,} action(s)"
        which = "next" if self._reads_seen else "first"
        head = f"all {self.to_send:,} sent; " if self.to_send and not self._reads_seen else ""
        return f"{head}{which} status reads due {_clock_time(due)}"

    def width(self) -> int:
        """Columns available for the live line (re-read at every redraw: resizes)."""
        return max(_MIN_WIDTH, self._width or terminal_width(self.stream))

    def render(self) -> str:
        """The status line for now (one line; on a terminal it fits the width)."""
        self.sample()
        sent_rate, done_rate = self.rates()
        elapsed = _duration(self._clock() - self._started)
        done = f"{self.resolved:,}/{self.total:,} done"
        run = f"this run: {self.sent:,} sent, {self.accepted:,} accepted"
        tracking = f"{self.tracking:,} tracked"
        rates = f"{sent_rate:.1f} sent/s {done_rate:.1f} done/s"
        if not self.tty:
            return (f"progress: {done} (job) | {self.phase()} | {tracking} | {run} | "
                    f"last {RATE_WINDOW:g}s: {rates} | {elapsed}")
        width = self.width() - 1
        fraction = self.resolved / self.total if self.total else 1.0
        bar_width = 20 if width >= 100 else 10
        filled = int(bar_width * fraction)
        bar = f"[{'#' * filled}{'-' * (bar_width - filled)}]"
        # (priority, text): 0 must stay, higher numbers are dropped first when narrow.
        parts = [(0, done), (1, self.phase()), (3, tracking), (2, run), (5, rates),
                 (4, elapsed)]
        line = _fit(parts, width - len(bar) - 1)
        if len(bar) + 1 + len(line) <= width and width >= 50:
            return f"{bar} {line}"
        return _fit(parts, width)

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

    def note(self, text: str) -> None:
        """Print `text` on its own line above the live line (which comes back next tick)."""
        self.clear()
        print(printable(text, limit=None), file=self.stream, flush=True)

    def clear(self) -> None:
        """Erase the live line (before a log line or the summary); redrawn on the next tick."""
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
            self.waiting = None
            self.draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
                self._drawn = 0

    def restart(self) -> None:
        """Show the display again after `stop` (reconciliation's waits come after it)."""
        if self._stopped:
            self._stopped = False
            self.start()


class ProgressLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr log handler that erases the progress line before each record."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.progress: Progress | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
