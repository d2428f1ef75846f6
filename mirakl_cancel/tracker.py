"""Following asynchronous cancel actions to their final state, politely.

Mirakl Connect allows one status read per minute per action. A job with 100,000
pending actions therefore needs a *schedule*, not 100,000 sleeping tasks: one
scheduler task keeps a heap of due times and starts at most `concurrency` polls at a
time. Every decision that protects the per-action ceiling is taken here from the
moment a poll *ended* (the server saw it no later than that), so the interval the
server measures is never shorter than the one we configured, whatever the latency.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import attrs

from ._clock import SYSTEM_CLOCK, Clock, TimerHandle
from ._constants import (
    API_MIN_INTERVAL,
    DEFAULT_FIRST_POLL_DELAY,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_TRACKER_CONCURRENCY,
    DEFAULT_TRACKER_MAX_RETRY_AFTER,
)
from ._http.backoff import exponential
from ._observe.hooks import ActionFinalEvent, ActionTrackedEvent, Hooks, PollEvent
from ._observe.logs import fields
from .errors import (
    ActionTimeoutError,
    ApiError,
    MiraklError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
    ValidationIssue,
)
from .models import ActionState, ActionStatus

if TYPE_CHECKING:
    from ._stores.postgres import PostgresStore

__all__ = [
    "DEFAULT_POLICY",
    "EXPORT_VERSION",
    "ActionTracker",
    "PollPolicy",
    "StatusClient",
    "TrackedResult",
    "TrackerStats",
]

logger = logging.getLogger("mirakl_cancel")

#: Version of the `export_pending()` format; bumped on any incompatible change.
EXPORT_VERSION = 1


def _duration_issue(name: str, value: object) -> ValidationIssue | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ValidationIssue(name, f"must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value < 0:
        return ValidationIssue(name, "must be a finite number of seconds >= 0")
    return None


@attrs.frozen
class PollPolicy:
    """When to read an action's status, in seconds.

    The defaults follow the API's guidance: never more than once a minute per action,
    about every five minutes otherwise. `min_interval` is the hard floor; `interval`
    is the normal pace; `first_delay` spares a read that would almost surely still say
    PENDING; `timeout` (from tracking start) gives up on an action, or None to wait
    forever. Tests inject small values to run in milliseconds.
    """

    min_interval: float = API_MIN_INTERVAL
    interval: float = DEFAULT_POLL_INTERVAL
    first_delay: float = DEFAULT_FIRST_POLL_DELAY
    timeout: float | None = None
    #: A status read refused (429) for longer than this ends the action's tracking with
    #: that RateLimitError, rather than a wait nobody asked for (Retry-After: 999999999).
    max_retry_after: float = DEFAULT_TRACKER_MAX_RETRY_AFTER

    def __attrs_post_init__(self) -> None:
        issues = [issue for name in ("min_interval", "interval", "first_delay",
                                     "max_retry_after")
                  if (issue := _duration_issue(name, getattr(self, name))) is not None]
        if not issues and self.interval < self.min_interval:
            issues.append(ValidationIssue(
                "interval", f"must be >= min_interval ({self.min_interval}), not {self.interval}"))
        if self.timeout is not None:
            issue = _duration_issue("timeout", self.timeout)
            if issue is None and self.timeout <= 0:
                issue = ValidationIssue("timeout", "must be > 0, or None to wait forever")
            if issue is not None:
                issues.append(issue)
        if issues:
            raise ValidationError(issues)


DEFAULT_POLICY = PollPolicy()


@attrs.frozen
class TrackedResult:
    """How one tracked action ended: a final status, or the error that ended tracking.

    `error` is an `ActionTimeoutError` when the action was still pending at the
    policy's timeout, a `NotFoundError` when the API does not know the action, or
    another `MiraklError` when reading it failed for good.
    """

    action_id: str
    order_id: str | None
    status: ActionStatus | None = None
    error: MiraklError | None = None
    #: Status reads this tracker made for the action (failed ones included).
    polls: int = 0
    #: Seconds from tracking start (in this process or the exporting one) to the end.
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the action ended in SUCCESS."""
        return self.status is not None and self.status.state is ActionState.SUCCESS

    @property
    def timed_out(self) -> bool:
        """Whether tracking gave up because the action was still pending at the timeout."""
        return isinstance(self.error, ActionTimeoutError)

    @property
    def state(self) -> ActionState | None:
        """The final state, or None when tracking ended with an error."""
        return None if self.status is None else self.status.state

    def result(self) -> ActionStatus:
        """The final status, or raise the error that ended tracking."""
        if self.status is None:
            raise self.error or MiraklError(f"action {self.action_id} has no result")
        return self.status


@attrs.define
class TrackerStats:
    """Counters for a job summary and for tests."""

    polls: int = 0
    rate_limited: int = 0
    poll_errors: int = 0
    resolved: int = 0
    timed_out: int = 0


class StatusClient(Protocol):
    """What the tracker needs from a client (`MiraklConnectClient` or a test fake).

    Besides reading a status, the client tells when an action may be read again
    (`poll_ready_in`, seconds, counting reads made by anyone through its poll guard)
    and accepts reads made elsewhere (`record_poll`, for an imported job), so that the
    tracker's schedule and the client's ceiling agree without the tracker knowing how
    the client keeps it. A client may also have a `clock` (`MiraklConnectClient` and
    `FakeStatusClient` do): the tracker's default clock, so both keep one time.
    """

    @property
    def min_poll_interval(self) -> float: ...

    def poll_ready_in(self, action_id: str) -> float: ...

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None: ...

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus: ...


# An action is in exactly one of these places: the heap, a poll task, or nowhere (done).
_SCHEDULED = 0
_IN_FLIGHT = 1
_DONE = 2


class _Tracked:
    """Per-action state; slots keep 100,000 pending actions in a few tens of MB."""

    __slots__ = ("action_id", "failures", "future", "last_polled", "order_id", "polls",
                 "state", "tracked_at")

    def __init__(self, action_id: str, order_id: str | None, tracked_at: float,
                 last_polled: float | None) -> None:
        self.action_id = action_id
        self.order_id = order_id
        self.tracked_at = tracked_at
        self.last_polled = last_polled
        self.future: asyncio.Future[ActionStatus] | None = None
        self.polls = 0
        self.failures = 0
        self.state = _SCHEDULED


class _ReadVerdict(NamedTuple):
    """What one status read means for an action's tracking (`ActionTracker._judge_read`)."""

    #: Read again this many seconds after the read ended; None: tracking ends here.
    delay: float | None
    #: Failed reads in a row, counting this one (the back-off's exponent).
    failures: int
    #: The final status (tracking ended with it), else None.
    status: ActionStatus | None = None
    #: The error that ended tracking, else None.
    error: MiraklError | None = None


def check_action_id(action_id: object) -> None:
    """Refuse an action id that is not a non-empty string (nothing is tracked then)."""
    if not isinstance(action_id, str) or not action_id:
        raise ValidationError([ValidationIssue("action_id", "must be a non-empty string")])


def consume_result(future: asyncio.Future[ActionStatus]) -> None:
    """A done-callback for a result future (this tracker's and the fleet's)."""
    # Results also reach as_completed() and listeners, so an unawaited future's
    # exception is not "lost": keep asyncio from logging it as such.
    if not future.cancelled():
        future.exception()


def _wall_seconds(value: float | datetime, name: str = "last_polled_at") -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (or epoch seconds)")
        return value.timestamp()
    return float(value)


def first_read_due(policy: PollPolicy, now: float, *, accepted_at: float | None = None,
                   last_read: float | None = None, gap: float | None = None) -> float:
    """When a newly tracked action is read first, in the time base of the arguments.

    The first delay follows the acceptance: `accepted_at` (an earlier run's, on a
    resume; never later than `now`) or else now, so a resumed job does not wait it a
    second time. And never within the ceiling (`gap`, default the policy's
    `min_interval`) of the last read anyone made. The tracker schedules by this rule
    and the job's progress line announces the same time.
    """
    start = now if accepted_at is None else min(now, accepted_at)
    due = start + policy.first_delay
    if last_read is not None:
        due = max(due, last_read + (policy.min_interval if gap is None else gap))
    return due


_Self = TypeVar("_Self", bound="ActionTracker")


class ActionTracker:
    """Polls many actions to their final state with one scheduler task.

    Use it as an async context manager: leaving the block normally waits for every
    tracked action to finish (drain); leaving it with an exception stops tracking at
    once (cancel), and `export_pending()` still lists what was left for another
    process to resume. At most `concurrency` status reads are in flight at a time,
    however many actions are pending, and two reads of one action are never closer
    than `max(policy.min_interval, client.min_poll_interval)`, measured from the end of
    the earlier read.

    `clock` defaults to the client's (`MiraklConnectClient(clock=...)`), so that the
    tracker and the client's poll guard keep one time; give one only with a client
    that has none.

    Given `store=` (a `PostgresStore`, also given to the client), the tracker is the
    fleet's: a `SharedActionTracker`, whose schedule lives in the store.
    """

    def __new__(cls, *args: Any, store: object = None, **kwargs: Any) -> ActionTracker:
        # Given a store, the tracker is the fleet's: its schedule lives in the store.
        if store is not None and cls is ActionTracker:
            # The store names its tracker class: this layer imports nothing above it.
            tracker_class = getattr(store, "tracker_class", None)
            if tracker_class is None:
                raise TypeError("store must be a PostgresStore (it has no shared tracker)")
            shared: type[ActionTracker] = tracker_class()
            return super().__new__(shared)
        return super().__new__(cls)

    def __init__(
        self,
        client: StatusClient,
        policy: PollPolicy = DEFAULT_POLICY,
        *,
        concurrency: int = DEFAULT_TRACKER_CONCURRENCY,
        clock: Clock | None = None,
        store: PostgresStore | None = None,
    ) -> None:
        if not isinstance(policy, PollPolicy):
            raise TypeError("policy must be a PollPolicy")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError("concurrency must be an integer >= 1")
        self.client = client
        self.policy = policy
        self.concurrency = concurrency
        self.stats = TrackerStats()
        hooks = getattr(client, "hooks", None)
        #: The client's hooks (a test fake may have none): tracked, polled, final.
        self._hooks: Hooks | None = hooks if isinstance(hooks, Hooks) else None
        if clock is None:
            # The client's clock (one time for its poll guard and this schedule).
            own = getattr(client, "clock", None)
            clock = own if isinstance(own, Clock) else SYSTEM_CLOCK
        self._clock: Clock = clock
        self._min = max(policy.min_interval, client.min_poll_interval)
        self._interval = max(policy.interval, self._min)
        self._actions: dict[str, _Tracked] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._listeners: dict[int, tuple[Callable[[TrackedResult], None],
                                         Callable[[], None] | None]] = {}
        self._listener_ids = itertools.count()
        self._scheduler: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._cancelled = False

    def __repr__(self) -> str:
        return (f"ActionTracker(pending={self.pending}, in_flight={len(self._in_flight)}, "
                f"min_interval={self._min}, concurrency={self.concurrency})")

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self: _Self) -> _Self:
        self._ensure_started()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close(drain=exc_type is None)

    async def close(self, drain: bool) -> None:
        """Stop tracking: `drain=True` waits for every pending action to end first,
        `drain=False` cancels at once (futures cancelled, pending actions kept for
        `export_pending()`). New actions are refused from the first call on.
        """
        self._closing = True
        try:
            if drain and not self._cancelled and self._scheduler is not None:
                self._wake()
                await asyncio.shield(self._scheduler)
        finally:  # also when the drain itself is cancelled: stop everything then
            await self._cancel_all()

    async def aclose(self) -> None:
        """Cancel tracking now (`close(drain=False)`), e.g. under `contextlib.aclosing`."""
        await self.close(drain=False)

    @property
    def closed(self) -> bool:
        """Whether close() has been called (no new action is accepted)."""
        return self._closing

    @property
    def pending(self) -> int:
        """Actions tracked and not yet ended (including any left by a cancelling close)."""
        return len(self._actions)

    @property
    def in_flight(self) -> int:
        """Status reads running right now (never more than `concurrency`)."""
        return len(self._in_flight)

    @property
    def min_interval(self) -> float:
        """The effective floor between two reads of one action, in seconds."""
        return self._min

    def _ensure_started(self) -> None:
        if self._scheduler is None and not self._closing:
            self._scheduler = asyncio.get_running_loop().create_task(
                self._run(), name="mirakl-cancel tracker")
            self._scheduler.add_done_callback(self._scheduler_done)

    async def _cancel_all(self) -> None:
        self._closing = True
        self._cancelled = True
        tasks: list[asyncio.Task[None]] = list(self._in_flight)
        if self._scheduler is not None and not self._scheduler.done():
            tasks.append(self._scheduler)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._heap.clear()
        for record in self._actions.values():
            if record.future is not None and not record.future.done():
                record.future.cancel()
            record.future = None
            record.state = _SCHEDULED
        self._notify_closed()

    def _notify_closed(self) -> None:
        """Tell every listener that tracking stopped (once: they are dropped)."""
        listeners = list(self._listeners.values())
        self._listeners.clear()
        for _, on_close in listeners:
            if on_close is not None:
                try:
                    on_close()
                except Exception:
                    logger.exception("a tracker close listener failed")

    def _scheduler_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the scheduler must not leave waiters hanging forever.
        logger.error("tracker scheduler failed", exc_info=task.exception())
        error = MiraklError(f"tracker scheduler failed: {task.exception()!r}")
        for record in list(self._actions.values()):
            self._finish(record, error=error)

    # --- adding actions ---------------------------------------------------------------

    def track(self, action_id: str, *, order_id: str | None = None,
              last_polled_at: float | datetime | None = None,
              accepted_at: float | datetime | None = None) -> asyncio.Future[ActionStatus]:
        """Follow `action_id`; the future resolves to its final (SUCCESS/FAILED) status.

        Tracking an id already tracked returns the same future. The future fails with
        `ActionTimeoutError` at the policy's timeout, `NotFoundError` if the API does
        not know the action. `last_polled_at` (epoch seconds or an aware datetime) is
        when someone else last read the action: the first read waits for the interval.
        `accepted_at` (same forms) is when the API accepted it, if not just now (a
        resumed job): the first delay counts from there, not again from now.
        Awaiting the future directly and being cancelled cancels it for every waiter:
        prefer `wait()`, which shields it.
        """
        record = self._add_now(action_id, order_id, last_polled_at, accepted_at)
        future = record.future
        if future is None or future.cancelled():
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(consume_result)
            record.future = future
        return future

    def add(self, action_id: str, *, order_id: str | None = None,
            last_polled_at: float | datetime | None = None,
            accepted_at: float | datetime | None = None) -> None:
        """Like `track()` without creating a future: for callers that read results
        through `as_completed()` or `subscribe()` and want the smallest footprint.
        """
        self._add_now(action_id, order_id, last_polled_at, accepted_at)

    async def wait(self, action_id: str) -> ActionStatus:
        """Track `action_id` if needed and wait for its final status.

        Raises `ActionTimeoutError` if it is still pending at the policy's timeout.
        Cancelling this call stops this wait only, not the tracking.
        """
        return await asyncio.shield(self.track(action_id))

    def _add_now(self, action_id: str, order_id: str | None,
                 last_polled_at: float | datetime | None,
                 accepted_at: float | datetime | None = None) -> _Tracked:
        check_action_id(action_id)
        existing = self._actions.get(action_id)
        if existing is not None and not self._cancelled:
            return existing  # even while draining: waiting for it is still possible
        self._check_open()
        now = self._clock.monotonic()
        last = None
        if last_polled_at is not None:
            # A read "in the future" (a skewed or tampered clock) counts as just made:
            # the next read waits the full interval, never longer.
            last = min(now, now - (self._clock.wall() - _wall_seconds(last_polled_at)))
        accepted = None
        if accepted_at is not None:
            accepted = now - (self._clock.wall() - _wall_seconds(accepted_at, "accepted_at"))
        return self._add(action_id, order_id, tracked_at=now, last_polled=last, gap=self._min,
                         accepted=accepted)

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("this ActionTracker is closed")

    def _add(self, action_id: str, order_id: str | None, *, tracked_at: float,
             last_polled: float | None, gap: float, accepted: float | None = None) -> _Tracked:
        record = _Tracked(action_id, order_id, tracked_at, last_polled)
        self._actions[action_id] = record
        due = first_read_due(self.policy, tracked_at, accepted_at=accepted,
                             last_read=last_polled, gap=gap)
        # A read made directly through the client (or another client) counts too.
        due = max(due, self._clock.monotonic() + self.client.poll_ready_in(action_id))
        self._ensure_started()
        self._push(record, due)
        hooks = self._hooks
        if hooks is not None and hooks.active:
            hooks.emit("action_tracked", ActionTrackedEvent(action_id, order_id))
        return record

    # --- results ----------------------------------------------------------------------

    def subscribe(self, on_result: Callable[[TrackedResult], None],
                  on_close: Callable[[], None] | None = None) -> Callable[[], None]:
        """Call `on_result` with every result from now on, and `on_close` when tracking
        stops; returns a function that unsubscribes. Callbacks run on the event loop
        and must not block; an exception in one is logged, never propagated.
        """
        key = next(self._listener_ids)
        self._listeners[key] = (on_result, on_close)

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    async def as_completed(self, *, follow: bool = False) -> AsyncIterator[TrackedResult]:
        """Yield each action's result as it ends, in the order they end.

        It covers the actions pending when iteration starts and any tracked while it
        runs; results of actions that ended before it started are not replayed (their
        futures hold them). Without `follow` it ends as soon as nothing is pending;
        with `follow=True` it keeps waiting for new actions until the tracker is closed
        (a worker's "results" loop). It always ends when the tracker closes.
        """
        queue: asyncio.Queue[TrackedResult | None] = asyncio.Queue()
        if self._cancelled:
            return
        unsubscribe = self.subscribe(queue.put_nowait, lambda: queue.put_nowait(None))
        try:
            while True:
                if queue.empty() and not self._has_pending() and (self._closing or not follow):
                    return
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            unsubscribe()

    def _has_pending(self) -> bool:
        """Whether a result may still come (`as_completed` waits while it may)."""
        return bool(self._actions)

    def _deliver(self, future: asyncio.Future[ActionStatus] | None, result: TrackedResult,
                 *, announce: bool = True) -> None:
        """Hand one action's result to its future, the listeners and, when `announce`
        (the tracker that saw the action end, not one told of it), the hooks."""
        if future is not None and not future.done():
            if result.status is not None:
                future.set_result(result.status)
            else:
                future.set_exception(result.error or MiraklError("tracking failed"))
        for on_result, _ in list(self._listeners.values()):
            try:
                on_result(result)
            except Exception:
                logger.exception("a tracker result listener failed")
        hooks = self._hooks
        if announce and hooks is not None and hooks.active:
            hooks.emit("action_final", ActionFinalEvent(result))

    def _finish(self, record: _Tracked, *, status: ActionStatus | None = None,
                error: MiraklError | None = None) -> None:
        if self._actions.get(record.action_id) is record:
            del self._actions[record.action_id]
        record.state = _DONE
        future, record.future = record.future, None
        self.stats.resolved += 1
        self._deliver(future, TrackedResult(record.action_id, record.order_id, status, error,
                                            record.polls,
                                            self._clock.monotonic() - record.tracked_at))
        if self._closing and not self._actions:
            self._wake()

    # --- the schedule -----------------------------------------------------------------

    def _push(self, record: _Tracked, due: float) -> None:
        """Queue the next read of `record`, never before the per-action floor.

        After at least one read, a timeout earlier than that read is queued instead, so
        an action times out on time; an action never times out unread (e.g. one
        resumed after a long stop is read once before being given up on).
        """
        if record.last_polled is not None:
            due = max(due, record.last_polled + self._min)
        timeout = self.policy.timeout
        if timeout is not None and record.polls > 0:
            due = min(due, record.tracked_at + timeout)
        record.state = _SCHEDULED
        heapq.heappush(self._heap, (due, next(self._seq), record.action_id))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._dispatch()
            if self._closing and not self._actions and not self._in_flight:
                return
            self._waiter = waiter = loop.create_future()
            handle: TimerHandle | None = None
            if self._heap and len(self._in_flight) < self.concurrency:
                handle = self._clock.call_at(self._heap[0][0], self._wake)
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()

    def _dispatch(self) -> None:
        """Start the reads that are due, as far as the concurrency allows."""
        heap = self._heap
        now = self._clock.monotonic()
        timeout = self.policy.timeout
        while heap and heap[0][0] <= now:
            record = self._actions.get(heap[0][2])
            if record is None or record.state != _SCHEDULED:
                heapq.heappop(heap)  # not expected: every action has one entry at most
                continue
            if timeout is not None and record.polls > 0 and now >= record.tracked_at + timeout:
                heapq.heappop(heap)
                self.stats.timed_out += 1
                self._finish(record, error=ActionTimeoutError(
                    record.action_id, now - record.tracked_at))
                continue
            if len(self._in_flight) >= self.concurrency:
                return
            due = heapq.heappop(heap)[0]
            hooks = self._hooks
            if hooks is not None and hooks.active:
                hooks.emit("poll", PollEvent(record.action_id, record.order_id, record.polls,
                                             max(now - due, 0.0)))
            record.state = _IN_FLIGHT
            self._keep(asyncio.get_running_loop().create_task(self._poll(record)))

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a task (a read) until it ends; its end wakes the scheduler."""
        self._in_flight.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("tracker task failed unexpectedly", exc_info=task.exception())
        self._wake()

    async def _poll(self, record: _Tracked) -> None:
        status: ActionStatus | None = None
        error: Exception | None = None
        try:
            status = await self.client.get_action_status(record.action_id, retry=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        finally:
            # Also on cancellation: the read may have reached the server, and an
            # export must count it.
            record.last_polled = self._clock.monotonic()
            record.polls += 1
            self.stats.polls += 1
            record.state = _SCHEDULED
        if record.action_id not in self._actions:
            return
        self._after_poll(record, status, error)

    def _after_poll(self, record: _Tracked, status: ActionStatus | None,
                    error: Exception | None) -> None:
        ended = record.last_polled
        assert ended is not None
        verdict = self._judge_read(record.action_id, record.order_id, record.polls,
                                   record.failures, status, error)
        record.failures = verdict.failures
        if verdict.delay is None:
            self._finish(record, status=verdict.status, error=verdict.error)
        else:
            self._push(record, ended + verdict.delay)

    def _judge_read(self, action_id: str, order_id: str | None, polls: int, failures: int,
                    status: ActionStatus | None, error: Exception | None) -> _ReadVerdict:
        """The tracker's rules for one read (`status`, or the `error` it raised), in one
        home for this tracker and the fleet's: a final status or a lasting error ends
        tracking; a pending status is read again an interval later; a 429 after its
        Retry-After (never sooner than the floor; a refusal longer than
        `max_retry_after` ends tracking); a 5xx or a transport failure after a back-off
        that doubles from the floor up to the interval. `failures` counts the failed
        reads in a row before this one. Counts the failures in `stats`.
        """
        if status is not None:
            if status.is_terminal:
                return _ReadVerdict(None, 0, status=status)
            if status.state is ActionState.UNKNOWN:
                logger.info("action %s has a status this version does not know (%r): "
                            "still polling", action_id, status.raw_status,
                            extra=fields(action_id=action_id, order_id=order_id, attempt=polls))
            return _ReadVerdict(self._interval, 0)
        self.stats.poll_errors += 1
        if isinstance(error, RateLimitError):
            self.stats.rate_limited += 1
            wait = error.retry_after or 0.0
            if not wait <= self.policy.max_retry_after:  # NaN too
                logger.warning("reading action %s: the server refuses reads for %.0f s, more "
                               "than max_retry_after (%.0f s): tracking it stops here",
                               action_id, wait, self.policy.max_retry_after)
                return _ReadVerdict(None, failures, error=error)
            return _ReadVerdict(max(self._min, wait), failures)
        if isinstance(error, NotFoundError):
            return _ReadVerdict(None, failures, error=error)
        if isinstance(error, (ServerError, TransportError)):
            failures += 1
            # The one backoff (`_http.backoff`): ceiling doubled per failure, up to the interval.
            delay = max(self._min, exponential(failures, self._min or self._interval,
                                               self._interval))
            logger.info("reading action %s failed (%s): next read in %.2fs",
                        action_id, error, delay,
                        extra=fields(action_id=action_id, order_id=order_id, attempt=polls,
                                     status=getattr(error, "status", None)))
            return _ReadVerdict(delay, failures)
        if isinstance(error, (ApiError, ValidationError)):
            return _ReadVerdict(None, failures, error=error)
        wrapped = MiraklError(f"reading action {action_id} failed: {error!r}")
        wrapped.__cause__ = error
        return _ReadVerdict(None, failures, error=wrapped)

    # --- resuming in another process --------------------------------------------------

    def export_pending(self) -> dict[str, Any]:
        """The pending actions as JSON-able data, for `import_pending()` elsewhere.

        Times are wall-clock epoch seconds, the only clock two processes share. A read
        in flight counts as having ended now: it may have reached the server, and
        counting it later than it happened only makes the next read more polite.
        """
        now = self._clock.monotonic()
        wall = self._clock.wall()
        actions = []
        for record in self._actions.values():
            last = now if record.state == _IN_FLIGHT else record.last_polled
            actions.append({
                "action_id": record.action_id,
                "order_id": record.order_id,
                "last_polled_at": None if last is None else wall - (now - last),
                "tracked_at": wall - (now - record.tracked_at),
            })
        return {"version": EXPORT_VERSION, "min_interval": self._min, "exported_at": wall,
                "actions": actions}

    def import_pending(self, data: Mapping[str, Any]) -> int:
        """Resume tracking actions exported by `export_pending()`; returns how many
        were added (ids already tracked are skipped).

        An action's first read here is not before its last read there plus the larger
        of both min intervals, and the client's poll guard is told about that last
        read, so a direct `get_action_status` honours it too. The timeout still counts
        from the original tracking start, but every action is read at least once.
        """
        self._check_open()
        entries = _parse_export(data)
        gap = max(self._min, float(data.get("min_interval") or 0.0))
        now = self._clock.monotonic()
        wall = self._clock.wall()
        added = 0
        for action_id, order_id, last_wall, tracked_wall in entries:
            if action_id in self._actions:
                continue
            # Times in the future (clock skew, tampering) are clamped to now: a future
            # last read is "just read" (never a shorter interval, never a stall).
            last = None if last_wall is None else min(now, now - (wall - last_wall))
            tracked = now if tracked_wall is None else min(now, now - (wall - tracked_wall))
            if last is not None:
                self.client.record_poll(action_id, now - last)
            self._add(action_id, order_id, tracked_at=tracked, last_polled=last, gap=gap)
            added += 1
        return added

    def dump(self, path: str | os.PathLike[str]) -> int:
        """Write `export_pending()` to `path` atomically; returns the number of actions."""
        data = self.export_pending()
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(temporary, target)
        return len(data["actions"])

    def load(self, path: str | os.PathLike[str]) -> int:
        """Import a file written by `dump()`; returns how many actions were added."""
        return self.import_pending(json.loads(Path(path).read_text(encoding="utf-8")))


def _optional_number(item: Mapping[str, Any], key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}.{key} must be epoch seconds or null, not {value!r}")
    return float(value)


def _parse_export(
    data: Mapping[str, Any],
) -> list[tuple[str, str | None, float | None, float | None]]:
    """Check the whole export before importing any of it (all or nothing)."""
    if not isinstance(data, Mapping):
        raise ValueError("pending-actions data must be a mapping (from export_pending)")
    if data.get("version") != EXPORT_VERSION:
        raise ValueError(f"unsupported pending-actions version {data.get('version')!r}; "
                         f"expected {EXPORT_VERSION}")
    gap = data.get("min_interval")
    if gap is not None and (isinstance(gap, bool) or not isinstance(gap, (int, float))):
        raise ValueError(f"min_interval must be a number, not {gap!r}")
    items = data.get("actions")
    if not isinstance(items, list):
        raise ValueError("actions must be a list")
    entries = []
    for index, item in enumerate(items):
        where = f"actions[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be an object")
        action_id = item.get("action_id")
        if not isinstance(action_id, str) or not action_id:
            raise ValueError(f"{where}.action_id must be a non-empty string")
        order_id = item.get("order_id")
        if order_id is not None and not isinstance(order_id, str):
            raise ValueError(f"{where}.order_id must be a string or null")
        entries.append((action_id, order_id, _optional_number(item, "last_polled_at", where),
                        _optional_number(item, "tracked_at", where)))
    return entries
