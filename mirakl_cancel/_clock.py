"""The one clock of a client: monotonic time, wall time, sleeps and timers, injected.

Every rule that depends on time (the transport's retry and 429 pauses and its rate
limit, the poll guard's once-a-minute ceiling, a token's expiry, the tracker's
schedule) reads the clock the client was built with, never `time` or `asyncio.sleep`
directly. The real clock (`SYSTEM_CLOCK`) is the default; a test hands the client a
`ManualClock` instead and runs those very rules in manual time, without sleeping and
without patching modules. aiohttp's own socket timeouts stay on the event loop: they
bound real I/O, which no test clock can speed up.

The tracker's scheduler never sleeps for a fixed time: it waits for "the next due time
*or* something changed" (a new action, a finished poll, a close). Expressing the clock
as `monotonic()` plus `call_at(when, callback)` is what makes that wait work
identically on the event loop and on a manual clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Final, Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "LoopClock", "ManualClock", "TimerHandle", "current_clock"]


class TimerHandle(Protocol):
    """What `Clock.call_at` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Monotonic time for decisions, wall time for dates, sleeps and timed callbacks."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps; only differences are meaningful."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch: for dates (an HTTP-date Retry-After, a timestamp
        handed to another process), never for measuring a wait."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` on this clock."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback` (on the event loop) once `monotonic()` reaches `when`."""
        ...


class LoopClock:
    """The real clock: `time.monotonic()`, sleeps and wake-ups on the running loop.

    It reads `time.monotonic()` rather than `loop.time()` because the poll guard's
    on-disk record (shared with other processes) is kept in the machine's monotonic
    time. The timer is placed on the loop's own clock by offset, so a loop whose time
    differs (uvloop) still wakes at the right instant. The methods are the functions
    themselves (no wrapper): the transport reads the clock on every request.
    """

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    @staticmethod
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds)

    @staticmethod
    def call_at(when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_at(loop.time() + (when - time.monotonic()), callback)


#: The real clock, the default of every client. Only rules on this clock may use the
#: machine-wide poll record (whose times are the machine's monotonic time).
SYSTEM_CLOCK: Final = LoopClock()

#: The clock of the client whose coroutine is running, set by the transport around a
#: token fetch when it is not the real one (the token's expiry follows it).
current_clock: contextvars.ContextVar[Clock | None] = contextvars.ContextVar(
    "mirakl_cancel_clock", default=None)


class _ManualTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to, for deterministic tests of time rules.

    Give it to `MiraklConnectClient(clock=...)` (the tracker, the poll guard and the
    token cache follow the client's clock) or to `ActionTracker(clock=...)`.

    By default time stands still until the test moves it: `advance(dt)` fires the timers
    and wakes the sleepers that fall due on the way, in order, letting the event loop
    run after each one so that the tasks they wake can react before time moves on;
    `next_due()` waits (on the event loop) until something sleeps on the clock and says
    when. With `auto_advance=True`, a sleep instead moves time forward by its own
    length at once: code under test runs through its waits without a driver (and
    concurrent sleeps add up, as if run one after the other). Either way `sleeps`
    lists every sleep asked for, in seconds, and nothing sleeps for real.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0, *,
                 auto_advance: bool = False) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()
        self._added: asyncio.Event | None = None
        self.auto_advance = auto_advance
        #: Every sleep asked for on this clock, in seconds, in order.
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        if self._added is not None:
            self._added.set()
        return timer

    async def sleep(self, seconds: float) -> None:
        """Sleep on this clock: until `advance` passes the time (or, with
        `auto_advance`, move time forward by `seconds` and yield once)."""
        self.sleeps.append(seconds)
        if self.auto_advance:
            self._now += max(seconds, 0.0)
            self._fire_due()
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        handle = self.call_at(self._now + seconds, done)
        try:
            await future
        finally:
            handle.cancel()

    def _fire_due(self) -> None:
        """Run (soon, on the loop) the timers that auto-advanced time has passed."""
        loop = asyncio.get_running_loop()
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                loop.call_soon(timer.callback)

    def _pending(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    async def next_due(self, *, real_timeout: float = 10.0) -> float:
        """Seconds from now to the earliest timer or sleep on this clock, waiting on the
        event loop (at most `real_timeout` real seconds: nothing hangs) until there is
        one. `await clock.advance(await clock.next_due())` runs exactly to it."""
        await self.settle()
        when = self._pending()
        if when is None:
            self._added = asyncio.Event()
            try:
                while when is None:
                    self._added.clear()
                    await asyncio.wait_for(self._added.wait(), real_timeout)
                    when = self._pending()
            except asyncio.TimeoutError:
                raise AssertionError(f"nothing waited on the clock within {real_timeout}s "
                                     "of real time") from None
            finally:
                self._added = None
        return max(0.0, when - self._now)

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
            when = self._pending()
            if when is None or when > target:
                break
            _, _, timer = heapq.heappop(self._timers)
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
