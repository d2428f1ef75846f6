"""Time for the tracker's scheduler, behind a seam that tests can drive by hand.

The scheduler never sleeps for a fixed time: it waits for "the next due time *or*
something changed" (a new action, a finished poll, a close). Expressing the clock as
`monotonic()` plus `call_at(when, callback)` is what makes that wait work identically
on the event loop and on a manual clock, so edge cases (a 429 at the wrong moment, a
timeout racing a poll) can be tested exactly, without sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "LoopClock", "ManualClock", "TimerHandle"]


class TimerHandle(Protocol):
    """What `Clock.call_at` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time for decisions, wall time for export, and timed callbacks."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, used only to hand times to another process."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` (on the event loop) once `monotonic()` reaches `when`."""
        ...


class LoopClock:
    """The real clock: `time.monotonic()`, with wake-ups scheduled on the running loop.

    It reads `time.monotonic()` rather than `loop.time()` because the transport's poll
    guard does: tracker and transport must agree exactly on when a read happened. The
    timer is placed on the loop's own clock by offset, so a loop whose time differs
    (uvloop) still wakes at the right instant.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (when - time.monotonic()), callback)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told to, for deterministic scheduler tests.

    `advance(dt)` fires the timers that fall due on the way, in order, letting the
    event loop run after each one so that the tasks they wake can react (start a poll,
    reschedule) before time moves on.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        """Sleep on this clock (for fakes that simulate latency)."""
        future = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        self.call_at(self._now + seconds, done)
        await future

    @staticmethod
    async def settle(rounds: int = 30) -> None:
        """Let every ready task run until things calm down."""
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, firing the timers due on the way."""
        target = self._now + seconds
        await self.settle()
        while True:
            while self._timers and self._timers[0][2].cancelled:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > target:
                break
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            timer.callback()
            await self.settle()
        self._now = target
        await self.settle()

    async def run_until(self, predicate: Callable[[], bool], *, step: float = 1.0,
                        limit: float = 100_000.0) -> None:
        """Advance in `step`s until `predicate()` holds (or fail after `limit` seconds)."""
        start = self._now
        await self.settle()
        while not predicate():
            if self._now - start > limit:
                raise AssertionError(f"condition not reached within {limit}s of manual time")
            await self.advance(step)
