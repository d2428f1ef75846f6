"""Shared test fixtures: a virtual clock for the transport, and mocked HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aioresponses import aioresponses

from mirakl_cancel import _pollguard, _transport

REAL_SLEEP = asyncio.sleep


class FakeClock:
    """Virtual monotonic time; sleeping advances it instantly (and yields once).

    Patched into the transport and the poll guard only, so that 60-second rules and
    backoff delays take no real time while the event loop itself keeps real time.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.time = SimpleNamespace(monotonic=self.monotonic, time=time.time)
        self.asyncio = SimpleNamespace(
            **{name: getattr(asyncio, name) for name in dir(asyncio) if not name.startswith("_")})
        self.asyncio.sleep = self.sleep

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.sleeps.append(delay)
        self.now += max(delay, 0.0)
        await REAL_SLEEP(0)
        return result


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    for module in (_transport, _pollguard):
        monkeypatch.setattr(module, "time", fake.time)
        monkeypatch.setattr(module, "asyncio", fake.asyncio)
    return fake


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free loopback port for the block; yields its root URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
