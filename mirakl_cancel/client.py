"""`MiraklConnectClient`: the two endpoints, typed, behind one transport."""

from __future__ import annotations

import ssl as ssl_module
import warnings
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import Any

import aiohttp

from ._clock import SYSTEM_CLOCK, Clock
from ._constants import (
    API_MIN_INTERVAL,
    DEFAULT_BASE_URL,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    LIST_ORDERS_MAX_IDS,
)
from ._http.auth import Auth, credential_identity
from ._http.net import Network
from ._http.pacing import SharedStore, fleet_key
from ._http.pollguard import PollGuard, shared_reads
from ._http.retry import NO_RETRY, RetryPolicy
from ._http.transport import (
    DEFAULT_LIMITS,
    Limits,
    Timeout,
    Transport,
    TransportStats,
)
from ._http.urls import is_loopback_url
from ._observe.guards import Guards
from ._observe.hooks import (
    ROUTE_CANCEL,
    ROUTE_GET_ACTION_STATUS,
    ROUTE_LIST_ORDERS,
    Call,
    Hooks,
    current_request_key,
)
from ._observe.logs import LogContext, log_context
from ._observe.otel import auto_instrument
from ._sending import CancelOutcome, StoredBody, send_many
from ._serde import (
    converter,
    parse_action_accepted,
    parse_action_status,
    parse_orders_page,
    request_body,
    structure_request,
    unsendable_text,
)
from .errors import ServerError, UncertainDeliveryError, ValidationError, ValidationIssue
from .models import ActionAccepted, ActionStatus, Cancelation, CancelRequest, Order

__all__ = ["DEFAULT_BASE_URL", "MiraklConnectClient"]


def check_min_intervals(base_url: str, *intervals: float) -> None:
    """Refuse read intervals below the API's once-a-minute ceiling, except on loopback.

    Shorter intervals exist for the simulator's scaled time only: against the real API
    they would break its ceiling, which this library keeps as an invariant.
    """
    if intervals and min(intervals) < API_MIN_INTERVAL and not is_loopback_url(base_url):
        raise ValueError(
            f"polling intervals cannot be below {API_MIN_INTERVAL:.0f} s (the API's ceiling) "
            "except against a loopback server such as the simulator")


class MiraklConnectClient:
    """An async client for Mirakl Connect's order cancellation endpoints.

    Use it as an async context manager so that its HTTP session is closed. One client
    shares one concurrency limit, one rate limit and one 429 pause between everything
    sent through it, which is why a whole job should go through a single client.
    Given a `store` (a `PostgresStore`), the rate limit, the 429 pause and the read
    ceilings are shared with every process using that store for the same base URL and
    credential (see README, "Running a fleet").

    Network: `HTTP(S)_PROXY` / `NO_PROXY` are honoured (except for loopback hosts) unless
    `trust_env=False`; `proxy=` (an http(s) URL, credentials allowed) overrides them;
    `ssl=` takes an `ssl.SSLContext` for a custom CA or mutual TLS. Both apply to the
    token request of `ClientCredentials` too, unless it has its own.

    Time: `clock=` (for tests: `mirakl_cancel.testing.ManualClock`) is the one clock of
    every rule that waits or expires: retry and 429 pauses, the rate limit, the poll
    ceilings, the token's expiry, and the schedule of a tracker built on this client.
    Leave it out in production (the real clock).
    """

    def __init__(
        self,
        *,
        auth: Auth,
        base_url: str = DEFAULT_BASE_URL,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_limit: float | None = None,
        retry: RetryPolicy | None = None,
        timeout: Timeout | float | None = None,
        session: aiohttp.ClientSession | None = None,
        min_poll_interval: float = API_MIN_INTERVAL,
        min_list_interval: float = API_MIN_INTERVAL,
        hooks: Hooks | None = None,
        store: SharedStore | None = None,
        limits: Limits | None = None,
        proxy: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        trust_env: bool | None = None,
        clock: Clock | None = None,
    ) -> None:
        if clock is None:
            clock = SYSTEM_CLOCK
        elif not isinstance(clock, Clock):
            raise TypeError("clock must be a Clock (e.g. mirakl_cancel.testing.ManualClock)")
        if not isinstance(auth, Auth):
            raise TypeError("auth must be StaticToken(...) or ClientCredentials(...)")
        if isinstance(timeout, (int, float)):
            seconds = float(timeout)
            timeout = Timeout(connect=min(seconds, DEFAULT_CONNECT_TIMEOUT), read=seconds,
                              answer=max(seconds, Timeout().answer))
        self._transport = Transport(
            base_url=base_url,
            auth=auth,
            max_concurrency=max_concurrency,
            rate_limit=rate_limit,
            retry=retry or RetryPolicy(),
            timeout=timeout or Timeout(),
            session=session,
            min_poll_interval=min_poll_interval,
            hooks=hooks,
            limits=limits or DEFAULT_LIMITS,
            # A session of the caller's keeps its own choice about the environment.
            network=Network(proxy=proxy, ssl=ssl, trust_env=trust_env if trust_env is not None
                            else session.trust_env if session is not None else True),
            clock=clock,
        )
        check_min_intervals(base_url, min_poll_interval, min_list_interval)
        # OpenTelemetry, when the program configured it: no code change needed.
        auto_instrument(self._transport.hooks)
        self._cancel_url = self._transport.route(("v2", "orders"), ("cancel",))
        self._status_url = self._transport.route(("v2", "orders", "actions"))
        self._guards = Guards()
        self.base_url = base_url.rstrip("/")
        # v2-listOrders allows one call per minute: its own guard, shared by all pages
        # (and, like the action guard, by every client for this API and credential).
        self._list_guard = PollGuard(
            min_list_interval, shared_reads(self._transport.scope("list-orders"), clock), clock)
        #: The store shared with other processes (pacing, tracker), or None.
        self.shared_store = store
        #: The key under which a fleet shares this API's rules: base URL + credential.
        self.fleet_key = fleet_key(self.base_url, credential_identity(auth))
        if store is not None:
            if not isinstance(store, SharedStore):
                raise TypeError("store must be a PostgresStore (or another SharedStore)")
            self._transport.fleet = store.fleet_pacing(self.fleet_key)

    def __repr__(self) -> str:
        return (f"MiraklConnectClient(base_url={self.base_url!r}, auth={self._transport.auth!r}, "
                f"max_concurrency={self.max_concurrency})")

    async def __aenter__(self) -> MiraklConnectClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session, unless it was given to us."""
        await self._transport.close()

    @property
    def stats(self) -> TransportStats:
        """Live counters: requests, retries, 429s, uncertain cancels, token refreshes."""
        return self._transport.stats

    @property
    def max_concurrency(self) -> int:
        """How many requests this client has in flight at most."""
        return self._transport.max_concurrency

    @property
    def clock(self) -> Clock:
        """The clock of this client's time rules (the tracker's default clock too)."""
        return self._transport.clock

    @property
    def min_poll_interval(self) -> float:
        """Seconds this client keeps between two reads of one action."""
        return self._transport.poll_guard.min_interval

    def poll_ready_in(self, action_id: str) -> float:
        """Seconds until `action_id` may be read again without breaking the API's
        ceiling (0.0 when a read is allowed now).

        It counts every read of this action through any client of this process for the
        same base URL and credential, retries included, so a caller (a CLI, a
        scheduler) can say when the next read is due instead of silently waiting.
        """
        return self._transport.poll_guard.ready_in(action_id)

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        """Tell the poll guard that `action_id` was read `seconds_ago` seconds ago
        elsewhere (another process, a resumed job), so that no read here comes sooner.
        A negative value (a timestamp in the future) counts as a read just now."""
        self._transport.poll_guard.record_ago(action_id, seconds_ago)

    @property
    def hooks(self) -> Hooks:
        """The hooks called on every request, answer, retry, 429 pause, uncertain cancel
        and (through trackers using this client) tracked action: `client.hooks.add(...)`."""
        return self._transport.hooks

    @property
    def guards(self) -> Guards:
        """The guards awaited before each cancel attempt leaves and around each status read;
        unlike hooks, a guard may refuse by raising (e.g. a journal that cannot record
        the send): `client.guards.before_send(...)`, or `with client.guards.sending(...)`."""
        return self._guards

    @property
    def transport(self) -> Transport:
        """The transport (for extensions that add endpoints, e.g. reconciliation)."""
        return self._transport

    async def cancel_order_lines(
        self, order_id: str, cancelations: Iterable[Cancelation | Mapping[str, Any]]
    ) -> ActionAccepted:
        """Ask Mirakl Connect to cancel lines of one order; the work happens later.

        Raises ValidationError (nothing sent) for a bad request, an ApiError subclass
        for a refusal, and UncertainDeliveryError when the cancel may have been
        processed but its answer was lost: never resend that one blindly.
        """
        try:
            items = list(cancelations)
        except TypeError:
            raise ValidationError(
                [ValidationIssue("cancelations", "must be an iterable of Cancelation")]) from None
        return await self.cancel(structure_request(order_id, items))

    async def cancel(self, request: CancelRequest, *,
                     on_send: Callable[[], Awaitable[None] | None] | None = None) -> ActionAccepted:
        """Send one CancelRequest (see `cancel_order_lines`).

        Every guard (`client.guards`) is awaited right before each attempt leaves, after
        any wait for the concurrency limit, the rate limit or a token: the moment from
        which the cancel may reach the server (a journal records it there, durably,
        before the POST); one that raises refuses the attempt.

        `on_send` (deprecated: use ``with client.guards.sending(fn)``) is called at the
        same moment, after the guards; if it returns an awaitable, the attempt leaves
        only once that is done.
        """
        if on_send is not None:
            warnings.warn("cancel(on_send=...) is deprecated and will be removed in the next "
                          "release: use `with client.guards.sending(guard):` (a guard gets "
                          "the attempt and may refuse it by raising)", DeprecationWarning,
                          stacklevel=2)
        return await self._cancel_noting_send(request, on_send)

    # `_cancel_noting_send`, `_cancel_stored` and `_cancel_body` are plain functions that
    # return the coroutine of `_cancel`: one coroutine frame per cancel instead of three,
    # which every resumption of the task (three or four per exchange) passes through.

    def _cancel_noting_send(
            self, request: CancelRequest,
            on_send: Callable[[], Awaitable[None] | None] | None) -> Awaitable[ActionAccepted]:
        """`cancel`, calling `on_send` after the guards as each attempt leaves.

        Private: `_sending.send_one` notes with it whether an attempt left (to call an
        unexpected failure UNCERTAIN), at no cost per cancel; users have guards. A bad
        request raises ValidationError here, before anything is awaited."""
        if not isinstance(request, CancelRequest):
            raise ValidationError([ValidationIssue("request", "cancel() takes a CancelRequest")])
        body = request_body(request)
        # The ASCII body escapes every non-ASCII character; a lone surrogate shows as
        # \ud8xx-\udfxx there (so do valid pairs: only then is the request walked), and
        # an ASCII order id has none: the common case walks nothing.
        if b"\\ud" in body or not request.order_id.isascii():
            issues = unsendable_text(request.order_id, "order_id") + unsendable_text(
                converter.unstructure(request)["cancelations"], "cancelations")
            if issues:
                raise ValidationError(issues)
        return self._cancel_body(request.order_id, body, len(request.cancelations), on_send)

    def _cancel_stored(
            self, stored: StoredBody,
            on_send: Callable[[], Awaitable[None] | None] | None) -> Awaitable[ActionAccepted]:
        """`_cancel_noting_send` of bytes `request_body` wrote for a request that passed
        its checks then (the job's journaled bodies, `_sending.StoredBody`): the exact
        bytes go out, with nothing to parse, check or write again. Private."""
        return self._cancel_body(stored.order_id, stored.body, stored.lines, on_send)

    def _cancel_body(self, order_id: str, body: bytes, lines: int,
                     on_send: Callable[[], Awaitable[None] | None] | None,
                     ) -> Awaitable[ActionAccepted]:
        hooks = self._transport.hooks
        if not hooks.active:
            return self._cancel(order_id, on_send, None, body)
        call = Call(ROUTE_CANCEL, "POST", order_id=order_id, lines=lines,
                    request_key=current_request_key.get())
        return hooks.observe(call, self._cancel(order_id, on_send, call, body))

    async def _cancel(self, order_id: str,
                      on_send: Callable[[], Awaitable[None] | None] | None,
                      call: Call | None, body: bytes) -> ActionAccepted:
        url = self._cancel_url(order_id)
        gate = self._guards.send_gate(order_id, current_request_key.get())
        if gate is not None:
            on_send = gate if on_send is None else _then(gate, on_send)
        context = log_context.set(LogContext(order_id=order_id))
        try:
            response = await self._transport.request(
                "POST", url, body=body, idempotent=False, expected=(202, 200),
                on_send=on_send, call=call)
        except UncertainDeliveryError as exc:
            exc.order_id = order_id
            raise
        finally:
            log_context.reset(context)
        try:
            return parse_action_accepted(response.data, order_id)
        except Exception as exc:  # whatever broke, the cancel was processed
            # Accepted, but we cannot tell which action: as uncertain as a lost answer.
            raise UncertainDeliveryError(
                f"cancel of order {order_id} answered {response.status} without a "
                f"readable action_id: {exc}", order_id=order_id) from None

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        """Read an action's status.

        The API allows one read per minute per action, so this call waits, if needed,
        until `min_poll_interval` has passed since the previous read of the same action
        through this client, retries included. `retry=False` makes a single attempt,
        for schedulers (like ActionTracker) that reschedule failures themselves.
        """
        if not isinstance(action_id, str) or not action_id:
            raise ValidationError([ValidationIssue("action_id", "must be a non-empty string")])
        if issues := unsendable_text(action_id, "action_id"):
            raise ValidationError(issues)
        guards = self._guards
        if not guards.reads_guarded:
            return await self._observed_status(action_id, retry)
        await guards.reading(action_id)  # may refuse the read, by raising
        status: ActionStatus | None = None
        try:
            status = await self._observed_status(action_id, retry)
            return status
        finally:
            guards.read_over(action_id, status)

    async def _observed_status(self, action_id: str, retry: bool) -> ActionStatus:
        hooks = self._transport.hooks
        if not hooks.active:
            return await self._get_action_status(action_id, retry, None)
        call = Call(ROUTE_GET_ACTION_STATUS, "GET", action_id=action_id)
        return await hooks.observe(call, self._get_action_status(action_id, retry, call))

    async def _get_action_status(self, action_id: str, retry: bool,
                                 call: Call | None) -> ActionStatus:
        url = self._status_url(action_id)
        context = log_context.set(LogContext(action_id=action_id))
        try:
            response = await self._transport.request(
                "GET", url, idempotent=True, poll_key=action_id,
                retry=None if retry else NO_RETRY, call=call)
        finally:
            log_context.reset(context)
        try:
            return parse_action_status(response.data)
        except ValueError as exc:
            raise ServerError(response.status, None, f"unreadable action status: {exc}") from None

    async def list_orders(self, order_ids: Iterable[str]) -> list[Order]:
        """Read orders by id with `v2-listOrders`, every page, 100 ids per call.

        The API allows one listing call per minute, so calls are spaced by
        `min_list_interval`: batch your ids rather than calling this in a loop.
        """
        ids = list(dict.fromkeys(order_ids))
        if any(not isinstance(i, str) or not i for i in ids):
            raise ValidationError([ValidationIssue("order_ids", "must be non-empty strings")])
        if issues := unsendable_text(ids, "order_ids"):
            raise ValidationError(issues)
        hooks = self._transport.hooks
        if not hooks.active:
            return await self._list_orders(ids, None)
        call = Call(ROUTE_LIST_ORDERS, "GET")
        return await hooks.observe(call, self._list_orders(ids, call))

    async def _list_orders(self, ids: list[str], call: Call | None) -> list[Order]:
        url = self._transport.url("v2", "orders")
        orders: list[Order] = []
        for start in range(0, len(ids), LIST_ORDERS_MAX_IDS):
            chunk = ids[start:start + LIST_ORDERS_MAX_IDS]
            page_token: str | None = None
            while True:
                params = [("page_token", page_token)] if page_token else \
                    [("order_ids", i) for i in chunk]
                params.append(("limit", str(LIST_ORDERS_MAX_IDS)))
                response = await self._transport.request(
                    "GET", url, params=params, idempotent=True,
                    poll_key="v2-listOrders", guard=self._list_guard, call=call)
                try:
                    page, page_token = parse_orders_page(response.data)
                except ValueError as exc:
                    raise ServerError(response.status, None,
                                      f"unreadable orders page: {exc}") from None
                orders.extend(page)
                if page_token is None:
                    break
        return orders

    def cancel_many(
        self, requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest], *,
        concurrency: int | None = None,
    ) -> AsyncIterator[CancelOutcome]:
        """Send many cancels concurrently; yield one CancelOutcome per request as each ends.

        This is the one way to send many. A refused or failed request is an outcome too,
        never an exception that would lose the others. At most `concurrency` (default
        `max_concurrency`) are in flight; `requests` is pulled lazily, so a generator of a
        million requests never makes a million tasks. Stopping the iteration early
        abandons the cancels in flight: each is logged (WARNING) with its order id, since
        it may have been processed.
        """
        return send_many(self, requests, concurrency=concurrency)


def _then(first: Callable[[], Awaitable[None] | None],
          then: Callable[[], Awaitable[None] | None]) -> Callable[[], Awaitable[None]]:
    """The guards, then a (deprecated) `on_send` callback."""
    async def both() -> None:
        pending = first()
        if pending is not None:
            await pending
        pending = then()
        if pending is not None:
            await pending

    return both
