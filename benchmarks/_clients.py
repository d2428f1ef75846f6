"""The send loops being compared: this library, raw aiohttp, httpx.

Each takes the same requests and concurrency and returns how many were accepted; the
caller measures CPU and wall time around it. The hand-written loops are what a user would
otherwise write: a fixed pool of workers, the same headers, the body serialised per
request with `json.dumps`, the answer parsed with `json.loads` for its `action_id`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import aiohttp

from mirakl_cancel import CancelRequest, MiraklConnectClient, StaticToken, Timeout
from mirakl_cancel._constants import USER_AGENT

from ._common import body_dict

__all__ = ["RawJob", "httpx_available", "library_timeout", "run_httpx", "run_library",
           "run_raw_aiohttp"]

try:  # httpx is optional: only the comparison row needs it.
    import httpx
except ImportError:  # pragma: no cover - depends on the environment
    httpx = None  # type: ignore[assignment]


def httpx_available() -> bool:
    return httpx is not None


class RawJob:
    """The same work as plain data: (url, body dict) pairs and the same headers."""

    def __init__(self, base_url: str, token: str, requests: list[CancelRequest]) -> None:
        self.items = [(f"{base_url}/v2/orders/{r.order_id}/cancel", body_dict(r))
                      for r in requests]
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json",
                        "Content-Type": "application/json", "User-Agent": USER_AGENT}


async def run_library(base_url: str, token: str, requests: list[CancelRequest],
                      concurrency: int, **client_options: Any) -> int:
    """`MiraklConnectClient.cancel_many`, the way the README shows it."""
    accepted = 0
    async with MiraklConnectClient(auth=StaticToken(token), base_url=base_url,
                                   max_concurrency=concurrency, **client_options) as client:
        async for outcome in client.cancel_many(requests):
            if outcome.ok:
                accepted += 1
    return accepted


def library_timeout() -> aiohttp.ClientTimeout:
    """The aiohttp timeouts the library's transport sets by default: a whole-answer
    deadline and a bound on each wait for data (`sock_read`, re-armed as data arrives)."""
    defaults = Timeout()
    return aiohttp.ClientTimeout(total=defaults.answer, sock_connect=defaults.connect,
                                 sock_read=defaults.read)


async def run_raw_aiohttp(job: RawJob, concurrency: int,
                          timeout: aiohttp.ClientTimeout | None = None) -> int:
    """A hand-written aiohttp worker pool with the same connection limit (and aiohttp's
    default timeout, a 5-minute total, unless `timeout` is given)."""
    accepted = 0
    items: Iterator[tuple[str, dict[str, Any]]] = iter(job.items)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    async with aiohttp.ClientSession(connector=connector, **options) as session:

        async def worker() -> None:
            nonlocal accepted
            for url, body in items:
                data = json.dumps(body, separators=(",", ":")).encode()
                async with session.post(url, data=data, headers=job.headers) as response:
                    raw = await response.read()
                    if response.status == 202 and json.loads(raw).get("action_id"):
                        accepted += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted


async def run_httpx(job: RawJob, concurrency: int) -> int:
    """The same loop on `httpx.AsyncClient` (HTTP/1.1, same connection limit)."""
    assert httpx is not None
    accepted = 0
    items: Iterator[tuple[str, dict[str, Any]]] = iter(job.items)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:

        async def worker() -> None:
            nonlocal accepted
            for url, body in items:
                data = json.dumps(body, separators=(",", ":")).encode()
                response = await client.post(url, content=data, headers=job.headers)
                if response.status_code == 202 and json.loads(response.content).get("action_id"):
                    accepted += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return accepted
