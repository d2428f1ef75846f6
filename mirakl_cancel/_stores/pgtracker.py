"""A tracker shared by a fleet of worker processes, its schedule kept in PostgreSQL.

`ActionTracker(client, policy, store=store)` builds one. Every worker may track actions
(a row each, due `first_delay` later on the database's clock); every worker claims due
actions with `FOR UPDATE SKIP LOCKED` under a lease, reads them, and either records the
final status or puts them back due an `interval` later. A worker that dies leaves its
claimed actions leased: once the lease lapses another worker picks them up, so nothing
is lost and, with the client's shared read reservations, nothing is read too often.
`wait(action_id)` resolves in any worker, whoever read the final status: the finishing
worker sends a NOTIFY, and a short poll of the table covers a missed one.

A worker holds in memory only what it claimed (at most `concurrency` actions) and the
futures of its own waiters, however many actions the fleet tracks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._constants import (
    DEFAULT_TRACKER_CONCURRENCY,
    DEFAULT_TRACKER_IDLE_POLL,
    DEFAULT_TRACKER_LEASE,
)
from .._observe.hooks import ActionTrackedEvent
from .._serde import parse_action_status
from ..errors import ActionTimeoutError, ApiError, MiraklError, StoreError, api_error_class
from ..models import ActionStatus
from ..tracker import (
    DEFAULT_POLICY,
    ActionTracker,
    PollPolicy,
    StatusClient,
    TrackedResult,
    check_action_id,
    consume_result,
)

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["SharedActionTracker"]

logger = logging.getLogger("mirakl_cancel")

#: The channel on which a worker announces "this action ended" (payload: key:action_id).
CHANNEL = "mirakl_cancel_tracked"


def _status_json(status: ActionStatus) -> dict[str, Any]:
    """The status in the API's own shape, so that `parse_action_status` reads it back."""
    def when(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {"id": status.id, "status": status.raw_status or status.state.value,
            "created_at": when(status.created_at), "updated_at": when(status.updated_at),
            "errors": [{"code": e.code, "message": e.message} for e in status.errors]}


def _error_json(error: MiraklError, waited: float) -> dict[str, Any]:
    if isinstance(error, ActionTimeoutError):
        return {"kind": "timeout", "waited": waited}
    if isinstance(error, ApiError):
        return {"kind": "api", "status": error.status, "code": error.code,
                "message": error.message}
    return {"kind": "error", "message": str(error)}


def _error_from(action_id: str, data: dict[str, Any]) -> MiraklError:
    kind = data.get("kind")
    if kind == "timeout":
        return ActionTimeoutError(action_id, float(data.get("waited") or 0.0))
    if kind == "api":
        status = int(data.get("status") or 0)
        return api_error_class(status)(status, data.get("code"), str(data.get("message", "")))
    return MiraklError(str(data.get("message", f"tracking action {action_id} failed")))


class SharedActionTracker(ActionTracker):
    """ActionTracker whose schedule lives in a `PostgresStore` shared by many workers.

    `lease` (seconds) is how long a claimed action stays with the worker that claimed
    it; it must exceed the longest read (the client's timeouts plus its wait for a
    rate-limit slot). `idle_poll` bounds how long a worker sleeps before looking for
    due actions and for results it missed a notification of. With `claims=False` the
    tracker only tracks and waits (e.g. in a web process) and never reads.
    """

    def __init__(
        self,
        client: StatusClient,
        policy: PollPolicy = DEFAULT_POLICY,
        *,
        store: PostgresStore | None = None,
        concurrency: int = DEFAULT_TRACKER_CONCURRENCY,
        lease: float = DEFAULT_TRACKER_LEASE,
        idle_poll: float = DEFAULT_TRACKER_IDLE_POLL,
        claims: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, policy, concurrency=concurrency, **kwargs)
        if store is None:
            raise TypeError("SharedActionTracker needs store=")
        if not lease > 0 or not idle_poll > 0:
            raise ValueError("lease and idle_poll must be positive")
        self.store: PostgresStore = store
        key = getattr(client, "fleet_key", None)
        if not isinstance(key, str):
            raise TypeError("the client must be a MiraklConnectClient (its fleet_key)")
        if getattr(client, "shared_store", None) is not store:
            # Without it, reads of one action by two workers (a lease that lapsed
            # mid-read) would not be spaced by the database's clock.
            raise ValueError("give the client the same store: MiraklConnectClient(..., "
                             "store=store)")
        self.key = key
        self.lease = lease
        #: False: this worker tracks and waits, and leaves the reading to the others.
        self.claims = claims
        self.idle_poll = idle_poll
        self._waiters: dict[str, asyncio.Future[ActionStatus]] = {}
        self._claimed: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._stop = False

    def __repr__(self) -> str:
        return (f"SharedActionTracker(store={self.store!r}, claimed={len(self._claimed)}, "
                f"waiting={len(self._waiters)}, concurrency={self.concurrency})")

    # --- lifecycle --------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._stop:
            return
        loop = asyncio.get_running_loop()
        if self.claims and (self._worker is None or self._worker.done()):
            self._worker = loop.create_task(self._work())
        if self._listener is None or self._listener.done():
            self._listener = loop.create_task(self._listen())

    async def close(self, drain: bool) -> None:
        """Stop: `drain=True` first waits until every action this worker tracked has
        ended (read by any worker), working the fleet's queue meanwhile. Claimed
        actions are handed back at once, so another worker need not wait for a lease.
        """
        self._closing = True
        try:
            if drain and not self._cancelled:
                while await self._own_pending() > 0 or self._waiters:
                    self._ensure_started()
                    await self._idle(self.idle_poll)
        finally:
            self._cancelled = True
            self._stop = True
            for task in (self._worker, self._listener, *self._in_flight):
                if task is not None:
                    task.cancel()
            for task in (self._worker, self._listener, *self._in_flight):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            for future in self._waiters.values():
                future.cancel()
            self._waiters.clear()
            await self._release_claims()
            self._notify_closed()

    async def work(self) -> None:
        """Work the fleet's queue until no action of the fleet is pending any more."""
        self._ensure_started()
        while await self.fleet_pending() > 0:
            await self._idle(self.idle_poll)

    @property
    def pending(self) -> int:
        """Actions this worker holds now (claimed) or waits for; the fleet's own count
        is `await fleet_pending()`."""
        return len(self._claimed | set(self._waiters))

    async def fleet_pending(self) -> int:
        """How many actions of this API and credential no worker has seen end yet."""
        row = await self.store.fetchone(
            "counting pending actions", "SELECT count(*) FROM mirakl_cancel_tracked "
            "WHERE key = %s AND result IS NULL", (self.key,))
        return 0 if row is None else int(row[0])

    async def _own_pending(self) -> int:
        row = await self.store.fetchone(
            "counting pending actions", "SELECT count(*) FROM mirakl_cancel_tracked "
            "WHERE key = %s AND result IS NULL AND added_by = %s",
            (self.key, self.store.worker_id))
        return 0 if row is None else int(row[0])

    # --- tracking ---------------------------------------------------------------------

    async def add_shared(self, action_id: str, *, order_id: str | None = None) -> None:
        """Put `action_id` on the fleet's schedule (once: known ids are left as they are)."""
        check_action_id(action_id)
        self._check_open()
        timeout = self.policy.timeout
        await self.store.fetchone(
            "tracking an action",
            """INSERT INTO mirakl_cancel_tracked
                   (key, action_id, order_id, added_by, due_at, deadline)
               SELECT %(key)s, %(action)s, %(order)s, %(me)s,
                      t + make_interval(secs => %(first)s),
                      t + make_interval(secs => %(timeout)s)
               FROM (SELECT clock_timestamp() AS t) AS now
               ON CONFLICT (key, action_id) DO NOTHING""",
            {"key": self.key, "action": action_id, "order": order_id,
             "me": self.store.worker_id, "first": self.policy.first_delay,
             "timeout": timeout})
        hooks = self._hooks
        if hooks is not None and hooks.active:
            hooks.emit("action_tracked", ActionTrackedEvent(action_id, order_id))
        self._ensure_started()
        self._wakeup.set()

    def track(self, action_id: str, *, order_id: str | None = None,
              last_polled_at: float | datetime | None = None,
              accepted_at: float | datetime | None = None) -> asyncio.Future[ActionStatus]:
        """Track `action_id` fleet-wide; the future resolves with its final status,
        whichever worker reads it. (`last_polled_at` is not needed: the fleet's read
        reservations already know every read made through a client with this store;
        `accepted_at` is taken for the tracker's signature: the row's first read is
        due `first_delay` after it is written.)"""
        del last_polled_at, accepted_at
        future = self._waiters.get(action_id)
        if future is None or future.cancelled():
            check_action_id(action_id)
            self._check_open()
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(consume_result)
            self._waiters[action_id] = future
            task = asyncio.get_running_loop().create_task(self._add_then_check(
                action_id, order_id, future))
            self._keep(task)
        return future

    def add(self, action_id: str, *, order_id: str | None = None,
            last_polled_at: float | datetime | None = None,
            accepted_at: float | datetime | None = None) -> None:
        """Like `track()`, keeping nothing in this worker (use `await add_shared()` to
        know the row is written)."""
        del last_polled_at, accepted_at
        self._keep(asyncio.get_running_loop().create_task(
            self.add_shared(action_id, order_id=order_id)))

    async def wait(self, action_id: str) -> ActionStatus:
        """Wait for `action_id`'s final status, read by any worker of the fleet."""
        return await asyncio.shield(self.track(action_id))

    def _has_pending(self) -> bool:
        # Results this worker may still read or learn of (see ActionTracker.as_completed).
        return bool(self._waiters or self._claimed)

    def export_pending(self) -> dict[str, Any]:
        raise RuntimeError("a shared tracker keeps its pending actions in its store")

    def import_pending(self, data: Any) -> int:
        raise RuntimeError("a shared tracker keeps its pending actions in its store")

    async def _add_then_check(self, action_id: str, order_id: str | None,
                              future: asyncio.Future[ActionStatus]) -> None:
        try:
            await self.add_shared(action_id, order_id=order_id)
            await self._check_results([action_id])
        except MiraklError as exc:
            if not future.done():
                future.set_exception(exc)
            self._waiters.pop(action_id, None)

    def _wake(self) -> None:
        # A task of this worker ended (ActionTracker._task_done): look for work again.
        self._wakeup.set()

    # --- results ----------------------------------------------------------------------

    def _resolve(self, action_id: str, order_id: str | None, result: dict[str, Any],
                 polls: int, elapsed: float, *, ours: bool = False) -> None:
        status: ActionStatus | None = None
        error: MiraklError | None = None
        if "status" in result:
            status = parse_action_status(result["status"])
        else:
            error = _error_from(action_id, result.get("error") or {})
        # Only the worker that saw the action end announces it to the hooks.
        self._deliver(self._waiters.pop(action_id, None),
                      TrackedResult(action_id, order_id, status, error, polls, elapsed),
                      announce=ours)

    async def _check_results(self, action_ids: list[str]) -> None:
        """Resolve the waiters whose actions another worker already saw end."""
        if not action_ids:
            return
        conn = await self.store.connection()
        try:
            cursor = await asyncio.wait_for(conn.execute(
                "SELECT action_id, order_id, result, polls, "
                "extract(epoch FROM ended_at - tracked_at)::float8 FROM mirakl_cancel_tracked "
                "WHERE key = %s AND action_id = ANY(%s) AND result IS NOT NULL",
                (self.key, action_ids)), self.store.timeout)
            rows = await cursor.fetchall()
        except Exception as exc:
            raise self.store.error("reading results", exc) from None
        for action_id, order_id, result, polls, elapsed in rows:
            if action_id in self._waiters:
                self._resolve(action_id, order_id, result, polls, elapsed)

    async def _listen(self) -> None:
        """Hear other workers' results (LISTEN/NOTIFY); a short poll covers the gaps."""
        while not self._stop:
            try:
                conn = await self.store.connect()
            except StoreError as exc:
                logger.warning("shared tracker: no notifications for now (%s)", exc)
                await asyncio.sleep(self.idle_poll)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                while not self._stop:
                    # Every waiter now and then (a notification missed while reconnecting),
                    # in between only the ones announced.
                    await self._check_results(list(self._waiters))
                    async for note in conn.notifies(timeout=self.idle_poll * 5):
                        key, _, action_id = note.payload.partition(":")
                        if key == self.key and action_id in self._waiters:
                            await self._check_results([action_id])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("shared tracker: notifications interrupted (%s)",
                               self.store.error("listening", exc))
                await asyncio.sleep(self.idle_poll)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    # --- the work ---------------------------------------------------------------------

    async def _idle(self, seconds: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)

    async def _work(self) -> None:
        while not self._stop:
            free = self.concurrency - len(self._claimed)
            claimed: list[tuple[Any, ...]] = []
            try:
                if free > 0:
                    claimed = await self._claim(free)
                for row in claimed:
                    self._claimed.add(row[0])
                    self._keep(asyncio.get_running_loop().create_task(self._handle(*row)))
                if claimed and len(claimed) == free:
                    await self._idle(self.idle_poll)  # woken as soon as a read ends
                    continue
                wait = await self._next_due()
            except StoreError as exc:
                logger.warning("shared tracker: %s; trying again", exc)
                wait = self.idle_poll
            await self._idle(min(max(wait, 0.001), self.idle_poll))

    async def _claim(self, limit: int) -> list[tuple[Any, ...]]:
        conn = await self.store.connection()
        try:
            cursor = await asyncio.wait_for(conn.execute(
                """UPDATE mirakl_cancel_tracked AS t
                SET owner = %(me)s,
                    lease_until = clock_timestamp() + make_interval(secs => %(lease)s)
                WHERE t.key = %(key)s AND t.action_id IN (
                    SELECT action_id FROM mirakl_cancel_tracked
                    WHERE key = %(key)s AND result IS NULL AND due_at <= clock_timestamp()
                      AND (lease_until IS NULL OR lease_until < clock_timestamp())
                    ORDER BY due_at LIMIT %(limit)s
                    FOR UPDATE SKIP LOCKED)
                RETURNING t.action_id, t.order_id, t.polls, t.failures,
                          COALESCE(t.deadline <= clock_timestamp(), false),
                          extract(epoch FROM clock_timestamp() - t.tracked_at)::float8""",
                {"me": self.store.worker_id, "lease": self.lease, "key": self.key,
                 "limit": limit}), self.store.timeout)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        except Exception as exc:
            raise self.store.error("claiming due actions", exc) from None
        return rows

    async def _next_due(self) -> float:
        row = await self.store.fetchone(
            "reading the schedule",
            "SELECT extract(epoch FROM min(GREATEST(due_at, COALESCE(lease_until, due_at))) "
            "- clock_timestamp())::float8 FROM mirakl_cancel_tracked "
            "WHERE key = %s AND result IS NULL", (self.key,))
        return self.idle_poll if row is None or row[0] is None else float(row[0])

    async def _handle(self, action_id: str, order_id: str | None, polls: int, failures: int,
                      expired: bool, elapsed: float) -> None:
        try:
            if expired:
                self.stats.timed_out += 1
                await self._finish_row(action_id, order_id, polls, elapsed, error=(
                    ActionTimeoutError(action_id, elapsed)))
                return
            status: ActionStatus | None = None
            error: Exception | None = None
            try:
                status = await self.client.get_action_status(action_id, retry=False)
            except StoreError:
                raise  # nothing was read: the lease lapses and someone tries again
            except Exception as exc:
                error = exc
            polls += 1
            self.stats.polls += 1
            await self._after_read(action_id, order_id, polls, failures, elapsed,
                                   status, error)
        finally:
            self._claimed.discard(action_id)
            self._wakeup.set()

    async def _after_read(self, action_id: str, order_id: str | None, polls: int,
                          failures: int, elapsed: float, status: ActionStatus | None,
                          error: Exception | None) -> None:
        """The tracker's rules (`ActionTracker._judge_read`), written to the store."""
        verdict = self._judge_read(action_id, order_id, polls, failures, status, error)
        if verdict.delay is None:
            await self._finish_row(action_id, order_id, polls, elapsed, status=verdict.status,
                                   error=verdict.error)
        else:
            await self._reschedule(action_id, polls, verdict.failures, verdict.delay)

    async def _reschedule(self, action_id: str, polls: int, failures: int,
                          delay: float) -> None:
        await self.store.fetchone(
            "rescheduling an action",
            """UPDATE mirakl_cancel_tracked
            SET due_at = LEAST(clock_timestamp() + make_interval(secs => %(delay)s),
                               COALESCE(deadline, 'infinity')),
                owner = NULL, lease_until = NULL, polls = %(polls)s, failures = %(failures)s
            WHERE key = %(key)s AND action_id = %(action)s AND owner = %(me)s
              AND result IS NULL""",
            {"delay": delay, "polls": polls, "failures": failures, "key": self.key,
             "action": action_id, "me": self.store.worker_id})

    async def _finish_row(self, action_id: str, order_id: str | None, polls: int,
                          elapsed: float, *, status: ActionStatus | None = None,
                          error: MiraklError | None = None) -> None:
        result = ({"status": _status_json(status)} if status is not None
                  else {"error": _error_json(error or MiraklError("?"), elapsed)})
        # The end is a fact whoever holds the lease now: record it unless already known,
        # and tell every worker.
        await self.store.fetchone(
            "recording a result",
            """WITH done AS (
                UPDATE mirakl_cancel_tracked
                SET result = %(result)s::jsonb, ended_at = clock_timestamp(), owner = NULL,
                    lease_until = NULL, polls = GREATEST(polls, %(polls)s)
                WHERE key = %(key)s AND action_id = %(action)s AND result IS NULL
                RETURNING key, action_id)
            SELECT pg_notify(%(channel)s, key || ':' || action_id) FROM done""",
            {"result": json.dumps(result), "polls": polls, "key": self.key,
             "action": action_id, "channel": CHANNEL})
        self.stats.resolved += 1
        self._resolve(action_id, order_id, result, polls, elapsed, ours=True)

    async def _release_claims(self) -> None:
        """Hand claimed actions back (a clean stop need not wait for the lease)."""
        with contextlib.suppress(MiraklError):
            await self.store.fetchone(
                "handing back claimed actions",
                "UPDATE mirakl_cancel_tracked SET owner = NULL, lease_until = NULL "
                "WHERE key = %s AND owner = %s AND result IS NULL",
                (self.key, self.store.worker_id))
        self._claimed.clear()
