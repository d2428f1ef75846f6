"""Unit tests of authentication: the token grant, caching, refresh, 401 handling, secrecy."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import CallbackResult, aioresponses
from conftest import serve

from mirakl_cancel import (
    ApiError,
    Auth,
    AuthenticationError,
    BadRequestError,
    ClientCredentials,
    MiraklConnectClient,
    MiraklError,
    RetryPolicy,
    ServerError,
    StaticToken,
    TransportError,
    UncertainDeliveryError,
)
from mirakl_cancel._clock import current_clock
from mirakl_cancel._constants import DEFAULT_TOKEN_URL
from mirakl_cancel.testing import ManualClock

# Loopback, so that reads need not be a minute apart (the client allows that only locally).
BASE = "http://127.0.0.1:9/api"
TOKEN_URL = "https://auth.example.com/oauth/token"
CLIENT_ID = "client-id-42"
SECRET = "s3cr3t-CLIENT-SECRET"
JWT_1 = "eyJ.jwt-ONE.sig"
JWT_2 = "eyJ.jwt-TWO.sig"
STATIC = "static-TOKEN-xyz"
ANY_API = re.compile(r"^http://127\.0\.0\.1:9/.*$")
LINE = {"quantity": 1, "reason": "RETURN", "price": {"amount": "1", "currency": "EUR"},
        "shipping_price": {"amount": "0", "currency": "EUR"}, "order_line_id": "L-1"}
STATUS_BODY = {"id": "act-1", "status": "SUCCESS"}


def grant(token: str = JWT_1, expires_in: object = 3599) -> dict[str, Any]:
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def creds(**kwargs: Any) -> ClientCredentials:
    return ClientCredentials(CLIENT_ID, SECRET, token_url=TOKEN_URL, **kwargs)


def client(auth: Any, **kwargs: Any) -> MiraklConnectClient:
    kwargs.setdefault("retry", RetryPolicy(base_delay=0))
    kwargs.setdefault("min_poll_interval", 0)
    return MiraklConnectClient(auth=auth, base_url=BASE, **kwargs)


def token_calls(m: aioresponses) -> list[Any]:
    return [call for (method, url), calls in m.requests.items() for call in calls
            if str(url) == TOKEN_URL]


def api_calls(m: aioresponses) -> list[Any]:
    return [call for (method, url), calls in m.requests.items() for call in calls
            if str(url) != TOKEN_URL]


# --- StaticToken ----------------------------------------------------------------------


async def test_static_token(session: aiohttp.ClientSession) -> None:
    auth = StaticToken(STATIC)
    assert isinstance(auth, Auth)
    assert await auth.token(session) == STATIC
    assert auth.invalidate(STATIC) is False
    assert await auth.token(session) == STATIC
    assert STATIC not in repr(auth)
    assert STATIC not in str(auth)
    assert repr(auth) == "StaticToken(token='***')"


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_static_token_needs_a_token(bad: Any) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StaticToken(bad)


# --- ClientCredentials: construction and secrecy --------------------------------------


def test_client_credentials_construction() -> None:
    auth = creds(refresh_margin=30, timeout=5)
    assert isinstance(auth, Auth)
    assert auth.client_id == CLIENT_ID
    assert auth.token_url == TOKEN_URL
    assert (auth.refresh_margin, auth.timeout) == (30, 5)
    assert ClientCredentials("a", "b").token_url == DEFAULT_TOKEN_URL == \
        "https://auth.mirakl.net/oauth/token"
    for text in (repr(auth), str(auth)):
        assert SECRET not in text
        assert CLIENT_ID in text
        assert "client_secret='***'" in text
    assert not hasattr(auth, "__dict__")  # no vars() dump of the secret


@pytest.mark.parametrize(("client_id", "secret"), [("", "x"), ("x", ""), (None, "x")])
def test_client_credentials_need_both(client_id: Any, secret: Any) -> None:
    with pytest.raises(ValueError, match="client_id and a client_secret"):
        ClientCredentials(client_id, secret)


def test_client_repr_hides_secrets() -> None:
    for auth in (creds(), StaticToken(STATIC)):
        c = client(auth)
        assert SECRET not in repr(c)
        assert STATIC not in repr(c)


# --- ClientCredentials: the grant ----------------------------------------------------


async def test_grant_is_form_encoded_client_credentials(
        mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(TOKEN_URL, payload=grant())
    assert await creds().token(session) == JWT_1
    [call] = token_calls(mocked)
    assert call.kwargs["data"] == {"grant_type": "client_credentials",
                                   "client_id": CLIENT_ID, "client_secret": SECRET}
    assert "json" not in call.kwargs
    assert call.kwargs["headers"] == {"Accept": "application/json"}


@pytest.fixture
async def token_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real token endpoint and API on loopback, to see the bytes on the wire."""
    seen: list[dict[str, Any]] = []

    async def token(request: web.Request) -> web.Response:
        seen.append({"content_type": request.content_type, "form": dict(await request.post()),
                     "path": request.path})
        return web.json_response(grant(f"jwt-{len(seen)}"))

    async def action(request: web.Request) -> web.Response:
        seen.append({"path": request.path, "authorization": request.headers["Authorization"]})
        return web.json_response(STATUS_BODY)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_get("/api/v2/orders/actions/{action_id}", action)
    async with serve(app) as root:
        yield f"{root}", seen


async def test_grant_on_the_wire(token_server: tuple[str, list[dict[str, Any]]]) -> None:
    root, seen = token_server
    auth = ClientCredentials(CLIENT_ID, SECRET, token_url=f"{root}/oauth/token")
    async with MiraklConnectClient(auth=auth, base_url=f"{root}/api", min_poll_interval=0) as c:
        await c.get_action_status("act-1")
        await c.get_action_status("act-2")
    assert seen[0] == {"content_type": "application/x-www-form-urlencoded",
                       "form": {"grant_type": "client_credentials", "client_id": CLIENT_ID,
                                "client_secret": SECRET},
                       "path": "/oauth/token"}
    assert [s["authorization"] for s in seen[1:]] == ["Bearer jwt-1", "Bearer jwt-1"]


async def test_token_is_cached(mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(TOKEN_URL, payload=grant(), repeat=True)
    auth = creds()
    assert [await auth.token(session) for _ in range(5)] == [JWT_1] * 5
    assert len(token_calls(mocked)) == 1


async def test_one_token_request_for_50_concurrent_callers(
        mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    async def slow(url: Any, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(0.02)
        return CallbackResult(status=200, payload=grant())

    mocked.post(TOKEN_URL, callback=slow, repeat=True)
    auth = creds()
    tokens = await asyncio.gather(*(auth.token(session) for _ in range(50)))
    assert set(tokens) == {JWT_1}
    assert len(token_calls(mocked)) == 1


async def test_one_token_request_for_50_concurrent_api_calls(mocked: aioresponses) -> None:
    async def slow(url: Any, **kwargs: Any) -> CallbackResult:
        await asyncio.sleep(0.02)
        return CallbackResult(status=200, payload=grant())

    mocked.post(TOKEN_URL, callback=slow, repeat=True)
    mocked.get(ANY_API, payload=STATUS_BODY, repeat=True)
    async with client(creds(), max_concurrency=50) as c:
        await asyncio.gather(*(c.get_action_status(f"act-{i}") for i in range(50)))
    assert len(token_calls(mocked)) == 1
    assert len(api_calls(mocked)) == 50


@pytest.mark.parametrize(("expires_in", "renew_after"),
                         [(3599, 3539.0), (100, 90.0), ("120", 108.0), (None, 3540.0),
                          ("soon", 3540.0), (0, 0.9), (-5, 0.9), (10**400, 86340.0),
                          ("1e400", 86340.0), ("nan", 3540.0), (True, 3540.0)])
async def test_token_refreshed_before_expiry(
        mocked: aioresponses, session: aiohttp.ClientSession,
        expires_in: object, renew_after: float) -> None:
    first = grant(JWT_1, expires_in)
    if expires_in is None:
        del first["expires_in"]
    mocked.post(TOKEN_URL, payload=first)
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    auth = creds()
    clock = ManualClock()
    # The clock of the client asking, as the transport hands it down around a fetch.
    reset = current_clock.set(clock)
    try:
        assert await auth.token(session) == JWT_1
        if renew_after > 0:
            await clock.advance(renew_after - 0.5)
            assert await auth.token(session) == JWT_1
            await clock.advance(1.0)
        else:
            await clock.advance(renew_after + 0.5)
        assert await auth.token(session) == JWT_2
    finally:
        current_clock.reset(reset)
    assert len(token_calls(mocked)) == 2


async def test_invalidate_drops_only_the_stale_token(
        mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(TOKEN_URL, payload=grant(JWT_1))
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    auth = creds()
    assert await auth.token(session) == JWT_1
    assert auth.invalidate("some-older-token") is True
    assert await auth.token(session) == JWT_1  # still cached
    assert auth.invalidate(JWT_1) is True
    assert await auth.token(session) == JWT_2


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_token_refused_is_authentication_error(
        mocked: aioresponses, session: aiohttp.ClientSession, status: int) -> None:
    mocked.post(TOKEN_URL, status=status,
                payload={"error": "invalid_client", "error_description": "Bad client"})
    with pytest.raises(AuthenticationError) as info:
        await creds().token(session)
    assert (info.value.status, info.value.code, info.value.message) == (
        status, "invalid_client", "Bad client")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("answer", "error"),
    [({"status": 500, "body": "oops"}, ServerError),
     ({"status": 404, "body": ""}, ApiError),
     ({"status": 200, "payload": {"token_type": "Bearer"}}, ServerError),
     ({"status": 200, "body": "<html>", "content_type": "text/html"}, ServerError),
     ({"status": 200, "body": ""}, ServerError),
     ({"exception": aiohttp.ClientConnectionError("refused")}, TransportError),
     ({"exception": asyncio.TimeoutError()}, TransportError)],
    ids=["500", "404", "no-access-token", "html", "empty", "connection", "timeout"],
)
async def test_token_endpoint_failures(mocked: aioresponses, session: aiohttp.ClientSession,
                                       answer: dict[str, Any], error: type[Exception]) -> None:
    mocked.post(TOKEN_URL, **answer)
    with pytest.raises(error) as info:
        await creds().token(session)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


async def test_token_message_without_description(mocked: aioresponses,
                                                  session: aiohttp.ClientSession) -> None:
    mocked.post(TOKEN_URL, status=401, body="")
    with pytest.raises(AuthenticationError, match="token request refused"):
        await creds().token(session)


# --- 401s from the API ----------------------------------------------------------------


async def test_api_401_refreshes_once_and_retries(mocked: aioresponses) -> None:
    mocked.post(TOKEN_URL, payload=grant(JWT_1))
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    mocked.get(ANY_API, status=401, payload={"code": "UNAUTHORIZED", "message": "expired"})
    mocked.get(ANY_API, payload=STATUS_BODY)
    async with client(creds()) as c:
        status = await c.get_action_status("act-1")
        assert c.stats.token_refreshes == 1
        assert c.stats.retries == 0
    assert status.id == "act-1"
    sent = [call.kwargs["headers"]["Authorization"] for call in api_calls(mocked)]
    assert sent == [f"Bearer {JWT_1}", f"Bearer {JWT_2}"]
    assert len(token_calls(mocked)) == 2


async def test_api_401_on_a_cancel_is_resent_once(mocked: aioresponses) -> None:
    """A 401 means the cancel was not processed, so sending it again is safe."""
    mocked.post(TOKEN_URL, payload=grant(JWT_1))
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    mocked.post(ANY_API, status=401, payload={"code": "UNAUTHORIZED", "message": "expired"})
    mocked.post(ANY_API, status=202, payload={"action_id": "act-1"})
    async with client(creds()) as c:
        accepted = await c.cancel_order_lines("O-1", [LINE])
    assert accepted.action_id == "act-1"
    assert len(api_calls(mocked)) == 2


async def test_api_401_twice_is_final(mocked: aioresponses) -> None:
    mocked.post(TOKEN_URL, payload=grant(JWT_1))
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    mocked.get(ANY_API, status=401, payload={"code": "UNAUTHORIZED", "message": "no"},
               repeat=True)
    async with client(creds()) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.get_action_status("act-1")
        assert c.stats.token_refreshes == 1
    assert info.value.status == 401
    assert len(api_calls(mocked)) == 2
    assert len(token_calls(mocked)) == 2


async def test_static_token_401_is_final(mocked: aioresponses) -> None:
    mocked.get(ANY_API, status=401, payload={"code": "UNAUTHORIZED", "message": "no"},
               repeat=True)
    async with client(StaticToken(STATIC)) as c:
        with pytest.raises(AuthenticationError):
            await c.get_action_status("act-1")
        assert c.stats.token_refreshes == 0
    assert len(api_calls(mocked)) == 1


async def test_token_endpoint_refusal_surfaces_before_any_api_call(mocked: aioresponses) -> None:
    mocked.post(TOKEN_URL, status=401, payload={"error": "invalid_client"}, repeat=True)
    async with client(creds()) as c:
        with pytest.raises(AuthenticationError):
            await c.cancel_order_lines("O-1", [LINE])
    assert api_calls(mocked) == []
    assert len(token_calls(mocked)) == 1


async def test_token_endpoint_outage_is_retried(mocked: aioresponses) -> None:
    mocked.post(TOKEN_URL, status=503, body="")
    mocked.post(TOKEN_URL, exception=aiohttp.ClientConnectionError("reset"))
    mocked.post(TOKEN_URL, payload=grant())
    mocked.post(ANY_API, status=202, payload={"action_id": "act-1"})
    async with client(creds()) as c:
        await c.cancel_order_lines("O-1", [LINE])
        assert c.stats.retries == 2
    assert len(api_calls(mocked)) == 1  # the cancel itself went out once


# --- secrets never leak ---------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        if isinstance(current, MiraklError):  # public errors: their attributes too
            texts += [repr(v) for v in vars(current).values()]
        current = current.__cause__ or current.__context__
    return texts


async def test_secrets_absent_from_logs_and_errors(mocked: aioresponses,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = (SECRET, JWT_1, JWT_2, STATIC)
    errors: list[BaseException] = []
    order = f"{BASE}/v2/orders"
    mocked.post(TOKEN_URL, payload=grant(JWT_1))
    mocked.post(TOKEN_URL, payload=grant(JWT_2))
    # a 401 then refresh, a 429 and a 503 retried, a success
    mocked.post(f"{order}/O-1/cancel", status=401, payload={"code": "UNAUTHORIZED",
                                                           "message": "expired"})
    mocked.post(f"{order}/O-1/cancel", status=429, headers={"Retry-After": "0"})
    mocked.post(f"{order}/O-1/cancel", status=503, body="")
    mocked.post(f"{order}/O-1/cancel", status=202, payload={"action_id": "act-1"})
    # refusals and uncertain outcomes
    mocked.post(f"{order}/O-2/cancel", status=400, payload={"code": "INVALID_INPUT",
                                                           "message": "bad"})
    mocked.post(f"{order}/O-3/cancel", status=502, body="<html>proxy</html>",
                content_type="text/html")
    mocked.post(f"{order}/O-4/cancel", exception=aiohttp.ServerDisconnectedError())
    mocked.get(f"{order}/actions/act-1", exception=asyncio.TimeoutError())
    mocked.get(f"{order}/actions/act-1", payload=STATUS_BODY)
    async with client(creds()) as c:
        await c.cancel_order_lines("O-1", [LINE])
        for order_id in ("O-2", "O-3", "O-4"):
            with pytest.raises(MiraklError) as info:
                await c.cancel_order_lines(order_id, [LINE])
            errors.append(info.value)
        await c.get_action_status("act-1")
        texts = [repr(c), str(c), repr(c.transport.auth), repr(c.stats)]
    # a refused grant, and a StaticToken that is refused twice
    mocked.post(TOKEN_URL, status=401, payload={"error": "invalid_client",
                                                "error_description": "bad credentials"})
    async with client(creds()) as c:
        with pytest.raises(AuthenticationError) as auth_info:
            await c.get_action_status("act-2")
        errors.append(auth_info.value)
    mocked.get(f"{order}/actions/act-3", status=401, body="", repeat=True)
    async with client(StaticToken(STATIC)) as c:
        with pytest.raises(AuthenticationError) as static_info:
            await c.get_action_status("act-3")
        errors.append(static_info.value)
        texts.append(repr(c))

    assert [type(e) for e in errors] == [BadRequestError, UncertainDeliveryError,
                                         UncertainDeliveryError, AuthenticationError,
                                         AuthenticationError]
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert any("renewing the token" in r.getMessage() for r in caplog.records)
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.args), repr(record.__dict__)]
    for error in errors:
        texts += _exception_texts(error)
    texts.append(caplog.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- regressions -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://auth.example.com/oauth/token", "ftp://x/token",
                                 "not a url", "http://127.evil.com/token"])
def test_client_secret_never_goes_to_a_plain_http_token_url(url: str) -> None:
    """Regression: the base URL refused plain http, the token URL (with the secret) did not."""
    with pytest.raises(ValueError, match=r"token_url|plain http") as info:
        ClientCredentials(CLIENT_ID, SECRET, token_url=url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/oauth/token",
                                 "http://localhost/token", "http://[::1]:1/token"])
def test_loopback_token_url_may_be_plain_http(url: str) -> None:
    assert ClientCredentials(CLIENT_ID, SECRET, token_url=url).token_url == url


async def test_token_request_does_not_follow_redirects(mocked: aioresponses,
                                                       session: aiohttp.ClientSession) -> None:
    """Regression: a 307 from the token endpoint re-posted the secret to its Location."""
    mocked.post(TOKEN_URL, status=307, headers={"Location": "https://elsewhere.example/t"})
    mocked.post("https://elsewhere.example/t", payload=grant())
    with pytest.raises(ApiError):
        await creds().token(session)
    assert not [key for key in mocked.requests if "elsewhere" in str(key[1])]


async def test_undecodable_token_answer_is_a_mirakl_error(
        mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    """Regression: response.text() raised UnicodeDecodeError, outside the error tree."""
    mocked.post(TOKEN_URL, status=502, body=b"\xff\xfe\xfa garbage",
                content_type="text/plain; charset=utf-8")
    with pytest.raises(ServerError):
        await creds().token(session)
