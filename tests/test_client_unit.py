"""Unit tests of MiraklConnectClient: URLs, headers, validation, answers, the poll guard."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from conftest import serve

from mirakl_cancel import (
    ActionAccepted,
    ActionState,
    BadRequestError,
    Cancelation,
    CancelOutcome,
    CancelReason,
    CancelRequest,
    ClientCredentials,
    Money,
    NotFoundError,
    RetryPolicy,
    ServerError,
    StaticToken,
    Timeout,
    ValidationError,
    __version__,
)
from mirakl_cancel._http.pollguard import PollGuard
from mirakl_cancel.client import DEFAULT_BASE_URL, MiraklConnectClient
from mirakl_cancel.testing import ManualClock

BASE = "https://connect.example.com/api"
ANY = re.compile(r"^https://connect\.example\.com/.*$")
ANY_ACTION = re.compile(r"^https://connect\.example\.com/api/v2/orders/actions/[^/]+$")
TOKEN = "tok-SECRET-abc"
LINE = {"quantity": 2, "reason": "OUT_OF_STOCK",
        "price": {"amount": "19.99", "currency": "EUR"},
        "shipping_price": {"amount": "0", "currency": "EUR"}, "order_line_id": "L-1"}
ACCEPTED = {"action_id": "act-1", "tracking_id": "act-1"}
STATUS_BODY = {"id": "act-1", "status": "PENDING",
               "created_at": "2021-07-06T09:24:36.32Z", "updated_at": "2021-07-06T09:24:36.32Z"}
def client(**kwargs: Any) -> MiraklConnectClient:
    kwargs.setdefault("auth", StaticToken(TOKEN))
    kwargs.setdefault("base_url", BASE)
    kwargs.setdefault("retry", RetryPolicy(base_delay=0))
    return MiraklConnectClient(**kwargs)


def sent(m: aioresponses) -> list[tuple[str, str, Any]]:
    """(method, exact URL as sent, call) for every request aioresponses saw."""
    return [(method, str(url), call) for (method, url), calls in m.requests.items()
            for call in calls]


# --- construction ---------------------------------------------------------------------


def test_defaults_and_repr() -> None:
    c = MiraklConnectClient(auth=StaticToken(TOKEN))
    assert c.base_url == DEFAULT_BASE_URL == "https://miraklconnect.com/api"
    assert c.max_concurrency == 16
    assert c.min_poll_interval == 60.0
    assert c.transport.retry == RetryPolicy()
    assert c.transport.timeout == Timeout()
    assert TOKEN not in repr(c)
    assert "StaticToken(token='***')" in repr(c)


def test_timeout_as_a_number() -> None:
    assert client(timeout=5).transport.timeout == Timeout(connect=5.0, read=5.0)
    assert client(timeout=60.0).transport.timeout == Timeout(connect=10.0, read=60.0)
    given = Timeout(connect=1, read=2)
    assert client(timeout=given).transport.timeout is given


def test_auth_must_be_an_auth() -> None:
    with pytest.raises(TypeError, match="StaticToken"):
        MiraklConnectClient(auth=TOKEN)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["http://miraklconnect.com/api", "http://192.168.1.10:8080",
                                 "http://127.attacker.example/api"])
def test_plain_http_refused_for_remote_hosts(url: str) -> None:
    with pytest.raises(ValueError, match="plain http"):
        client(base_url=url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1234/api",
                                 "http://[::1]:9000"])
def test_plain_http_allowed_on_loopback(url: str) -> None:
    assert client(base_url=url).base_url == url


# --- what goes on the wire ------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_id", "segment"),
    [("0024_COMMERCIAL_ID-A", "0024_COMMERCIAL_ID-A"), ("a/b", "a%2Fb"),
     ("../actions/x", "..%2Factions%2Fx"), ("..", "%2E%2E"), (".", "%2E"),
     ("a?b=1", "a%3Fb%3D1"), ("a#frag", "a%23frag"), ("with space", "with%20space"),
     ("100%", "100%25"), ("%2F", "%252F"),
     ("commande-é-日本", "commande-%C3%A9-%E6%97%A5%E6%9C%AC")],
)
async def test_order_id_is_one_encoded_segment(mocked: aioresponses, order_id: str,
                                               segment: str) -> None:
    mocked.post(ANY, status=202, payload=ACCEPTED)
    async with client() as c:
        accepted = await c.cancel_order_lines(order_id, [LINE])
    assert accepted.order_id == order_id
    [(method, url, _)] = sent(mocked)
    assert method == "POST"
    assert url == f"{BASE}/v2/orders/{segment}/cancel"


@pytest.mark.parametrize(("action_id", "segment"),
                         [("1ba5fc4b-c4fd", "1ba5fc4b-c4fd"), ("a/../b", "a%2F..%2Fb"),
                          ("..", "%2E%2E"), ("x?y#z", "x%3Fy%23z"), ("é", "%C3%A9")])
async def test_action_id_is_one_encoded_segment(mocked: aioresponses, action_id: str,
                                                segment: str) -> None:
    mocked.get(ANY, payload={**STATUS_BODY, "id": action_id})
    async with client() as c:
        status = await c.get_action_status(action_id)
    assert status.id == action_id
    [(method, url, _)] = sent(mocked)
    assert (method, url) == ("GET", f"{BASE}/v2/orders/actions/{segment}")


async def test_headers_and_body(mocked: aioresponses) -> None:
    mocked.post(ANY, status=202, payload=ACCEPTED)
    async with client() as c:
        await c.cancel_order_lines("O-1", [LINE])
    [(_, _, call)] = sent(mocked)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"].startswith(f"mirakl-cancel/{__version__}")
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert call.kwargs["allow_redirects"] is False
    body = call.kwargs["data"]
    assert isinstance(body, bytes)
    assert b'"amount":19.99' in body
    assert json.loads(body) == {"cancelations": [{
        "quantity": 2, "reason": "OUT_OF_STOCK",
        "price": {"amount": 19.99, "currency": "EUR"},
        "shipping_price": {"amount": 0, "currency": "EUR"}, "order_line_id": "L-1"}]}


async def test_get_headers(mocked: aioresponses) -> None:
    mocked.get(ANY, payload=STATUS_BODY)
    async with client() as c:
        await c.get_action_status("act-1")
    [(_, _, call)] = sent(mocked)
    headers = call.kwargs["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert "Content-Type" not in headers
    assert call.kwargs["data"] is None


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A tiny real server on loopback, recording what arrives on the wire."""
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append({"method": request.method, "raw_path": request.raw_path,
                     "order_id": request.match_info.get("order_id"),
                     "headers": dict(request.headers), "body": await request.read()})
        if request.method == "POST":
            return web.json_response(ACCEPTED, status=202)
        return web.json_response({**STATUS_BODY, "id": request.match_info["action_id"]})

    app = web.Application()
    app.router.add_post("/api/v2/orders/{order_id}/cancel", handle)
    app.router.add_get("/api/v2/orders/actions/{action_id}", handle)
    async with serve(app) as root:
        yield f"{root}/api", seen


async def test_real_server_receives_one_segment(
        echo_server: tuple[str, list[dict[str, Any]]]) -> None:
    base, seen = echo_server
    odd = ["a/b", "..", ".", "x?y#z", "sp ace", "100%", "é"]
    async with client(base_url=base) as c:
        for order_id in odd:
            await c.cancel_order_lines(order_id, [LINE])
        status = await c.get_action_status("../../x")
    assert [s["order_id"] for s in seen[:-1]] == odd
    assert seen[0]["raw_path"] == "/api/v2/orders/a%2Fb/cancel"
    assert seen[1]["raw_path"] == "/api/v2/orders/%2E%2E/cancel"
    assert status.id == "../../x"
    assert seen[-1]["raw_path"] == "/api/v2/orders/actions/..%2F..%2Fx"
    assert seen[0]["headers"]["User-Agent"].startswith(f"mirakl-cancel/{__version__}")
    assert seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(seen[0]["body"])["cancelations"][0]["price"]["amount"] == 19.99


# --- validation before sending --------------------------------------------------------


@pytest.mark.parametrize(
    ("order_id", "cancelations", "fields"),
    [("", [LINE], ("order_id",)),
     ("O-1", [], ("cancelations",)),
     ("O-1", [{**LINE, "quantity": -1}], ("cancelations[0].quantity",)),
     ("O-1", [LINE, {**LINE, "price": {"amount": 1.5, "currency": "EUR"}}],
      ("cancelations[1].price.amount",)),
     ("O-1", [{**LINE, "shipping_price": {"amount": "1", "currency": "USD"}}],
      ("cancelations[0].shipping_price.currency",)),
     ("O-1", 42, ("cancelations",)),
     ("O-1", None, ("cancelations",))],
)
async def test_validation_error_and_nothing_sent(mocked: aioresponses, order_id: str,
                                                 cancelations: Any,
                                                 fields: tuple[str, ...]) -> None:
    mocked.post(ANY, status=202, payload=ACCEPTED, repeat=True)
    async with client() as c:
        with pytest.raises(ValidationError) as info:
            await c.cancel_order_lines(order_id, cancelations)
        assert c.stats.requests == 0
    assert info.value.fields == fields
    mocked.assert_not_called()


async def test_bad_action_id_refused_before_sending(mocked: aioresponses) -> None:
    async with client() as c:
        for bad in ("", None, 5):
            with pytest.raises(ValidationError) as info:
                await c.get_action_status(bad)  # type: ignore[arg-type]
            assert info.value.fields == ("action_id",)
    mocked.assert_not_called()


async def test_cancel_takes_a_cancel_request(mocked: aioresponses) -> None:
    async with client() as c:
        with pytest.raises(ValidationError, match="CancelRequest"):
            await c.cancel({"order_id": "O"})  # type: ignore[arg-type]
    mocked.assert_not_called()


# --- answers --------------------------------------------------------------------------


async def test_cancel_202(mocked: aioresponses) -> None:
    mocked.post(ANY, status=202, payload=ACCEPTED)
    line = Cancelation(quantity=1, reason=CancelReason.DEFECT, price=Money("5", "EUR"),
                       shipping_price=Money("0", "EUR"), order_line_id="L-1")
    async with client() as c:
        accepted = await c.cancel(CancelRequest("O-1", [line]))
        assert c.stats.requests == 1
    assert accepted == ActionAccepted(action_id="act-1", order_id="O-1", tracking_id="act-1")


async def test_cancel_accepts_model_objects(mocked: aioresponses) -> None:
    mocked.post(ANY, status=202, payload={"action_id": "act-2"})
    line = Cancelation(quantity=1, reason="RETURN", price=Money(Decimal("1"), "EUR"),
                       shipping_price=Money(0, "EUR"), product_id="P-1")
    async with client() as c:
        accepted = await c.cancel_order_lines("O-2", (x for x in [line]))
    assert (accepted.action_id, accepted.tracking_id) == ("act-2", None)


async def test_cancel_202_with_tracking_id_only(mocked: aioresponses) -> None:
    mocked.post(ANY, status=202, payload={"tracking_id": "trk-7"})
    async with client() as c:
        accepted = await c.cancel_order_lines("O-1", [LINE])
    assert accepted.action_id == "trk-7"


async def test_cancel_400_with_errors(mocked: aioresponses) -> None:
    mocked.post(ANY, status=400, payload={
        "code": "INVALID_INPUT", "message": "The request is invalid",
        "errors": [{"field": "$.cancelations[0].quantity", "message": "too many",
                    "extensions": {"max": 1}}],
        "extensions": {"request_id": "r-1"}})
    async with client() as c:
        with pytest.raises(BadRequestError) as info:
            await c.cancel_order_lines("O-1", [LINE])
    error = info.value
    assert (error.status, error.code, error.message) == (400, "INVALID_INPUT",
                                                          "The request is invalid")
    assert error.errors[0].field == "$.cancelations[0].quantity"
    assert error.errors[0].message == "too many"
    assert dict(error.errors[0].extensions) == {"max": 1}
    assert error.extensions == {"request_id": "r-1"}
    assert "$.cancelations[0].quantity: too many" in str(error)
    assert len(sent(mocked)) == 1  # refusals are not retried


async def test_cancel_404(mocked: aioresponses) -> None:
    mocked.post(ANY, status=404, payload={"code": "DATA_NOT_FOUND", "message": "no order"})
    async with client() as c:
        with pytest.raises(NotFoundError) as info:
            await c.cancel_order_lines("missing", [LINE])
    assert info.value.code == "DATA_NOT_FOUND"
    assert len(sent(mocked)) == 1


async def test_get_action_status_parsed(mocked: aioresponses) -> None:
    mocked.get(ANY, payload={"id": "act-1", "status": "FAILED",
                             "created_at": "2021-11-30T18:35:24Z",
                             "updated_at": "2021-11-30T18:38:24.5Z",
                             "errors": [{"code": "ORDER_IN_WRONG_STATE", "message": "no"}]})
    async with client() as c:
        status = await c.get_action_status("act-1")
    assert status.state is ActionState.FAILED
    assert status.errors[0].code == "ORDER_IN_WRONG_STATE"
    assert status.updated_at is not None
    assert status.updated_at.microsecond == 500000


async def test_get_action_status_unknown_state_kept_raw(mocked: aioresponses) -> None:
    mocked.get(ANY, payload={"id": "act-1", "status": "ARCHIVED"})
    async with client() as c:
        status = await c.get_action_status("act-1")
    assert status.state is ActionState.UNKNOWN
    assert status.raw_status == "ARCHIVED"


async def test_get_action_status_404(mocked: aioresponses) -> None:
    mocked.get(ANY, status=404, payload={"code": "DATA_NOT_FOUND", "message": "x"})
    async with client() as c:
        with pytest.raises(NotFoundError):
            await c.get_action_status("nope")
    assert len(sent(mocked)) == 1


# --- the poll guard -------------------------------------------------------------------


def stamped(clock: ManualClock, log: list[tuple[str, float]]) -> Any:
    async def callback(url: Any, **kwargs: Any) -> CallbackResult:
        action_id = url.raw_path.rsplit("/", 1)[-1]
        log.append((action_id, clock.monotonic()))
        await asyncio.sleep(0)  # in flight: other tasks run meanwhile, as on a real network
        return CallbackResult(status=200, payload={**STATUS_BODY, "id": action_id})
    return callback


async def test_poll_guard_spaces_reads_of_one_action(mocked: aioresponses,
                                                     clock: ManualClock) -> None:
    log: list[tuple[str, float]] = []
    mocked.get(ANY_ACTION, callback=stamped(clock, log), repeat=True)
    async with client(clock=clock, min_poll_interval=60) as c:
        assert c.min_poll_interval == 60
        for _ in range(3):
            await c.get_action_status("act-1")
    times = [at for _, at in log]
    assert [b - a for a, b in itertools.pairwise(times)] == [60.0, 60.0]


async def test_poll_guard_does_not_wait_across_actions(mocked: aioresponses,
                                                       clock: ManualClock) -> None:
    log: list[tuple[str, float]] = []
    mocked.get(ANY_ACTION, callback=stamped(clock, log), repeat=True)
    async with client(clock=clock, min_poll_interval=60) as c:
        await asyncio.gather(*(c.get_action_status(f"act-{i}") for i in range(20)))
    assert clock.sleeps == []
    assert len(log) == 20


async def test_poll_guard_holds_concurrent_reads_of_one_action(mocked: aioresponses,
                                                               clock: ManualClock) -> None:
    log: list[tuple[str, float]] = []
    mocked.get(ANY_ACTION, callback=stamped(clock, log), repeat=True)
    async with client(clock=clock, min_poll_interval=60) as c:
        await asyncio.gather(*(c.get_action_status("act-1") for _ in range(3)))
    times = sorted(at for _, at in log)
    assert len(times) == 3
    assert all(b - a >= 60 for a, b in itertools.pairwise(times))


async def test_poll_guard_applies_to_retries(mocked: aioresponses, clock: ManualClock) -> None:
    log: list[tuple[str, float]] = []

    def fail_first(url: Any, **kwargs: Any) -> CallbackResult:
        log.append(("act-1", clock.monotonic()))
        return CallbackResult(status=500 if len(log) == 1 else 200, payload=STATUS_BODY)

    mocked.get(ANY_ACTION, callback=fail_first, repeat=True)
    async with client(clock=clock, min_poll_interval=60) as c:
        await c.get_action_status("act-1")
    assert log[1][1] - log[0][1] >= 60


async def test_poll_guard_unit() -> None:
    clock = ManualClock(start=0.0)
    guard = PollGuard(60.0, clock=clock)
    assert guard.ready_at("a") == 0.0
    await guard.wait("a")  # never read: no wait
    await clock.advance(5.0)
    guard.record("a")
    guard.record("a", at=0.0)  # an older read never moves the mark back
    assert guard.ready_at("a") == 65.0 and guard.ready_in("a") == 60.0
    waiting = asyncio.create_task(guard.wait("a"))
    assert await clock.next_due() == 60.0  # the ceiling, slept on the guard's clock
    await clock.advance(59.0)
    assert not waiting.done()
    await clock.advance(1.0)
    await waiting
    with pytest.raises(ValueError, match="negative"):
        PollGuard(-1)


def test_poll_guard_forgets_old_reads() -> None:
    guard = PollGuard(60)
    long_ago = time.monotonic() - 120
    for i in range(1100):
        guard.record(f"a-{i}", at=long_ago)
    guard.record("fresh")
    assert len(guard._last) < 1100
    assert guard.ready_at("a-1") == 0.0
    assert guard.ready_at("fresh") > time.monotonic()


# --- stats, lifecycle, cancel_many ----------------------------------------------------


async def test_stats_counters(mocked: aioresponses, clock: ManualClock) -> None:
    mocked.post(ANY, status=429, headers={"Retry-After": "1"})
    mocked.post(ANY, status=202, payload=ACCEPTED)
    mocked.post(ANY, status=502)
    async with client(clock=clock) as c:
        await c.cancel_order_lines("O-1", [LINE])
        with pytest.raises(Exception, match="may have been processed"):
            await c.cancel_order_lines("O-2", [LINE])
        stats = c.stats
    assert (stats.requests, stats.retries, stats.rate_limited, stats.uncertain,
            stats.token_refreshes) == (3, 1, 1, 1, 0)


async def test_context_manager_closes_only_its_own_session(mocked: aioresponses) -> None:
    mocked.get(ANY, payload=STATUS_BODY, repeat=True)
    async with client() as c:
        await c.get_action_status("act-1")
        own = c.transport.session
    assert own.closed
    async with aiohttp.ClientSession() as given:
        async with client(session=given) as c:
            await c.get_action_status("act-2")  # (act-1 was read: the ceiling holds it)
        assert not given.closed


async def test_client_credentials_through_client(mocked: aioresponses) -> None:
    mocked.post("https://auth.example.com/oauth/token",
                payload={"access_token": "jwt-1", "token_type": "Bearer", "expires_in": 3599})
    mocked.get(ANY, payload=STATUS_BODY)
    auth = ClientCredentials("id", "sec", token_url="https://auth.example.com/oauth/token")
    async with client(auth=auth) as c:
        await c.get_action_status("act-1")
    call = next(call for method, url, call in sent(mocked) if method == "GET")
    assert call.kwargs["headers"]["Authorization"] == "Bearer jwt-1"


async def test_cancel_many_outcomes(mocked: aioresponses) -> None:
    mocked.post(f"{BASE}/v2/orders/ok/cancel", status=202, payload=ACCEPTED)
    mocked.post(f"{BASE}/v2/orders/bad/cancel", status=400,
                payload={"code": "INVALID_INPUT", "message": "no"})
    mocked.post(f"{BASE}/v2/orders/lost/cancel", status=500)
    line = Cancelation(quantity=1, reason="RETURN", price=Money("1", "EUR"),
                       shipping_price=Money("0", "EUR"), order_line_id="L-1")
    requests = [CancelRequest(order_id, [line]) for order_id in ("ok", "bad", "lost")]
    async with client() as c:
        outcomes: list[CancelOutcome] = [o async for o in c.cancel_many(requests)]
    by_order = {o.request.order_id: o for o in outcomes}
    assert by_order["ok"].ok
    assert by_order["ok"].accepted is not None
    assert isinstance(by_order["bad"].error, BadRequestError)
    assert not by_order["bad"].ok
    assert type(by_order["lost"].error).__name__ == "UncertainDeliveryError"


async def test_server_error_reads_not_json_in_get(mocked: aioresponses) -> None:
    mocked.get(ANY, status=502, body="<html><h1>502 Bad Gateway</h1></html>",
               content_type="text/html", repeat=True)
    async with client(retry=RetryPolicy(max_attempts=1)) as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
    assert "502 Bad Gateway" in info.value.body


def test_polling_faster_than_the_api_allows_is_refused_outside_loopback() -> None:
    with pytest.raises(ValueError, match="ceiling"):
        MiraklConnectClient(auth=StaticToken(TOKEN), base_url=BASE, min_poll_interval=1)
    with pytest.raises(ValueError, match="ceiling"):
        MiraklConnectClient(auth=StaticToken(TOKEN), base_url=BASE, min_list_interval=59)
    # Against the simulator on loopback, scaled time needs short intervals.
    local = MiraklConnectClient(auth=StaticToken(TOKEN), base_url="http://127.0.0.1:8080",
                                min_poll_interval=0.06)
    assert local.min_poll_interval == 0.06
