"""The per-action polling ceiling, enforced where every status read passes.

Mirakl Connect allows one `v2-getActionStatus` call per minute per action ID, per
credential. Keeping that rule in the transport, rather than trusting each caller's
schedule, makes it hold for a user's own polling loop, for retries after a 5xx, and for
the tracker alike. And since the ceiling is the API's, not one client object's, every
guard of one process for the same API base URL and credential shares one record of
reads (`shared_reads`): two clients reading one action cannot together break it. That
record is also kept on disk for the other processes of the machine (`_http.pollstore`), so
two `mirakl-cancel status` in a row, or a resumed run, keep the ceiling too.

Times are the client's clock (`_clock`): a test's manual clock runs the very rules
here. Only guards on the real clock share a log with other clients and the disk
record; a manual clock's reads are its own (its times mean nothing to another clock).
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Hashable

from .._clock import SYSTEM_CLOCK, Clock
from . import pollstore as _pollstore

__all__ = ["PollGuard", "ReadLog", "shared_reads"]


class ReadLog:
    """When each key was last read (monotonic seconds), shared by the guards of one scope.

    Entries older than the largest interval of any guard using the log are swept from
    time to time, so a long job's log stays as small as its recent reads.
    """

    __slots__ = ("__weakref__", "_sweep_at", "clock", "horizon", "last", "name", "store")

    def __init__(self, store: _pollstore.PollStore | None = None, name: str = "",
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.last: dict[str, float] = {}
        #: The largest min_interval of the guards using this log: reads older than that
        #: constrain nobody.
        self.horizon = 0.0
        self._sweep_at = 1024
        #: The machine-wide record of the same scope, if it can be used.
        self.store = store
        self.name = name
        self.clock = clock
        if store is not None:
            try:
                self.last.update(store.load(name, clock.monotonic(), clock.wall()))
            except sqlite3.Error as exc:
                self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        """Carry on without the disk record after it failed (said once)."""
        if self.store is not None:
            _pollstore.disable(self.store, exc)
            self.store = None

    def record(self, key: str, at: float) -> None:
        if at > self.last.get(key, float("-inf")):
            self.last[key] = at
        if len(self.last) >= self._sweep_at:
            self.sweep()

    def sweep(self) -> None:
        """Forget reads older than the horizon: they no longer constrain anything."""
        horizon = self.clock.monotonic() - self.horizon
        self.last = {key: at for key, at in self.last.items() if at > horizon}
        self._sweep_at = max(1024, 2 * len(self.last))


#: One log per scope (kind of read, API base URL, credential identity) and clock, alive
#: while a guard uses it. The credential part is a hash (see `auth.credential_identity`).
_SHARED: weakref.WeakValueDictionary[Hashable, ReadLog] = weakref.WeakValueDictionary()


def shared_reads(scope: Hashable, clock: Clock = SYSTEM_CLOCK) -> ReadLog:
    """The process-wide read log of `scope` on `clock`, created on first use (with the
    machine's disk record only on the real clock)."""
    key = scope if clock is SYSTEM_CLOCK else (scope, clock)
    log = _SHARED.get(key)
    if log is None:
        name = "\x1f".join(map(str, scope)) if isinstance(scope, tuple) else str(scope)
        store = _pollstore.default_store() if clock is SYSTEM_CLOCK else None
        log = _SHARED[key] = ReadLog(store, name, clock)
    return log


class Claim:
    """A read slot taken before sending; released if the request never left."""

    __slots__ = ("at", "key", "previous", "row", "wall")

    def __init__(self, key: str, previous: float | None, at: float) -> None:
        self.key = key
        self.previous = previous
        self.at = at
        #: Set when the claim is on disk too: our wall time, and the row it replaced.
        self.wall: float | None = None
        self.row: _pollstore.Row | None = None


class PollGuard:
    """Remembers when each action was last read and holds a read back until allowed.

    A read counts from the moment its attempt *ended*: the server saw the request no
    later than that, so spacing the next send from there keeps the server-side interval
    at least `min_interval` whatever the network latency was. A read that never left
    (no connection could be made) does not count: it is released.
    """

    __slots__ = ("_clock", "_log", "min_interval")

    def __init__(self, min_interval: float, log: ReadLog | None = None,
                 clock: Clock | None = None) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self.min_interval = min_interval
        if clock is None:
            clock = SYSTEM_CLOCK if log is None else log.clock
        if log is not None and log.clock is not clock:
            raise ValueError("a poll guard and its read log must share one clock")
        self._clock = clock
        self._log = ReadLog(clock=clock) if log is None else log
        self._log.horizon = max(self._log.horizon, min_interval)

    @property
    def _last(self) -> dict[str, float]:
        return self._log.last

    def ready_at(self, action_id: str) -> float:
        """The monotonic time from which `action_id` may be read again."""
        last = self._log.last.get(action_id)
        return 0.0 if last is None else last + self.min_interval

    def ready_in(self, action_id: str) -> float:
        """Seconds until `action_id` may be read again (0.0 when it may be now)."""
        return max(0.0, self.ready_at(action_id) - self._clock.monotonic())

    async def wait(self, action_id: str) -> None:
        """Sleep until `action_id` may be read again (no wait for a fresh one).

        This knows the reads of this process; `acquire` also asks the other processes'.
        """
        while True:
            delay = self.ready_at(action_id) - self._clock.monotonic()
            if delay <= 0:
                return
            await self._clock.sleep(delay)

    async def acquire(self, action_id: str) -> Claim:
        """Wait until `action_id` may be read, by this process and by the others of the
        machine, and take the slot (in memory and on disk at once)."""
        log = self._log
        while True:
            await self.wait(action_id)
            store = log.store
            if store is None:
                return self.claim(action_id)
            now, wall = self._clock.monotonic(), self._clock.wall()
            try:
                delay, last, row = store.try_claim(log.name, action_id, self.min_interval,
                                                   now, wall)
            except sqlite3.Error as exc:
                log.fail(exc)
                return self.claim(action_id)
            if delay > 0:
                assert last is not None
                log.record(action_id, last)  # another process read it: wait for that
                continue
            claim = self.claim(action_id)
            claim.wall, claim.row = wall, row
            return claim

    def record(self, action_id: str, at: float | None = None) -> None:
        """Note that a read of `action_id` ended at monotonic time `at` (default now).

        A time in the future is taken as now: a tampered or skewed timestamp may make
        the next read wait the full interval, never longer.
        """
        now = self._clock.monotonic()
        at = now if at is None else min(at, now)
        self._log.record(action_id, at)
        store = self._log.store
        if store is not None:
            try:
                store.record(self._log.name, action_id, now - at, now, self._clock.wall())
            except sqlite3.Error as exc:
                self._log.fail(exc)

    def record_ago(self, action_id: str, seconds_ago: float) -> None:
        """Note a read that ended `seconds_ago` seconds ago (negative: taken as now)."""
        self.record(action_id, self._clock.monotonic() - max(0.0, seconds_ago))

    def claim(self, action_id: str) -> Claim:
        """Mark `action_id` as being read now (call right after `wait`, with no await
        in between, so that a concurrent read of it waits too)."""
        claim = Claim(action_id, self._log.last.get(action_id), self._clock.monotonic())
        self._log.record(action_id, claim.at)
        return claim

    def release(self, claim: Claim) -> None:
        """Undo a claim whose request certainly never reached the server."""
        if self._log.last.get(claim.key) == claim.at:
            if claim.previous is None:
                del self._log.last[claim.key]
            else:
                self._log.last[claim.key] = claim.previous
        store = self._log.store
        if store is not None and claim.wall is not None:
            try:
                store.release(self._log.name, claim.key, (claim.wall, claim.at), claim.row)
            except sqlite3.Error as exc:
                self._log.fail(exc)
