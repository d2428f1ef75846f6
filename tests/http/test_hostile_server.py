"""Hostile answers, over the wire: small asyncio servers on 127.0.0.1 that trickle, flood,
lie, bomb, nest, reset. Every answer is bounded; only MiraklError leaves; a cancel whose
answer broke a bound is UNCERTAIN; no token in any error's chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from builders import request

from mirakl_cancel import (
    Cancelation,
    CancelReason,
    CancelRequest,
    ClientCredentials,
    Limits,
    MiraklConnectClient,
    MiraklError,
    Money,
    Outcome,
    PollPolicy,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StaticToken,
    Timeout,
    TransportError,
    UncertainDeliveryError,
    ValidationError,
    cancel_and_track,
)

TOKEN = "tok-HOSTILE-SECRET-123"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: A generous guard against hangs (a hang would otherwise block the suite): it bounds,
#: it does not measure. Every bound tested here fires far sooner.
HANG_GUARD = 60.0


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """One HTTP/1.1 request: (method, path, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return method, path, body


def head(status: int, headers: dict[str, str] | None = None, *, length: int | None = None,
         chunked: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    return head(status, headers, length=len(body)) + body


@contextlib.asynccontextmanager
async def hostile(handler: Handler) -> AsyncIterator[str]:
    """A raw server on a free loopback port running `handler` per connection."""
    tasks: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def fixed(data: bytes, *, keep_open: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(data)
        await writer.drain()
        if keep_open:
            await asyncio.sleep(3600)

    return handler


def client(url: str, **kwargs: Any) -> MiraklConnectClient:
    kwargs.setdefault("retry", RetryPolicy(max_attempts=2, base_delay=0.01))
    kwargs.setdefault("min_poll_interval", 0.01)  # a retried read need not wait a minute
    return MiraklConnectClient(auth=StaticToken(TOKEN), base_url=url, **kwargs)



async def post(url: str, **kwargs: Any) -> BaseException:
    """Send one cancel; return what it raised (it must raise)."""
    async with client(url, **kwargs) as c:
        with pytest.raises(MiraklError) as info:
            await asyncio.wait_for(c.cancel(request()), HANG_GUARD)
    assert_no_secret(info.value)
    return info.value


async def read(url: str, **kwargs: Any) -> BaseException:
    async with client(url, **kwargs) as c:
        with pytest.raises(MiraklError) as info:
            await asyncio.wait_for(c.get_action_status("act-1"), HANG_GUARD)
    assert_no_secret(info.value)
    return info.value


def chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [error]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
        todo += [v for v in vars(item).values() if isinstance(v, BaseException)]
    return seen


def assert_no_secret(error: BaseException) -> None:
    for item in chain(error):
        texts = [str(item), repr(item), repr(vars(item))]
        info = getattr(item, "request_info", None)
        if info is not None:
            texts.append(repr(info.headers))
        for text in texts:
            assert TOKEN not in text, (type(item), text[:200])


DEEP = b"[" * 100_000 + b"]" * 100_000


# --- 1. unbounded answers -----------------------------------------------------------


async def test_trickling_server_cannot_stretch_a_read_past_the_answer_deadline() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = json.dumps({"id": "act-1", "status": "PENDING", "pad": "x" * 10_000}).encode()
        writer.write(head(200, length=len(body)))
        for byte in body:  # one byte every 50 ms: each read is quick, the answer is not
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)

    async with hostile(trickle) as url:
        error = await read(url, timeout=Timeout(read=5.0, answer=0.5),
                           retry=RetryPolicy(max_attempts=1))
        assert isinstance(error, TransportError)
        assert "timeout" in str(error)
        uncertain = await post(url, timeout=Timeout(read=5.0, answer=0.5))
        assert isinstance(uncertain, UncertainDeliveryError)


async def test_huge_body_is_refused_as_it_streams_with_bounded_memory() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head(202, chunked=True))
        chunk = b"x" * 65536
        for _ in range(200_000):  # up to 13 GB, if anyone kept reading
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()

    async with hostile(flood) as url:
        tracemalloc.start()
        try:
            error = await post(url, limits=Limits(max_body_bytes=1024 * 1024))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(error, UncertainDeliveryError)
        assert "larger than the 1048576 bytes" in str(error)
        assert peak < 16 * 1024 * 1024, peak
        read_error = await read(url, limits=Limits(max_body_bytes=1024 * 1024))
        assert isinstance(read_error, ServerError)


async def test_a_declared_length_above_the_limit_is_refused_before_reading() -> None:
    # It declares 10 GB and then sends nothing: waiting for it would hang.
    async with hostile(fixed(head(202, length=10 * 1024**3), keep_open=True)) as url:
        error = await post(url)
        assert isinstance(error, UncertainDeliveryError)
        assert "declares 10737418240 bytes" in str(error)


async def test_a_short_body_behind_a_lying_length_is_a_lost_answer() -> None:
    async with hostile(fixed(head(202, length=1000) + b'{"action_id": "a')) as url:
        assert isinstance(await post(url), UncertainDeliveryError)


async def test_gzip_bomb_stops_at_the_decompressed_limit() -> None:
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # 200 MiB of spaces
    data = head(200, {"Content-Encoding": "gzip"}, length=len(bomb)) + bomb
    async with hostile(fixed(data)) as url:
        tracemalloc.start()
        try:
            error = await read(url, retry=RetryPolicy(max_attempts=1))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(error, ServerError) and "allowed" in str(error)
    assert len(bomb) < 1024 * 1024
    assert peak < 64 * 1024 * 1024, peak  # the default limit is 8 MiB


@pytest.mark.parametrize("status", [202, 200])
async def test_deep_json_in_an_accepted_cancel_is_uncertain(status: int) -> None:
    async with hostile(fixed(answer(status, DEEP))) as url:
        error = await post(url)
    assert isinstance(error, UncertainDeliveryError)
    assert "RecursionError" not in repr(chain(error))


async def test_deep_json_in_error_answers_and_status_reads_is_a_mirakl_error() -> None:
    async with hostile(fixed(answer(500, DEEP))) as url:
        assert isinstance(await post(url), UncertainDeliveryError)
        assert isinstance(await read(url), ServerError)
    async with hostile(fixed(answer(200, DEEP))) as url:
        error = await read(url)
        assert isinstance(error, ServerError) and "deeper than 64" in str(error)
    async with hostile(fixed(answer(400, DEEP))) as url:
        assert isinstance(await read(url), MiraklError)


async def test_deep_json_in_a_token_answer_is_a_mirakl_error() -> None:
    deep = b"[" * 30_000 + b"]" * 30_000  # under the token answer's 64 KiB, still deep
    async with hostile(fixed(answer(200, deep))) as url:
        auth = ClientCredentials("cid", "very-secret", token_url=f"{url}/token")
        async with MiraklConnectClient(auth=auth, base_url=url,
                                       retry=RetryPolicy(max_attempts=1)) as c:
            with pytest.raises(ServerError, match="without an access_token"):
                await c.get_action_status("act-1")


async def test_huge_token_answer_is_refused() -> None:
    body = b'{"access_token": "' + b"a" * (1024 * 1024) + b'"}'
    async with hostile(fixed(answer(200, body))) as url:
        auth = ClientCredentials("cid", "very-secret", token_url=f"{url}/token")
        async with MiraklConnectClient(auth=auth, base_url=url,
                                       retry=RetryPolicy(max_attempts=1)) as c:
            with pytest.raises(TransportError, match="65536 allowed") as info:
                await c.get_action_status("act-1")
    assert_no_secret(info.value)
    assert "very-secret" not in repr(chain(info.value))


async def test_token_with_a_newline_is_refused_before_any_cancel_leaves() -> None:
    body = json.dumps({"access_token": "abc\r\nX-Evil: 1", "expires_in": 3600}).encode()
    async with hostile(fixed(answer(200, body))) as url:
        auth = ClientCredentials("cid", "very-secret", token_url=f"{url}/token")
        async with MiraklConnectClient(auth=auth, base_url=url,
                                       retry=RetryPolicy(max_attempts=1)) as c:
            with pytest.raises(ServerError, match="unusable access_token"):
                await c.cancel(request())


# --- resets and secrets ---------------------------------------------------------------


def reset(after_request: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if after_request:
            await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    return handler


async def test_reset_after_the_request_is_uncertain_for_a_cancel() -> None:
    async with hostile(reset()) as url:
        error = await post(url)
        assert isinstance(error, UncertainDeliveryError)
        read_error = await read(url)
        assert isinstance(read_error, TransportError)
        assert not isinstance(read_error, UncertainDeliveryError)


async def test_no_token_in_the_chain_of_any_failure() -> None:
    # Every kind of failure above already checks its chain; this one checks the
    # exception aiohttp raised is gone from __context__ too.
    async with hostile(reset()) as url:
        error = await read(url, retry=RetryPolicy(max_attempts=1))
    assert all("aiohttp" not in type(item).__module__ for item in chain(error))


# --- in bulk helpers: processed cancels are UNCERTAIN, never ERROR --------------------


async def test_cancel_many_reports_deep_json_as_uncertain() -> None:
    async with hostile(fixed(answer(202, DEEP))) as url, client(url) as c:
        outcomes = [o async for o in c.cancel_many([request("o1"), request("o2")])]
    assert len(outcomes) == 2
    assert all(isinstance(o.error, UncertainDeliveryError) for o in outcomes)


async def test_cancel_and_track_reports_a_huge_answer_as_uncertain() -> None:
    data = answer(202, b'{"action_id": "' + b"a" * 2_000_000 + b'"}')
    async with hostile(fixed(data)) as url, client(
            url, limits=Limits(max_body_bytes=1_000_000)) as c:
        results = [r async for r in cancel_and_track(
            c, [request("o1")], PollPolicy(min_interval=0.01, interval=0.01,
                                           first_delay=0.0))]
    assert [r.outcome for r in results] == [Outcome.UNCERTAIN]


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        Limits(max_body_bytes=0)
    with pytest.raises(ValueError, match="max_json_depth"):
        Limits(max_json_depth=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer"):
        Timeout(answer=float("inf"))


# --- 3. nothing hangs ------------------------------------------------------------------


async def test_an_absurd_retry_after_ends_tracking_with_a_clear_outcome() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            method, _, _ = await read_request(reader)
            if method == "POST":
                writer.write(answer(202, b'{"action_id": "act-1"}'))
            else:
                writer.write(answer(429, b'{"message": "slow down"}',
                                    {"Retry-After": "999999999"}))
            await writer.drain()

    policy = PollPolicy(min_interval=0.01, interval=0.01, first_delay=0.0)  # no timeout
    async with hostile(refuse) as url, client(url) as c:
        results = await asyncio.wait_for(
            _collect(cancel_and_track(c, [request("o1")], policy)), HANG_GUARD)
    [result] = results
    assert result.outcome is Outcome.ERROR
    assert result.action_id == "act-1"
    assert isinstance(result.exception, RateLimitError)


async def _collect(results: AsyncIterator[Any]) -> list[Any]:
    return [r async for r in results]


async def test_two_cancels_answered_with_one_action_id_get_one_result_each() -> None:
    async def same_id(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            method, _, _ = await read_request(reader)
            if method == "POST":
                writer.write(answer(202, b'{"action_id": "act-same"}'))
            else:
                writer.write(answer(200, b'{"id": "act-same", "status": "SUCCESS"}'))
            await writer.drain()

    policy = PollPolicy(min_interval=0.01, interval=0.01, first_delay=0.0)
    async with hostile(same_id) as url, client(url) as c:
        results = await asyncio.wait_for(
            _collect(cancel_and_track(c, [request("o1"), request("o2")], policy)), HANG_GUARD)
    assert sorted(r.order_id for r in results) == ["o1", "o2"]
    assert sorted(r.outcome.value for r in results) == ["SUCCEEDED", "UNCERTAIN"]


# --- secrets and unsendable input -------------------------------------------------------


@pytest.mark.parametrize("url", ["https://user:pa55@connect.example.com/api",
                                 "http://user@127.0.0.1:9"])
def test_a_base_url_with_userinfo_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValidationError, match="base_url") as info:
        MiraklConnectClient(auth=StaticToken(TOKEN), base_url=url)
    assert "pa55" not in str(info.value)


def test_a_token_url_with_userinfo_is_refused() -> None:
    with pytest.raises(ValidationError, match="token_url") as info:
        ClientCredentials("cid", "secret", token_url="https://u:pa55@auth.example.com/t")
    assert "pa55" not in str(info.value)


async def test_lone_surrogates_are_refused_before_sending() -> None:
    hits: list[str] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append("request")
        await read_request(reader)

    async with hostile(count) as url, client(url) as c:
        with pytest.raises(ValidationError, match="order_line_id"):  # refused by the model
            Cancelation(quantity=1, reason=CancelReason.OUT_OF_STOCK,
                        price=Money(Decimal("1"), "EUR"), shipping_price=Money(0, "EUR"),
                        order_line_id="l-\udc80")
        with pytest.raises(ValidationError, match="order_id"):
            await c.cancel(CancelRequest("o-\ud800", request().cancelations))
        with pytest.raises(ValidationError, match="action_id"):
            await c.get_action_status("a-\udfff")
        with pytest.raises(ValidationError, match=r"order_ids\[1\]"):
            await c.list_orders(["ok", "bad-\udc00"])
        emoji = Cancelation(quantity=1, reason=CancelReason.OUT_OF_STOCK,
                            price=Money(Decimal("1"), "EUR"), shipping_price=Money(0, "EUR"),
                            order_line_id="l-\U0001f600")  # a valid pair is fine
    assert hits == []
    async with hostile(fixed(answer(202, b'{"action_id": "a"}'))) as url, client(url) as c:
        accepted = await c.cancel(CancelRequest("o1", [emoji]))
    assert accepted.action_id == "a"
