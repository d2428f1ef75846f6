"""Unit tests of the transport: retries, the uncertain-POST rule, Retry-After, pacing.

HTTP is mocked with aioresponses. Waiting is virtual where a test takes the `clock`
fixture: the client is given a ManualClock whose sleeps take no time, so a 60 s wait
costs nothing.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import re
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from mirakl_cancel import (
    ApiError,
    MiraklConnectClient,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StaticToken,
    Timeout,
    TransportError,
    UncertainDeliveryError,
)
from mirakl_cancel._constants import USER_AGENT
from mirakl_cancel._http import backoff as _backoff
from mirakl_cancel._http.retry import NO_RETRY
from mirakl_cancel._http.transport import Transport, parse_retry_after
from mirakl_cancel._http.urls import check_base_url, encode_segment
from mirakl_cancel.testing import ManualClock

# Loopback, so that backoff can be observed without the once-a-minute poll guard (which
# the client lets go below 60 s only locally).
BASE = "http://127.0.0.1:9/api"
ANY_CANCEL = re.compile(r"^http://127\.0\.0\.1:9/api/v2/orders/[^/]+/cancel$")
ANY_ACTION = re.compile(r"^http://127\.0\.0\.1:9/api/v2/orders/actions/[^/]+$")
LINE = {"quantity": 1, "reason": "OUT_OF_STOCK",
        "price": {"amount": "10.00", "currency": "EUR"},
        "shipping_price": {"amount": "0", "currency": "EUR"}, "order_line_id": "L-1"}
ACCEPTED = {"action_id": "act-1", "tracking_id": "act-1"}
def client(**kwargs: Any) -> MiraklConnectClient:
    kwargs.setdefault("auth", StaticToken("tok-123"))
    kwargs.setdefault("base_url", BASE)
    kwargs.setdefault("retry", RetryPolicy(base_delay=0))
    kwargs.setdefault("min_poll_interval", 0)
    return MiraklConnectClient(**kwargs)


def calls(m: aioresponses) -> int:
    return sum(len(v) for v in m.requests.values())


def recorder(clock: ManualClock | None, log: list[float]) -> Any:
    """An aioresponses callback noting when (fake or real time) each request was sent."""
    def callback(url: Any, **kwargs: Any) -> None:
        log.append(clock.monotonic() if clock is not None else time.monotonic())
    return callback


# --- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("5", 5.0), (" 1.5 ", 1.5), ("0", 0.0), ("-3", 0.0),
     ("nan", None), ("soon", None), ("Mon, 99 Foo 2020 99:99:99 GMT", None)],
)
def test_parse_retry_after_delta_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 120, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(120.0)
    past = email.utils.formatdate(now - 120, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    live = parse_retry_after(email.utils.formatdate(time.time() + 30, usegmt=True))
    assert live is not None
    assert 28 <= live <= 30


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [("0024_COMMERCIAL_ID-A", "0024_COMMERCIAL_ID-A"), ("a/b", "a%2Fb"), ("..", "%2E%2E"),
     (".", "%2E"), ("...", "%2E%2E%2E"), ("x..y", "x..y"), ("a?b", "a%3Fb"), ("a#b", "a%23b"),
     ("a b", "a%20b"), ("100%", "100%25"), ("é", "%C3%A9"), ("a+b&c=d;e", "a%2Bb%26c%3Dd%3Be"),
     ("~_-.", "~_-.")],
)
def test_encode_segment(raw: str, encoded: str) -> None:
    assert encode_segment(raw) == encoded


@pytest.mark.parametrize("url", ["https://miraklconnect.com/api", "https://x.test/api/",
                                 "http://localhost:8080", "http://127.0.0.1:9/api",
                                 "http://127.1.2.3", "http://[::1]:8080/api"])
def test_check_base_url_accepts(url: str) -> None:
    assert check_base_url(url).host is not None


@pytest.mark.parametrize("url", ["http://miraklconnect.com/api", "http://127.evil.example",
                                 "http://localhost.evil.example", "http://10.0.0.1",
                                 "ftp://localhost", "not a url", "https://"])
def test_check_base_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"base_url|plain http"):
        check_base_url(url)


def test_retry_policy_validation() -> None:
    assert RetryPolicy().max_attempts == 5
    assert NO_RETRY.max_attempts == 1
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    for field in ("max_time", "base_delay", "max_delay", "max_retry_after"):
        with pytest.raises(ValueError, match="negative"):
            RetryPolicy(**{field: -1})


def test_transport_argument_validation() -> None:
    common: dict[str, Any] = {"base_url": BASE, "auth": StaticToken("t"), "retry": NO_RETRY,
                              "timeout": Timeout(), "session": None}
    with pytest.raises(ValueError, match="max_concurrency"):
        Transport(max_concurrency=0, rate_limit=None, **common)
    with pytest.raises(ValueError, match="rate_limit"):
        Transport(max_concurrency=1, rate_limit=0, **common)
    with pytest.raises(ValueError, match="min_interval"):
        Transport(max_concurrency=1, rate_limit=None, min_poll_interval=-1, **common)
    transport = Transport(max_concurrency=1, rate_limit=None, **{**common, "base_url": BASE + "/"})
    assert str(transport.url("v2", "orders", "a/b", "cancel")) == \
        BASE + "/v2/orders/a%2Fb/cancel"


@pytest.mark.parametrize("base", [BASE, BASE + "/", BASE + "/api/v%201/"])
@pytest.mark.parametrize("segment", ["O-1", "a/b", ".", "..", "?x#y", "é", "%2F", " "])
def test_a_route_builds_the_url_of_its_segments(base: str, segment: str) -> None:
    # A route encodes its fixed segments once; the URL is the same as url() builds.
    transport = Transport(base_url=base, auth=StaticToken("t"), retry=NO_RETRY,
                          timeout=Timeout(), session=None, max_concurrency=1, rate_limit=None)
    assert transport.route(("v2", "orders"), ("cancel",))(segment) == transport.url(
        "v2", "orders", segment, "cancel")
    assert transport.route(("v2", "orders", "actions"))(segment) == transport.url(
        "v2", "orders", "actions", segment)


def test_user_agent_names_the_library() -> None:
    from mirakl_cancel import __version__

    assert USER_AGENT.startswith(f"mirakl-cancel/{__version__} ")


# --- POST: retry only what was certainly not processed --------------------------------


async def test_post_retries_429_and_503_then_succeeds(mocked: aioresponses,
                                                      clock: ManualClock) -> None:
    mocked.post(ANY_CANCEL, status=429, headers={"Retry-After": "2"},
                payload={"code": "TOO_MANY_REQUEST", "message": "slow down"})
    mocked.post(ANY_CANCEL, status=503, headers={"Retry-After": "3"}, body="busy")
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED)
    async with client(clock=clock) as c:
        accepted = await c.cancel_order_lines("O-1", [LINE])
        assert accepted.action_id == "act-1"
        assert calls(mocked) == 3
        assert c.stats.requests == 3
        assert c.stats.retries == 2
        assert c.stats.rate_limited == 1
        assert c.stats.uncertain == 0
    assert clock.sleeps == [pytest.approx(2.0), pytest.approx(3.0)]


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_post_5xx_is_uncertain_and_sent_once(mocked: aioresponses, status: int) -> None:
    mocked.post(ANY_CANCEL, status=status, payload={"code": "UNEXPECTED", "message": "boom"},
                repeat=True)
    async with client() as c:
        with pytest.raises(UncertainDeliveryError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert calls(mocked) == 1
        assert c.stats.uncertain == 1
        assert c.stats.retries == 0
    assert info.value.order_id == "O-1"
    assert isinstance(info.value, TransportError)
    cause = info.value.__cause__
    assert isinstance(cause, ServerError)
    assert cause.status == status
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize(
    "failure",
    [aiohttp.ServerDisconnectedError(), asyncio.TimeoutError(), aiohttp.SocketTimeoutError(),
     aiohttp.ClientOSError(104, "Connection reset by peer"), aiohttp.ClientPayloadError("cut")],
    ids=["disconnect", "timeout", "read-timeout", "reset", "payload"],
)
async def test_post_lost_answer_is_uncertain_and_sent_once(mocked: aioresponses,
                                                           failure: Exception) -> None:
    mocked.post(ANY_CANCEL, exception=failure, repeat=True)
    async with client() as c:
        with pytest.raises(UncertainDeliveryError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert calls(mocked) == 1
        assert c.stats.uncertain == 1
    assert info.value.order_id == "O-1"
    assert "may have been processed" in str(info.value)


@pytest.mark.parametrize(
    "failure",
    [aiohttp.ClientConnectorError(SimpleNamespace(host="h", port=443, ssl=True),
                                  OSError(111, "Connection refused")),
     aiohttp.ConnectionTimeoutError()],
    ids=["refused", "connect-timeout"],
)
async def test_post_not_connected_is_retried(mocked: aioresponses, clock: ManualClock,
                                             failure: Exception) -> None:
    mocked.post(ANY_CANCEL, exception=failure)
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED)
    async with client(clock=clock) as c:
        assert (await c.cancel_order_lines("O-1", [LINE])).action_id == "act-1"
        assert c.stats.retries == 1
        assert c.stats.uncertain == 0
    assert calls(mocked) == 2


async def test_post_not_connected_gives_up_with_transport_error(mocked: aioresponses,
                                                                clock: ManualClock) -> None:
    mocked.post(ANY_CANCEL, exception=aiohttp.ConnectionTimeoutError(), repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_attempts=3, base_delay=0)) as c:
        with pytest.raises(TransportError) as info:
            await c.cancel_order_lines("O-1", [LINE])
    assert not isinstance(info.value, UncertainDeliveryError)
    assert "cannot connect" in str(info.value)
    assert calls(mocked) == 3


@pytest.mark.parametrize(
    "failure",
    [{"status": 500, "payload": {"code": "UNEXPECTED", "message": "x"}},
     {"exception": aiohttp.ServerDisconnectedError()},
     {"exception": asyncio.TimeoutError()}],
    ids=["500", "disconnect", "timeout"],
)
async def test_post_uncertain_retry_is_opt_in(mocked: aioresponses, clock: ManualClock,
                                              failure: dict[str, Any]) -> None:
    mocked.post(ANY_CANCEL, **failure)
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED)
    policy = RetryPolicy(base_delay=0, retry_uncertain_posts=True)
    async with client(clock=clock, retry=policy) as c:
        assert (await c.cancel_order_lines("O-1", [LINE])).action_id == "act-1"
        assert c.stats.retries == 1
        assert c.stats.uncertain == 0
    assert calls(mocked) == 2


async def test_post_503_exhausts_attempts(mocked: aioresponses, clock: ManualClock) -> None:
    mocked.post(ANY_CANCEL, status=503, body="", repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_attempts=3, base_delay=0)) as c:
        with pytest.raises(ServerError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.retries == 2
    assert info.value.status == 503
    assert calls(mocked) == 3


async def test_accepted_with_unreadable_body_is_uncertain_not_a_failure(
        mocked: aioresponses) -> None:
    """A 202 means the cancel was taken: an unreadable body must never invite a resend."""
    mocked.post(ANY_CANCEL, status=202, body="<html>accepted</html>", content_type="text/html")
    async with client(retry=RetryPolicy(base_delay=0, retry_uncertain_posts=True)) as c:
        with pytest.raises(UncertainDeliveryError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.uncertain == 1
    assert info.value.order_id == "O-1"
    assert calls(mocked) == 1


@pytest.mark.parametrize("payload", [{}, {"action_id": ""}, {"message": "ok"}])
async def test_accepted_without_action_id_is_uncertain(mocked: aioresponses,
                                                       payload: dict[str, Any]) -> None:
    mocked.post(ANY_CANCEL, status=202, payload=payload)
    async with client() as c:
        with pytest.raises(UncertainDeliveryError, match="without a readable action_id"):
            await c.cancel_order_lines("O-1", [LINE])
    assert calls(mocked) == 1


async def test_post_unforeseen_failure_mid_exchange_is_uncertain(mocked: aioresponses) -> None:
    """Regression: an exception outside aiohttp's usual ones broke a POST into a plain
    TransportError (ERROR), though nothing proved the cancel had not left."""
    mocked.post(ANY_CANCEL, exception=RuntimeError("something odd"), repeat=True)
    async with client() as c:
        with pytest.raises(UncertainDeliveryError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.uncertain == 1
    assert info.value.order_id == "O-1"
    assert calls(mocked) == 1


async def test_get_unforeseen_failure_is_a_plain_transport_error(mocked: aioresponses) -> None:
    mocked.get(ANY_ACTION, exception=RuntimeError("something odd"))
    async with client() as c:
        with pytest.raises(TransportError) as info:
            await c.get_action_status("act-1")
    assert not isinstance(info.value, UncertainDeliveryError)


@pytest.mark.parametrize("status", [201, 204])
async def test_post_unexpected_success_status_is_uncertain(mocked: aioresponses,
                                                           status: int) -> None:
    """Regression: a 2xx other than 200/202 was an ApiError (ERROR), yet it was processed."""
    mocked.post(ANY_CANCEL, status=status, body="", repeat=True)
    async with client(retry=RetryPolicy(base_delay=0, retry_uncertain_posts=True)) as c:
        with pytest.raises(UncertainDeliveryError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.uncertain == 1
    assert info.value.order_id == "O-1"
    assert calls(mocked) == 1


# --- GET: idempotent, retried ---------------------------------------------------------


STATUS_BODY = {"id": "act-1", "status": "PENDING", "created_at": "2021-07-06T09:24:36.32Z"}


@pytest.mark.parametrize(
    "failure",
    [{"status": 500, "body": ""}, {"status": 502, "body": "<html>bad gateway</html>",
                                   "content_type": "text/html"},
     {"status": 504, "payload": {"code": "UNAVAILABLE", "message": "x"}},
     {"exception": asyncio.TimeoutError()}, {"exception": aiohttp.SocketTimeoutError()},
     {"exception": aiohttp.ServerDisconnectedError()}],
    ids=["500", "502-html", "504", "timeout", "read-timeout", "disconnect"],
)
async def test_get_retries_failures(mocked: aioresponses, clock: ManualClock,
                                    failure: dict[str, Any]) -> None:
    mocked.get(ANY_ACTION, **failure)
    mocked.get(ANY_ACTION, **failure)
    mocked.get(ANY_ACTION, payload=STATUS_BODY)
    async with client(clock=clock) as c:
        status = await c.get_action_status("act-1")
        assert c.stats.retries == 2
        assert c.stats.uncertain == 0
    assert status.id == "act-1"
    assert calls(mocked) == 3


async def test_get_gives_up_after_max_attempts(mocked: aioresponses, clock: ManualClock) -> None:
    mocked.get(ANY_ACTION, status=500, payload={"code": "UNEXPECTED", "message": "x"},
               repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_attempts=4, base_delay=0)) as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
        assert c.stats.retries == 3
    assert info.value.code == "UNEXPECTED"
    assert calls(mocked) == 4


async def test_get_without_retry_makes_one_attempt(mocked: aioresponses) -> None:
    mocked.get(ANY_ACTION, status=503, repeat=True)
    async with client() as c:
        with pytest.raises(ServerError):
            await c.get_action_status("act-1", retry=False)
    assert calls(mocked) == 1


async def test_get_timeout_gives_up_with_transport_error(mocked: aioresponses,
                                                         clock: ManualClock) -> None:
    mocked.get(ANY_ACTION, exception=asyncio.TimeoutError(), repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_attempts=2, base_delay=0)) as c:
        with pytest.raises(TransportError, match="timeout") as info:
            await c.get_action_status("act-1")
    assert not isinstance(info.value, UncertainDeliveryError)


async def test_backoff_grows_exponentially_and_is_capped(mocked: aioresponses,
                                                         clock: ManualClock,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backoff, "full_jitter", lambda delay, fraction: delay)  # no randomness
    mocked.get(ANY_ACTION, status=500, repeat=True)
    policy = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=3, max_time=1000)
    async with client(clock=clock, retry=policy) as c:
        with pytest.raises(ServerError):
            await c.get_action_status("act-1")
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_max_time_bounds_retries(mocked: aioresponses, clock: ManualClock) -> None:
    mocked.get(ANY_ACTION, status=503, headers={"Retry-After": "10"}, repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_time=5, base_delay=0)) as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
    assert info.value.retry_after == 10.0
    assert clock.sleeps == []
    assert calls(mocked) == 1


# --- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize("jitter", [0.0, 1.0, 9.0])
async def test_retry_after_is_never_shortened_by_jitter(
        mocked: aioresponses, clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
        jitter: float) -> None:
    monkeypatch.setattr(_backoff, "full_jitter", lambda delay, fraction: jitter)
    mocked.get(ANY_ACTION, status=503, headers={"Retry-After": "7"})
    mocked.get(ANY_ACTION, payload=STATUS_BODY)
    async with client(clock=clock, retry=RetryPolicy(base_delay=10, max_delay=30)) as c:
        await c.get_action_status("act-1")
    assert clock.sleeps == [max(7.0, jitter)]


async def test_retry_after_with_real_jitter(mocked: aioresponses, clock: ManualClock) -> None:
    for _ in range(20):
        mocked.post(ANY_CANCEL, status=429, headers={"Retry-After": "1.5"})
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED)
    policy = RetryPolicy(max_attempts=30, base_delay=0.1, max_delay=1.0, max_time=10_000)
    async with client(clock=clock, retry=policy) as c:
        await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.rate_limited == 20
    assert len(clock.sleeps) == 20
    assert all(s >= 1.5 for s in clock.sleeps)


async def test_retry_after_http_date(mocked: aioresponses, clock: ManualClock,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backoff, "full_jitter", lambda delay, fraction: 0.0)
    # An HTTP-date is counted from the client's clock's wall time (the header has whole
    # seconds: the wait is 40 s less the clock's fraction of a second).
    when = email.utils.formatdate(clock.wall() + 40, usegmt=True)
    mocked.post(ANY_CANCEL, status=429, headers={"Retry-After": when})
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED)
    async with client(clock=clock) as c:
        await c.cancel_order_lines("O-1", [LINE])
    assert len(clock.sleeps) == 1
    assert 39 < clock.sleeps[0] <= 40


@pytest.mark.parametrize("header", ["600", "inf"])
async def test_retry_after_beyond_max_surfaces_without_sleeping(
        mocked: aioresponses, clock: ManualClock, header: str) -> None:
    mocked.post(ANY_CANCEL, status=429, headers={"Retry-After": header},
                payload={"code": "TOO_MANY_REQUEST", "message": "later"}, repeat=True)
    async with client(clock=clock, retry=RetryPolicy(max_retry_after=300)) as c:
        with pytest.raises(RateLimitError) as info:
            await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.rate_limited == 1
        assert c.stats.retries == 0
    assert info.value.retry_after == float(header)
    assert info.value.status == 429
    assert info.value.code == "TOO_MANY_REQUEST"
    assert clock.sleeps == []
    assert calls(mocked) == 1


async def test_429_without_retry_after_backs_off(mocked: aioresponses, clock: ManualClock,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_backoff, "full_jitter", lambda delay, fraction: delay)
    mocked.get(ANY_ACTION, status=429)
    mocked.get(ANY_ACTION, payload=STATUS_BODY)
    async with client(clock=clock, retry=RetryPolicy(base_delay=0.25)) as c:
        await c.get_action_status("act-1")
    assert clock.sleeps == [0.25]


# --- pacing: the shared 429 pause, rate limit, concurrency ----------------------------


async def test_429_pauses_other_requests(mocked: aioresponses, clock: ManualClock) -> None:
    sent: list[tuple[str, float]] = []

    def note(name: str) -> Any:
        def callback(url: Any, **kwargs: Any) -> None:
            sent.append((name, clock.monotonic()))
        return callback

    mocked.post(ANY_CANCEL, status=429, headers={"Retry-After": "30"}, callback=note("a"))
    mocked.post(ANY_CANCEL, status=202, payload=ACCEPTED, callback=note("a"))
    mocked.get(ANY_ACTION, payload=STATUS_BODY, callback=note("b"))
    async with client(clock=clock) as c:
        first = asyncio.create_task(c.cancel_order_lines("O-1", [LINE]))
        while c.transport._paused_until == 0.0:  # noqa: ASYNC110 (until the 429 is seen)
            await asyncio.sleep(0)
        paused_at = sent[0][1]
        await asyncio.gather(first, c.get_action_status("act-9"))
    assert [name for name, _ in sent[:1]] == ["a"]
    assert all(at >= paused_at + 30 for _, at in sent[1:])
    assert len(sent) == 3


async def test_pause_holds_requests_and_never_shortens(mocked: aioresponses,
                                                       clock: ManualClock) -> None:
    sent: list[float] = []
    mocked.get(ANY_ACTION, payload=STATUS_BODY, callback=recorder(clock, sent))
    async with client(clock=clock) as c:
        start = clock.monotonic()
        c.transport.pause(10)
        c.transport.pause(2)  # a shorter pause does not cut the longer one
        await c.get_action_status("act-1")
    assert sent[0] >= start + 10


async def test_rate_limit_spaces_requests_evenly(mocked: aioresponses, clock: ManualClock) -> None:
    sent: list[float] = []
    mocked.get(ANY_ACTION, payload=STATUS_BODY, callback=recorder(clock, sent), repeat=True)
    async with client(clock=clock, rate_limit=4) as c:
        for i in range(5):
            await c.get_action_status(f"act-{i}")
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert gaps == [pytest.approx(0.25)] * 4


async def test_pause_during_a_rate_limit_wait_is_honoured(mocked: aioresponses,
                                                          clock: ManualClock) -> None:
    sent: list[float] = []
    mocked.get(ANY_ACTION, payload=STATUS_BODY, callback=recorder(clock, sent), repeat=True)
    async with client(clock=clock, rate_limit=1) as c:
        await c.get_action_status("act-1")
        plain_sleep = clock.sleep

        async def sleep_then_429(seconds: float) -> None:
            del clock.sleep  # once: the class's sleep again
            c.transport.pause(20)  # a 429 elsewhere while this request waits for its slot
            await plain_sleep(seconds)

        clock.sleep = sleep_then_429  # type: ignore[method-assign]
        slot_wait_started = clock.monotonic()
        await c.get_action_status("act-2")
    assert sent[1] >= slot_wait_started + 20


async def test_rate_limit_spaces_concurrent_requests(mocked: aioresponses) -> None:
    sent: list[float] = []
    mocked.get(ANY_ACTION, payload=STATUS_BODY, callback=recorder(None, sent), repeat=True)
    async with client(rate_limit=100, max_concurrency=8) as c:
        start = time.monotonic()
        await asyncio.gather(*(c.get_action_status(f"act-{i}") for i in range(8)))
    sent.sort()
    # Slots are start + k/rate at the earliest, and no request goes before its slot (a late
    # wake-up may shrink one gap, but never brings a request forward).
    for k, at in enumerate(sent):
        assert at >= start + k * 0.01 - 0.001


async def test_max_concurrency_is_respected(mocked: aioresponses) -> None:
    in_flight = 0
    peak = 0

    async def slow(url: Any, **kwargs: Any) -> CallbackResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return CallbackResult(status=200, payload=STATUS_BODY)

    mocked.get(ANY_ACTION, callback=slow, repeat=True)
    async with client(max_concurrency=2) as c:
        assert c.max_concurrency == 2
        await asyncio.gather(*(c.get_action_status(f"act-{i}") for i in range(6)))
    assert peak == 2


# --- other answers and failures -------------------------------------------------------


async def test_redirect_is_not_followed(mocked: aioresponses) -> None:
    mocked.get(ANY_ACTION, status=302, headers={"Location": "https://elsewhere.example/"})
    async with client() as c:
        with pytest.raises(ApiError) as info:
            await c.get_action_status("act-1")
    assert info.value.status == 302
    assert type(info.value) is ApiError
    assert calls(mocked) == 1


async def test_unexpected_exception_is_a_transport_error(mocked: aioresponses) -> None:
    mocked.get(ANY_ACTION, exception=RuntimeError("odd"), repeat=True)
    async with client() as c:
        with pytest.raises(TransportError, match="RuntimeError: odd"):
            await c.get_action_status("act-1")
    assert calls(mocked) == 1


async def test_get_200_not_json_is_a_server_error(mocked: aioresponses) -> None:
    mocked.get(ANY_ACTION, body="<html>hello</html>", content_type="text/html")
    async with client() as c:
        with pytest.raises(ServerError, match="not valid JSON") as info:
            await c.get_action_status("act-1")
    assert "<html>hello</html>" in info.value.body


@pytest.mark.parametrize("body", ["", "[]", '{"id": "act-1"}'])
async def test_get_200_unreadable_status(mocked: aioresponses, body: str) -> None:
    mocked.get(ANY_ACTION, body=body)
    async with client() as c:
        with pytest.raises(ServerError, match="unreadable action status"):
            await c.get_action_status("act-1")


async def test_cancellation_propagates(mocked: aioresponses) -> None:
    async def hang(url: Any, **kwargs: Any) -> None:
        await asyncio.sleep(10)

    mocked.get(ANY_ACTION, callback=hang)
    async with client() as c:
        task = asyncio.create_task(c.get_action_status("act-1"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_retries_are_logged(mocked: aioresponses, clock: ManualClock,
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mirakl_cancel")
    mocked.get(ANY_ACTION, status=429, headers={"Retry-After": "1"})
    mocked.get(ANY_ACTION, status=500)
    mocked.get(ANY_ACTION, payload=STATUS_BODY)
    async with client(clock=clock) as c:
        await c.get_action_status("act-1")
    text = caplog.text
    assert "429 from GET /api/v2/orders/actions/act-1" in text
    assert "retrying GET /api/v2/orders/actions/act-1" in text
    assert "after HTTP 500 (attempt 3 of 5)" in text


# --- sessions -------------------------------------------------------------------------


async def test_own_session_is_created_lazily_and_closed() -> None:
    c = client()
    transport = c.transport
    assert transport._session is None
    session = transport.session
    assert session is transport.session  # reused
    assert session.headers["User-Agent"] == USER_AGENT
    async with c:
        pass
    assert session.closed
    await c.close()  # closing twice is harmless


async def test_given_session_is_left_open() -> None:
    async with aiohttp.ClientSession() as session:
        async with client(session=session) as c:
            assert c.transport.session is session
        assert not session.closed
