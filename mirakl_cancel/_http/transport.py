"""One HTTP exchange, done right: the only place that talks to aiohttp.

It owns the session, the timeouts, the concurrency limit, the client-side rate limit,
the shared pause after a 429, the retries, and the mapping of low-level failures to the
public errors. Each failed attempt is described as plain data (`_http.retry.Attempt`) and
`_http.retry.decide` says what to do; this module carries the decision out (sleeps, pauses,
logs, raises). Its one safety rule, kept there: a request that is not idempotent (a
cancel) is retried only when the server certainly did not process it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import aiohttp
import attrs
from yarl import URL

from .._clock import SYSTEM_CLOCK, Clock, current_clock
from .._constants import (
    API_MIN_INTERVAL,
    DEFAULT_ANSWER_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_READ_TIMEOUT,
    READ_ABANDON_MARGIN,
    USER_AGENT,
)
from .._observe.hooks import Call, Hooks, RateLimitEvent, RequestEvent, ResponseEvent, RetryEvent
from .._observe.logs import log_context
from .._serde import AnswerTooLarge, loads, parse_error_body, read_bounded, read_complete
from ..errors import (
    ApiError,
    ConnectError,
    MiraklError,
    RateLimitError,
    ServerError,
    TransportError,
    UncertainDeliveryError,
    api_error_class,
)
from .auth import Auth, credential_identity
from .net import Network, current_network
from .pacing import FleetPacing
from .pollguard import Claim, PollGuard, shared_reads
from .retry import (
    Attempt,
    Decision,
    Failure,
    RetryPolicy,
    Verdict,
    decide,
    resend_safe,
)
from .urls import check_base_url, encode_segment

__all__ = ["Limits", "Response", "Timeout", "Transport", "TransportStats"]

logger = logging.getLogger("mirakl_cancel")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{attribute.name} must be a finite number > 0, not {value!r}")


@attrs.frozen
class Timeout:
    """Connect, read and whole-answer timeouts, in seconds.

    `read` bounds each wait for data; `answer` bounds one attempt as a whole, from the
    moment it starts connecting to the last byte of the answer, so a server trickling
    one byte per second cannot stretch a request past it. Time spent waiting for a
    free slot under the concurrency limit or the rate limit is not counted: such a
    request has not been sent, so it must not time out.
    """

    connect: float = attrs.field(default=DEFAULT_CONNECT_TIMEOUT, validator=_positive)
    read: float = attrs.field(default=DEFAULT_READ_TIMEOUT, validator=_positive)
    answer: float = attrs.field(default=DEFAULT_ANSWER_TIMEOUT, validator=_positive)


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name} must be an integer >= 1, not {value!r}")


@attrs.frozen
class Limits:
    """How much of an answer the client accepts before giving up on it.

    `max_body_bytes` caps an answer's body as read, after decompression (so a gzip
    bomb stops there too); a Content-Length above it is refused before reading.
    `max_json_depth` caps nesting, checked before decoding. The defaults are far above
    anything Mirakl Connect sends (a 100-order page is well under 1 MiB, nesting under
    10). A cancel whose answer breaks a bound may have been processed: it raises
    `UncertainDeliveryError`; a read raises `ServerError`.
    """

    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=_positive_int)
    max_json_depth: int = attrs.field(default=DEFAULT_MAX_JSON_DEPTH, validator=_positive_int)


DEFAULT_LIMITS = Limits()


@attrs.define
class TransportStats:
    """Counters a caller can read at any time (e.g. for a job summary)."""

    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    uncertain: int = 0
    token_refreshes: int = 0


class Response(NamedTuple):
    """A successful answer: its status and parsed JSON body (a tuple: one per request,
    on the hot path, where a frozen attrs class costs several times more to make)."""

    status: int
    data: Any


class _Failed(Exception):
    """Internal: one attempt failed. `attempt` says how (the input of `decide`), `error`
    is what is raised if it is not retried, `uncertain` what UncertainDeliveryError
    says if the request may have been processed."""

    def __init__(self, attempt: Attempt, error: MiraklError, uncertain: str = "",
                 token: str = "") -> None:
        super().__init__(str(error))
        self.attempt = attempt
        self.error = error
        self.uncertain = uncertain
        #: The token a 401 refused (to renew it only if it is still the current one).
        self.token = token
        # Decided once, here where the error is made: the job and the engine read it.
        error.resend_safe = resend_safe(attempt)

    def pop_token(self) -> str:
        """The refused token, kept no longer (in no local, no error, no frame)."""
        token, self.token = self.token, ""
        return token


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date
    (counted from `now`, wall-clock seconds, default the real time).

    Fractional seconds are accepted too (the simulator uses them for scaled time).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (SYSTEM_CLOCK.wall() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(seconds, 0.0)


class Transport:
    """Performs exchanges with Mirakl Connect under the client's limits and rules."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: Auth,
        max_concurrency: int,
        rate_limit: float | None,
        retry: RetryPolicy,
        timeout: Timeout,
        session: aiohttp.ClientSession | None,
        min_poll_interval: float = API_MIN_INTERVAL,
        hooks: Hooks | None = None,
        limits: Limits = DEFAULT_LIMITS,
        network: Network | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError("rate_limit must be positive (requests per second) or None")
        self._base = check_base_url(base_url)
        self._base_path = self._base.raw_path.rstrip("/")
        self.auth = auth
        self.retry = retry
        self.timeout = timeout
        self.limits = limits
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.stats = TransportStats()
        #: The client's clock: every wait and deadline of ours (retries, 429 pauses, the
        #: rate limit, the poll ceiling, the token's expiry) is on it.
        self.clock = clock
        self._monotonic = clock.monotonic  # read on every request: bound once
        self._session = session
        self._owns_session = session is None
        self._semaphore = asyncio.Semaphore(max_concurrency)
        # aiohttp's total covers connecting, sending and reading the whole body; it
        # starts after our own waits (concurrency, rate limit, token), so those never
        # count. A timeout while connecting is ConnectionTimeoutError: not sent.
        self._client_timeout = aiohttp.ClientTimeout(
            total=timeout.answer, sock_connect=timeout.connect, sock_read=timeout.read)
        #: How long a read in flight holds its slot at most: the attempt's own bound
        #: (aiohttp's total starts as the slot is taken), plus what may still be on the
        #: wire after it. A process killed mid-read frees its slots after that.
        self._read_hold = timeout.answer + READ_ABANDON_MARGIN
        self._paused_until = 0.0
        self._next_slot = 0.0
        #: Spacing of reads of one action (the API's once-a-minute ceiling), shared by
        #: every client of this process for the same API and credential.
        self.poll_guard = PollGuard(min_poll_interval, shared_reads(self.scope("action"), clock),
                                    clock)
        self.hooks = hooks if hooks is not None else Hooks()
        #: Pacing shared with other processes (a store given to the client), or None.
        self.fleet: FleetPacing | None = None
        #: Proxy and TLS settings (the token fetch uses them too, see `_http.net`).
        self.network = network if network is not None else Network()

    def scope(self, kind: str) -> tuple[str, str, str]:
        """The key of the reads that one API ceiling counts together: per base URL and
        credential (a hash of it), across every client of the process."""
        return (kind, str(self._base), credential_identity(self.auth))

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use (inside the running loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=0)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT})
            self._owns_session = True
        if getattr(self._session, "_retry_connection", False):
            # aiohttp silently resends an idempotent request once when a reused connection
            # drops: for a status read, a second read the poll guard never sees (a 429, a
            # broken once-a-minute ceiling). Retries are this module's job alone.
            self._session._retry_connection = False
        return self._session

    async def close(self) -> None:
        """Close the session if this transport created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def url(self, *segments: str) -> URL:
        """The URL of a route, each segment encoded as exactly one path segment."""
        path = "/".join([encode_segment(segment) for segment in segments])
        return self._base.with_path(f"{self._base_path}/{path}", encoded=True)

    def route(self, before: Sequence[str], after: Sequence[str] = ()) -> Callable[[str], URL]:
        """`url(*before, id, *after)` as a function of the id, the fixed segments encoded
        once (a cancel's URL is built per request: this is a third of the cost)."""
        base = self._base
        prefix = "/".join([self._base_path, *map(encode_segment, before), ""])
        suffix = "".join(["/" + encode_segment(segment) for segment in after])

        def url(segment: str) -> URL:
            return base.with_path(prefix + encode_segment(segment) + suffix, encoded=True)

        return url

    # --- pacing -----------------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        """Hold every request of this client for `seconds` (after a 429)."""
        until = self._monotonic() + seconds
        if until > self._paused_until:
            self._paused_until = until

    async def _pace(self) -> None:
        """Wait out a shared 429 pause, then take the next rate-limit slot.

        The rate limit hands out evenly spaced slots (a virtual schedule, GCRA-style),
        so a large job flows at the quota instead of bursting into it.
        """
        while True:
            now = self._monotonic()
            if now < self._paused_until:
                wait = self._paused_until - now
                if wait > self.retry.max_retry_after:
                    # The server asked for a long silence: say so rather than sleep on it.
                    raise RateLimitError(429, None, f"rate limited by the server for another "
                                         f"{wait:.0f}s", retry_after=wait)
                await self.clock.sleep(wait)
                continue
            if self.rate_limit is None:
                return
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.rate_limit
            if slot > now:
                await self.clock.sleep(slot - now)
            if self._monotonic() >= self._paused_until:
                return

    # --- the exchange -----------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: URL,
        *,
        body: bytes | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        idempotent: bool,
        expected: Sequence[int] = (200,),
        retry: RetryPolicy | None = None,
        poll_key: str | None = None,
        guard: PollGuard | None = None,
        on_send: Callable[[], Awaitable[None] | None] | None = None,
        call: Call | None = None,
    ) -> Response:
        """Perform one logical request, retrying what is safe to retry (`_http.retry.decide`).

        `poll_key` names a resource whose reads the API limits in frequency (an action,
        or the order listing): every attempt for it, retries included, waits for
        `guard` (the action poll guard by default) and is recorded there. `on_send` is
        called right before each attempt leaves (after every wait), e.g. to journal that
        a cancel is about to be sent. `call` is given when hooks are registered: each
        attempt, answer, retry and 429 pause is then reported to them.
        """
        policy = retry or self.retry
        guard = guard or self.poll_guard
        exchange = _Exchange(method, url, body, params, idempotent, expected, on_send, call)
        started = self._monotonic()
        tries = 0
        refreshed = False
        context = log_context.get()  # the ids the client set, for log records
        while True:
            tries += 1
            if context is not None:
                context.attempt = tries
            try:
                if poll_key is None:
                    return await self._attempt(exchange)
                return await self._read_attempt(exchange, poll_key, guard)
            except _Failed as exc:
                # Decided below, outside the handler (no exception context); without its
                # traceback, whose frames hold the token sent.
                failed = exc.with_traceback(None)
            decision = decide(
                failed.attempt, idempotent=idempotent, tries=tries,
                elapsed=self._monotonic() - started, policy=policy, refreshed=refreshed,
                jitter=random.random(),
                ready_in=0.0 if poll_key is None else guard.ready_in(poll_key))
            if decision.verdict is Verdict.REFRESH_TOKEN:
                if not self.auth.invalidate(failed.pop_token()):
                    raise failed.error from None
                refreshed = True
                self.stats.token_refreshes += 1
                logger.info("401 from %s %s: renewing the token once", method, url.path,
                            extra={"status": 401})
                tries -= 1  # a token refresh is not a retry of the request
                continue
            failed.pop_token()  # (a second 401's): no token stays in a frame of an error
            await self._perform(decision, failed, exchange, tries, policy)

    async def _perform(self, decision: Decision, failed: _Failed, exchange: _Exchange,
                       tries: int, policy: RetryPolicy) -> None:
        """Carry out a retry, raise or uncertain decision (returns only to retry)."""
        error = failed.error
        if decision.pause:
            # Whoever got the 429, the whole client holds back (even if we give up).
            self.pause(decision.delay)
            if exchange.call is not None:
                self.hooks.emit("rate_limit", RateLimitEvent(exchange.call, tries,
                                                             decision.delay))
            if self.fleet is not None:
                await self.fleet.pause(decision.delay)
        if decision.verdict is Verdict.UNCERTAIN:
            self.stats.uncertain += 1
            logger.warning("%s %s: %s; it will not be sent again", exchange.method,
                           exchange.url.path, failed.uncertain,
                           extra={"status": _status_of(error)})
            raise UncertainDeliveryError(failed.uncertain) from error
        if decision.verdict is Verdict.RAISE:
            raise error from None
        self.stats.retries += 1
        if exchange.call is not None:
            self.hooks.emit("retry", RetryEvent(exchange.call, tries, decision.wait,
                                                _describe(error)))
        logger.info("retrying %s %s in %.2fs after %s (attempt %d of %d)",
                    exchange.method, exchange.url.path, decision.wait, _describe(error),
                    tries + 1, policy.max_attempts, extra={"status": _status_of(error)})
        if not decision.pause:  # a 429 waits in _pace instead
            await self.clock.sleep(decision.delay)

    async def _read_attempt(self, exchange: _Exchange, poll_key: str,
                            guard: PollGuard) -> Response:
        """An attempt at a read of a ceilinged resource. Its slot is taken right before
        it leaves, after every other wait (`_take_slot`), in memory, on disk and in the
        fleet at once, and it is held as in flight until the attempt ends: a concurrent
        read of the same key, in this process or another, waits for its end, not only
        its start."""
        fleet = self.fleet
        resource = "" if fleet is None else \
            f"{'action' if guard is self.poll_guard else 'list'}:{poll_key}"
        while True:
            await guard.wait(poll_key)  # this process's reads: no slot taken yet
            slot = _ReadSlot(guard, poll_key, resource)
            try:
                response = await self._attempt(exchange, slot)
            except _SlotTaken as taken:
                await self._wait_for_slot(slot, taken)
                continue
            except BaseException as exc:
                await self._end_read(slot, exc)
                raise
            await self._end_read(slot, None)
            return response

    async def _take_slot(self, slot: _ReadSlot) -> None:
        """Take the read slot of `slot` now, or raise _SlotTaken (nothing sent)."""
        guard = slot.guard
        claim = guard.try_claim(slot.key, self._read_hold)
        if not isinstance(claim, Claim):
            raise _SlotTaken(claim)
        fleet = self.fleet
        if fleet is not None:
            # The fleet's reservation too (on the store's clock); a failure here sent
            # nothing, so the claim is given back.
            asked = self._monotonic()
            try:
                reservation = await fleet.claim_read(slot.resource, guard.min_interval,
                                                     self._read_hold)
            except BaseException:
                guard.release(claim)
                raise
            if reservation is None:
                guard.release(claim)
                raise _SlotTaken(0.0, fleet=True)
            if self._monotonic() - asked > READ_ABANDON_MARGIN / 2:
                # The answer came late (a stalled store, a frozen process): the bound the
                # reservation counts on started when the store granted it, so a read
                # leaving now might outlive it. Nothing was sent: give both back, again.
                await fleet.end_read(reservation, sent=False)
                guard.release(claim)
                raise _SlotTaken(0.0)
            slot.reservation = reservation
        slot.claim = claim

    async def _wait_for_slot(self, slot: _ReadSlot, taken: _SlotTaken) -> None:
        """Sleep until the slot another read holds may be free (outside the concurrency
        limit: nothing is held while waiting)."""
        delay = taken.delay
        fleet = self.fleet
        if taken.fleet and fleet is not None:
            # While another worker's read is in flight, look at the fleet's record again
            # now and then (a query, not another attempt: no rate-limit slot is spent),
            # since its end brings the slot forward; then wait out what is left. At least
            # a little: the row may be newer than the query saw.
            while True:
                left, in_flight = await fleet.read_ready_in(slot.resource,
                                                            slot.guard.min_interval)
                if not in_flight:
                    break
                await self.clock.sleep(max(min(left, slot.guard.recheck),
                                           _FLEET_RECHECK_FLOOR))
            delay = max(left, _FLEET_RECHECK_FLOOR)
        await self.clock.sleep(delay)

    async def _end_read(self, slot: _ReadSlot, exc: BaseException | None) -> None:
        """Count the read from its end, or give its slot back if it never left."""
        claim = slot.claim
        if claim is None:
            return  # it failed before taking its slot: nothing to end
        sent = exc is None or not _never_sent(exc)
        # Answered: the server saw it before we got its answer. Otherwise (a timeout, a
        # reset, a cancel) its bytes may still be on their way.
        answered = exc is None or (isinstance(exc, _Failed) and exc.attempt.status is not None)
        if sent:
            slot.guard.finish(claim, answered=answered)
        else:
            slot.guard.release(claim)  # nothing reached the server: not a read
        if slot.reservation is not None and self.fleet is not None:
            await self.fleet.end_read(slot.reservation, sent=sent, answered=answered)

    async def _attempt(self, exchange: _Exchange, slot: _ReadSlot | None = None) -> Response:
        """One attempt: wait for a slot, get a token, send, read the whole answer.
        Any failure is a `_Failed` saying how (a long 429 pause: RateLimitError)."""
        session = self.session
        method, url, call = exchange.method, exchange.url, exchange.call
        async with self._semaphore:
            if self.fleet is not None or self.rate_limit is not None or self._paused_until:
                await self._wait_turn()
            # A token valid now is taken without awaiting (one coroutine less per attempt).
            cached = getattr(self.auth, "cached_token", None)
            token = (cached() if cached is not None else None) or await self._token(session)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                       "User-Agent": USER_AGENT}  # also on a session the caller gave us
            if exchange.body is not None:
                headers["Content-Type"] = "application/json"
            if slot is not None:  # a ceilinged read: its slot, after every other wait
                await self._take_slot(slot)
            network = self.network
            proxy, proxy_headers = network.route(url, headers)
            self.stats.requests += 1
            if exchange.on_send is not None:
                marked = exchange.on_send()
                if marked is not None:  # e.g. a durable journal mark: it must land first
                    await marked
            if call is not None:
                call.attempts += 1
                self.hooks.emit("request", RequestEvent(call, call.attempts))
                sent = self._monotonic()
            failure: _Failed | None = None
            status = 0
            try:
                async with session.request(
                    method, url, data=exchange.body, params=exchange.params,
                    headers=headers, timeout=self._client_timeout, allow_redirects=False,
                    proxy=proxy, proxy_headers=proxy_headers, ssl=network.ssl,
                ) as response:
                    status = response.status
                    try:
                        complete = read_complete(response, self.limits.max_body_bytes)
                        raw = complete if complete is not None else \
                            await read_bounded(response, self.limits.max_body_bytes)
                    except AnswerTooLarge:
                        response.close()  # do not drain the rest into a pooled connection
                        raise
                    # Headers matter only for an error answer: skip parsing them otherwise.
                    failed = status not in exchange.expected
                    retry_after_header = response.headers.get("Retry-After") if failed else None
                    content_type = response.content_type if failed else ""
            except asyncio.CancelledError:
                raise
            except AnswerTooLarge as exc:
                too_large = ServerError(status, None, str(exc))
                failure = _Failed(Attempt(Failure.UNREADABLE, status), too_large,
                                  f"{method} {url.path} may have been processed: its answer "
                                  f"was refused ({too_large.message})")
            except Exception as exc:
                if call is not None:
                    self.hooks.emit("response", ResponseEvent(
                        call, call.attempts, None, self._monotonic() - sent, type(exc).__name__))
                failure = _map_failure(exc, method, url)
            if failure is not None:
                # Raised outside the except block: aiohttp's exception (whose request
                # info holds our Authorization header) must not become its __context__.
                raise failure
        if call is not None:
            call.status = status
            self.hooks.emit("response", ResponseEvent(
                call, call.attempts, status, self._monotonic() - sent))
        if status in exchange.expected:
            try:
                return Response(status, self._loads(raw) if raw else None)
            except ValueError as exc:
                unreadable = ServerError(status, None, f"answer is not valid JSON: {exc}",
                                         body=_snippet(raw))
            # A success status means the request *was* processed: never resend it.
            raise _Failed(Attempt(Failure.UNREADABLE, status), unreadable,
                          f"{method} {url.path} answered {status} with an unreadable body: "
                          "it was processed, but its result is unknown")
        raise self._refused(exchange, status, raw, content_type, retry_after_header, token)

    async def _wait_turn(self) -> None:
        """Wait out the 429 pause and take a rate-limit slot (the fleet's, if shared)."""
        try:
            if self.fleet is not None:  # one schedule and one 429 pause for the fleet
                await self.fleet.pace(self.rate_limit, self.retry.max_retry_after)
            else:
                await self._pace()
        except RateLimitError as exc:
            # A long 429 pause stopped the attempt before it left: sending it later is
            # safe (decided here, where the error reaches the request).
            exc.resend_safe = True
            raise

    def _refused(self, exchange: _Exchange, status: int, raw: bytes, content_type: str,
                 retry_after_header: str | None, token: str) -> _Failed:
        """An answer with a status the caller does not expect, as what the attempt came
        to (`decide` judges it), with the error and the UNCERTAIN message it may need."""
        method, path = exchange.method, exchange.url.path
        error = _api_error(status, raw, content_type, retry_after_header,
                           self.limits.max_json_depth, self.clock.wall())
        if status == 429:
            self.stats.rate_limited += 1
            logger.warning("429 from %s %s (Retry-After: %s): pausing all requests",
                           method, path, retry_after_header or "none", extra={"status": 429})
        if 200 <= status < 300:
            uncertain = (f"{method} {path} answered {status}, which this client does not "
                         "expect: it was processed, but its result is unknown")
        else:
            uncertain = f"{method} {path} may have been processed: {_describe(error)}"
        return _Failed(Attempt(Failure.ANSWER, status, error.retry_after), error, uncertain,
                       token=token if status == 401 else "")

    async def _token(self, session: aiohttp.ClientSession) -> str:
        """The bearer token for the next attempt; a failure to get one sent nothing."""
        reset = current_network.set(self.network)
        # The token's expiry follows our clock (set only when it is not the real one).
        reset_clock = None if self.clock is SYSTEM_CLOCK else current_clock.set(self.clock)
        failure: _Failed | None = None
        try:
            return await self.auth.token(session)
        except (TransportError, ServerError) as exc:
            failure = _Failed(Attempt(Failure.NOT_SENT), exc)
        finally:
            current_network.reset(reset)
            if reset_clock is not None:
                current_clock.reset(reset_clock)
        raise failure from None

    def _loads(self, raw: bytes) -> Any:
        return loads(raw, max_depth=self.limits.max_json_depth)


class _ReadSlot:
    """The read slot of one attempt at a ceilinged resource (`Transport._read_attempt`):
    taken right before the attempt leaves, ended when it does."""

    __slots__ = ("claim", "guard", "key", "reservation", "resource")

    def __init__(self, guard: PollGuard, key: str, resource: str) -> None:
        self.guard = guard
        self.key = key
        #: The fleet's name of the resource ("" without a fleet).
        self.resource = resource
        self.claim: Claim | None = None
        self.reservation: object = None


class _SlotTaken(Exception):
    """Internal: the read slot was not free when the attempt was about to leave (another
    read holds it); nothing was sent. `delay`: seconds to wait (this machine's reads);
    `fleet`: the fleet refused it (ask it how long)."""

    def __init__(self, delay: float, *, fleet: bool = False) -> None:
        super().__init__(delay)
        self.delay = delay
        self.fleet = fleet


#: A fleet read refused is tried again after at least this long (seconds): the row it
#: lost to may be newer than the query that said how long to wait.
_FLEET_RECHECK_FLOOR = 0.01


class _Exchange(NamedTuple):
    """The request `Transport.request` makes, the same for each of its attempts (a
    tuple: made once per request, on the hot path)."""

    method: str
    url: URL
    body: bytes | None
    params: Sequence[tuple[str, str]] | None
    idempotent: bool
    expected: Sequence[int]
    on_send: Callable[[], Awaitable[None] | None] | None
    call: Call | None


def _map_failure(exc: BaseException, method: str, url: URL) -> _Failed:
    """The one mapping from aiohttp/asyncio failures to what an attempt came to."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)):
        # The connection was never established: the request was certainly not sent.
        return _Failed(Attempt(Failure.NOT_SENT),
                       ConnectError(f"cannot connect to {url.host}: {_describe(exc)}"))
    error = TransportError(f"{method} {url.path} failed: {_describe(exc)}")
    # Something unforeseen broke the exchange: nothing says the request did not leave,
    # so a cancel must be reported as possibly processed, never as a plain failure that
    # a caller (or a re-run) would feel free to send again.
    broken = isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError))
    return _Failed(Attempt(Failure.BROKEN if broken else Failure.UNFORESEEN), error,
                   f"{method} {url.path} may have been processed: {_describe(error)}")


def _never_sent(exc: BaseException) -> bool:
    """Whether a failed attempt certainly never reached the server.

    True for a refused connection, a failed token fetch, or a long 429 pause that
    stopped the attempt before it left (the one RateLimitError not wrapped in _Failed).
    Anything else, cancellation included, may have reached it.
    """
    if isinstance(exc, _Failed):
        return not exc.attempt.sent
    return isinstance(exc, RateLimitError)


def _status_of(error: BaseException) -> int | None:
    """The HTTP status an error carries (for log records), if any."""
    return error.status if isinstance(error, ApiError) else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _snippet(raw: bytes, limit: int = 2000) -> str:
    return raw[:limit].decode("utf-8", "replace")


def _api_error(status: int, raw: bytes, content_type: str,
               retry_after_header: str | None,
               max_depth: int = DEFAULT_MAX_JSON_DEPTH, now: float | None = None) -> ApiError:
    """The public error for an error answer, useful even when its body is not JSON."""
    data: Any = None
    if raw:
        try:
            data = loads(raw, max_depth=max_depth)
        except ValueError:
            data = None
    parsed = parse_error_body(data)
    retry_after = parse_retry_after(retry_after_header, now)
    cls = api_error_class(status)
    if parsed is None:
        kind = content_type or "empty body"
        message = f"unexpected answer ({kind})" if raw else "empty answer"
        return cls(status, None, message, body=_snippet(raw), retry_after=retry_after)
    return cls(status, parsed.code, parsed.message, parsed.errors, parsed.extensions,
               retry_after=retry_after)
