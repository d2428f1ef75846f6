"""Client hooks: the one way to observe what a client and its trackers do.

Like httpx's `event_hooks`, but with typed events. Telemetry (`otel`, `metrics` here), a
caller's logging or an alerting rule all plug in here instead of subclassing the client.

Two rules shape this module:

- **A hook cannot break an exchange.** An exception raised by a hook is logged and
  swallowed; it never reaches the request, which may be a cancel on its way out. (That
  is also why a write-ahead mark that *must* stop a send when it fails, such as the
  job journal's "SENDING" mark, is not a hook but a guard: `_observe/guards.py`.)
- **No hook, no cost.** With nothing registered the client builds no event at all:
  every call site tests one attribute (`hooks.active`) and moves on. Events are built
  only for the kinds someone listens to.

Hooks are synchronous and run on the event loop, inline: keep them quick (count, set a
span attribute, put on a queue), never block.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..errors import ApiError, UncertainDeliveryError
from ..models import ActionAccepted, ActionStatus

if TYPE_CHECKING:
    from ..tracker import TrackedResult

__all__ = [
    "ROUTE_CANCEL",
    "ROUTE_GET_ACTION_STATUS",
    "ROUTE_LIST_ORDERS",
    "ActionFinalEvent",
    "ActionTrackedEvent",
    "Call",
    "CallEndEvent",
    "CallOutcome",
    "Hooks",
    "Observer",
    "PollEvent",
    "RateLimitEvent",
    "RequestEvent",
    "ResponseEvent",
    "RetryEvent",
    "UncertainEvent",
]

logger = logging.getLogger("mirakl_cancel")

T = TypeVar("T")

#: The caller's key for the cancel being sent (the job's journal key), for `Call`.
current_request_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mirakl_cancel_request_key", default=None)


async def with_request_key(key: str, work: Awaitable[T]) -> T:
    """Await `work` (a cancel) with `key` as its `Call.request_key` (and span attribute)."""
    token = current_request_key.set(key)
    try:
        return await work
    finally:
        current_request_key.reset(token)

#: Route names: the API's operation ids, so that they match its documentation.
ROUTE_CANCEL = "v2-cancelOrderLines"
ROUTE_GET_ACTION_STATUS = "v2-getActionStatus"
ROUTE_LIST_ORDERS = "v2-listOrders"


class CallOutcome(str, enum.Enum):
    """How one logical call (all its attempts together) ended."""

    OK = "ok"
    #: A cancel that may have been processed although no answer says so.
    UNCERTAIN = "uncertain"
    ERROR = "error"
    CANCELLED = "cancelled"


@attrs.define(slots=True, eq=False)
class Call:
    """One logical call of the client (a cancel, a status read, a listing), across its
    attempts. The same object is passed to every event of that call, so a hook can keep
    its per-call state (a span, a start time) in `extensions`, as httpx's
    `request.extensions` allows.

    It never holds a token, a secret or a body.
    """

    route: str
    method: str
    order_id: str | None = None
    action_id: str | None = None
    #: Cancelation lines in a cancel.
    lines: int | None = None
    #: The caller's key for the request (the job's journal key), when it has one.
    request_key: str | None = None
    #: Epoch seconds when the call began (before any wait for a slot or a token).
    started_at: float = attrs.field(factory=time.time)
    #: Attempts that left so far, and the HTTP status of the last answer.
    attempts: int = 0
    status: int | None = None
    extensions: dict[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen(slots=True)
class RequestEvent:
    """An attempt is leaving now, after every wait (slot, rate limit, 429 pause, token)."""

    call: Call
    attempt: int


@attrs.frozen(slots=True)
class ResponseEvent:
    """An attempt ended: `status` is the HTTP status, or None when no answer arrived
    (`error` then names the failure, e.g. ``ServerDisconnectedError``)."""

    call: Call
    attempt: int
    status: int | None
    #: Seconds from the attempt leaving to its answer (or failure).
    elapsed: float
    error: str | None = None


@attrs.frozen(slots=True)
class RetryEvent:
    """A failed attempt will be tried again after `delay` seconds."""

    call: Call
    attempt: int
    delay: float
    reason: str


@attrs.frozen(slots=True)
class RateLimitEvent:
    """A 429: every request of the client pauses for `seconds`."""

    call: Call
    attempt: int
    seconds: float


@attrs.frozen(slots=True)
class UncertainEvent:
    """A cancel may have been processed but its answer was lost: it is not resent."""

    call: Call
    reason: str


@attrs.frozen(slots=True)
class CallEndEvent:
    """A logical call ended (after its last attempt)."""

    call: Call
    outcome: CallOutcome
    #: The last HTTP status known (the answer, or the error's status).
    status: int | None = None
    #: The error's class name (never its message: it may quote a body).
    error: str | None = None
    #: The action's state for a status read (its raw value).
    action_state: str | None = None


@attrs.frozen(slots=True)
class ActionTrackedEvent:
    """A tracker started following an action."""

    action_id: str
    order_id: str | None


@attrs.frozen(slots=True)
class PollEvent:
    """A tracker starts a status read `lag` seconds after the read was due."""

    action_id: str
    order_id: str | None
    #: Reads of this action the tracker made before this one.
    polls: int
    lag: float


@attrs.frozen(slots=True)
class ActionFinalEvent:
    """A tracker stopped following an action: final state, timeout or error."""

    result: TrackedResult


_EVENTS = ("call_start", "request", "response", "retry", "rate_limit", "uncertain",
           "call_end", "action_tracked", "poll", "action_final")


class Observer:
    """A base class for hook objects: override the `on_*` methods you need.

    `Hooks.add(observer)` registers only the methods a subclass overrides, so an
    observer interested in one event costs nothing on the others.
    """

    def on_call_start(self, call: Call) -> None:
        """A logical call begins (before waiting for a slot or a token)."""

    def on_request(self, event: RequestEvent) -> None:
        """An attempt leaves."""

    def on_response(self, event: ResponseEvent) -> None:
        """An attempt ended, with an answer or without."""

    def on_retry(self, event: RetryEvent) -> None:
        """An attempt is retried."""

    def on_rate_limit(self, event: RateLimitEvent) -> None:
        """A 429 pauses the client."""

    def on_uncertain(self, event: UncertainEvent) -> None:
        """A cancel's delivery is uncertain."""

    def on_call_end(self, event: CallEndEvent) -> None:
        """A logical call ended."""

    def on_action_tracked(self, event: ActionTrackedEvent) -> None:
        """A tracker follows a new action."""

    def on_poll(self, event: PollEvent) -> None:
        """A tracker starts a status read."""

    def on_action_final(self, event: ActionFinalEvent) -> None:
        """A tracker finished with an action."""


Listener = Callable[[Any], None]


def _listeners(value: Callable[[T], None] | Iterable[Callable[[T], None]] | None,
               ) -> list[Listener]:
    if value is None:
        return []
    if callable(value):
        return [value]
    return list(value)


class Hooks:
    """Callbacks the client (and the trackers using it) call on each event.

    >>> hooks = Hooks(on_retry=lambda e: print("retry in", e.delay))
    >>> client = MiraklConnectClient(auth=auth, hooks=hooks)   # doctest: +SKIP
    >>> client.hooks.add(my_observer)                           # doctest: +SKIP

    Each `on_*` argument takes a callable or a list of them; `add()` takes an
    `Observer` (or any object with `on_*` methods) and `on()` a single callable by
    event name. Both return a function that unregisters what they registered.
    """

    __slots__ = ("__weakref__", "_by_event", "active")

    def __init__(
        self,
        *observers: object,
        on_call_start: Callable[[Call], None] | Iterable[Callable[[Call], None]] | None = None,
        on_request: Callable[[RequestEvent], None]
        | Iterable[Callable[[RequestEvent], None]] | None = None,
        on_response: Callable[[ResponseEvent], None]
        | Iterable[Callable[[ResponseEvent], None]] | None = None,
        on_retry: Callable[[RetryEvent], None]
        | Iterable[Callable[[RetryEvent], None]] | None = None,
        on_rate_limit: Callable[[RateLimitEvent], None]
        | Iterable[Callable[[RateLimitEvent], None]] | None = None,
        on_uncertain: Callable[[UncertainEvent], None]
        | Iterable[Callable[[UncertainEvent], None]] | None = None,
        on_call_end: Callable[[CallEndEvent], None]
        | Iterable[Callable[[CallEndEvent], None]] | None = None,
        on_action_tracked: Callable[[ActionTrackedEvent], None]
        | Iterable[Callable[[ActionTrackedEvent], None]] | None = None,
        on_poll: Callable[[PollEvent], None] | Iterable[Callable[[PollEvent], None]] | None = None,
        on_action_final: Callable[[ActionFinalEvent], None]
        | Iterable[Callable[[ActionFinalEvent], None]] | None = None,
    ) -> None:
        given: dict[str, Any] = {
            "call_start": on_call_start, "request": on_request, "response": on_response,
            "retry": on_retry, "rate_limit": on_rate_limit, "uncertain": on_uncertain,
            "call_end": on_call_end, "action_tracked": on_action_tracked, "poll": on_poll,
            "action_final": on_action_final,
        }
        self._by_event: dict[str, list[Listener]] = {
            name: _listeners(given[name]) for name in _EVENTS}
        #: Whether any hook at all is registered: the one test on the hot path.
        self.active = False
        self._update()
        for observer in observers:
            self.add(observer)

    def __repr__(self) -> str:
        counts = {name: len(fns) for name, fns in self._by_event.items() if fns}
        return f"Hooks({counts})"

    def _update(self) -> None:
        self.active = any(self._by_event.values())

    def listens(self, event: str) -> bool:
        """Whether anything is registered for `event` (e.g. ``"request"``)."""
        return bool(self._by_event[event])

    def on(self, event: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Register `callback` for `event` (a name such as ``"retry"``); returns a remover."""
        if event not in self._by_event:
            raise ValueError(f"unknown hook event {event!r}; expected one of {_EVENTS}")
        if not callable(callback):
            raise TypeError("a hook must be callable")
        self._by_event[event].append(callback)
        self._update()

        def remove() -> None:
            fns = self._by_event[event]
            if callback in fns:
                fns.remove(callback)
            self._update()

        return remove

    def add(self, observer: object) -> Callable[[], None]:
        """Register every `on_<event>` method of `observer` (those an `Observer` subclass
        overrides, or all present on another object); returns a function removing them."""
        removers: list[Callable[[], None]] = []
        for name in _EVENTS:
            method = getattr(observer, f"on_{name}", None)
            if method is None or not callable(method):
                continue
            if isinstance(observer, Observer) and \
                    getattr(type(observer), f"on_{name}") is getattr(Observer, f"on_{name}"):
                continue  # not overridden: a no-op, so do not make that event active
            removers.append(self.on(name, method))
        if not removers:
            raise TypeError(f"{observer!r} has no on_<event> method to register")

        def remove() -> None:
            for remover in removers:
                remover()

        return remove

    def emit(self, event: str, payload: object) -> None:
        """Call the hooks of `event` with `payload`; a failing hook is logged, never raised."""
        for callback in self._by_event[event]:
            try:
                callback(payload)
            except Exception:
                logger.exception("a mirakl_cancel %s hook failed (ignored)", event)

    async def observe(self, call: Call, work: Awaitable[T]) -> T:
        """Run one logical call's `work` between its call_start and call_end events."""
        self.emit("call_start", call)
        try:
            result = await work
        except BaseException as exc:
            self.end(call, error=exc)
            raise
        self.end(call, result=result)
        return result

    def end(self, call: Call, *, result: object = None, error: BaseException | None = None,
            ) -> None:
        """Emit the end of `call` (and its uncertain delivery, if that is how it ended)."""
        state: str | None = None
        status = call.status
        if isinstance(result, ActionAccepted):
            call.action_id = result.action_id
        elif isinstance(result, ActionStatus):
            state = result.raw_status
        if error is None:
            outcome = CallOutcome.OK
        elif isinstance(error, UncertainDeliveryError):
            outcome = CallOutcome.UNCERTAIN
            if self._by_event["uncertain"]:
                self.emit("uncertain", UncertainEvent(call, _reason(error)))
        elif isinstance(error, Exception):
            outcome = CallOutcome.ERROR
            if isinstance(error, ApiError):
                status = error.status
        else:
            outcome = CallOutcome.CANCELLED
        if self._by_event["call_end"]:
            self.emit("call_end", CallEndEvent(
                call, outcome, status, None if error is None else type(error).__name__, state))


def _reason(error: UncertainDeliveryError) -> str:
    """Why a delivery is uncertain, without quoting any body: the failure's kind."""
    cause = error.__cause__
    if isinstance(cause, ApiError):
        return f"HTTP {cause.status}"
    if cause is not None:
        return type(cause).__name__
    return "unreadable answer"
