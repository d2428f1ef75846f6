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
from .._constants import API_MIN_INTERVAL, READ_ABANDON_MARGIN, READ_IN_FLIGHT_RECHECK
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
    """A read slot taken right before sending; finished when the attempt ends, released
    if the request never left.

    While the read is in flight its time in the log is `at`, the latest moment the server
    can see it (the attempt's own bound): a concurrent read waits for it to end, and if
    this process dies mid-read the slot still frees once that bound has passed.
    """

    __slots__ = ("at", "key", "previous", "row", "wall")

    def __init__(self, key: str, previous: float | None, at: float) -> None:
        self.key = key
        self.previous = previous
        self.at = at
        #: Set when the claim is on disk too: the wall time written (its bound, like
        #: `at`), and the row it replaced.
        self.wall: float | None = None
        self.row: _pollstore.Row | None = None


def _recheck(min_interval: float) -> float:
    """How long a read waits before looking again at a read in flight elsewhere: short
    against the ceiling, so it leaves soon after the other ends plus the interval."""
    return max(READ_IN_FLIGHT_RECHECK * min(1.0, min_interval / API_MIN_INTERVAL),
               _MIN_RECHECK)


#: Never spin: even a guard with no interval sleeps this long between looks.
_MIN_RECHECK = 0.001


class PollGuard:
    """Remembers when each action was last read and holds a read back until allowed.

    A read counts from the moment its attempt *ended*: the server saw the request no
    later than that (an abandoned one, `READ_ABANDON_MARGIN` later), so spacing the next
    send from there keeps the server-side interval at least `min_interval` whatever the
    network latency was. While a read is in flight it counts as ending at its attempt's
    bound (`claim`'s `hold`): a read that left late (after a long wait for a connection
    or a rate-limit slot) or answers slowly cannot be overtaken by the next. A read that
    never left (no connection could be made) does not count: it is released.
    """

    __slots__ = ("_clock", "_log", "min_interval", "recheck")

    def __init__(self, min_interval: float, log: ReadLog | None = None,
                 clock: Clock | None = None) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self.min_interval = min_interval
        #: Seconds between looks at a read of the same key in flight elsewhere.
        self.recheck = _recheck(min_interval)
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
        """The monotonic time from which `action_id` may be read again (a read in
        flight counts as ending at its bound)."""
        last = self._log.last.get(action_id)
        return 0.0 if last is None else last + self.min_interval

    def ready_in(self, action_id: str) -> float:
        """Seconds until `action_id` may be read again (0.0 when it may be now)."""
        return max(0.0, self.ready_at(action_id) - self._clock.monotonic())

    def _delay(self, action_id: str, now: float) -> float:
        """Seconds to wait before looking again whether `action_id` may be read: the
        time left, or a short recheck while a read of it is in flight (its end will
        bring the slot forward)."""
        last = self._log.last.get(action_id)
        if last is None:
            return 0.0
        delay = last + self.min_interval - now
        if last > now:  # in flight (its time is its bound): look again soon
            return min(delay, self.recheck)
        return delay

    async def wait(self, action_id: str) -> None:
        """Sleep until this process's reads allow reading `action_id` (no wait for a
        fresh one). `try_claim` also asks the other processes'."""
        while True:
            delay = self._delay(action_id, self._clock.monotonic())
            if delay <= 0:
                return
            await self._clock.sleep(delay)

    def try_claim(self, action_id: str, hold: float) -> Claim | float:
        """Take the slot of `action_id` now if every read of this machine allows it, in
        memory and on disk at once: the claim, or the seconds to wait before trying
        again. Call it right before the request leaves, with no await in between, and
        `hold` = the longest the attempt can take (see `Claim`)."""
        now = self._clock.monotonic()
        delay = self._delay(action_id, now)
        if delay > 0:
            return delay
        log = self._log
        store = log.store
        row: _pollstore.Row | None = None
        wall = self._clock.wall()
        if store is not None:
            try:
                delay, last, row = store.try_claim(log.name, action_id, self.min_interval,
                                                   now, wall, hold)
            except sqlite3.Error as exc:
                log.fail(exc)
                store = None
            else:
                if delay > 0:
                    assert last is not None
                    # Another process read it (one in flight reads as "now"): wait for
                    # that, and look again then.
                    log.record(action_id, last)
                    return delay
        claim = Claim(action_id, log.last.get(action_id), now + hold)
        log.last[action_id] = claim.at
        if store is not None:  # the row written is the claim's, times included
            claim.wall, claim.row = wall + hold, row
        return claim

    def finish(self, claim: Claim, *, answered: bool) -> None:
        """The read of `claim` ended: it counts from now (an abandoned one, from a little
        later: `READ_ABANDON_MARGIN`), in place of its in-flight bound."""
        now = self._clock.monotonic()
        end = now if answered else now + READ_ABANDON_MARGIN
        log = self._log
        if log.last.get(claim.key) == claim.at:
            log.last[claim.key] = end
        else:
            log.record(claim.key, end)
        store = log.store
        if store is not None and claim.wall is not None:
            try:
                store.finish(log.name, claim.key, (claim.wall, claim.at), now - end, now,
                             self._clock.wall())
            except sqlite3.Error as exc:
                log.fail(exc)

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
