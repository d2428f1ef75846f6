"""Rate limiting and faults: refused-before-processing versus processed-but-lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from mirakl_cancel.simulator import Fault, SimLine, SimOrder, Simulator, SimulatorConfig

pytestmark = pytest.mark.asyncio

CONFIG = SimulatorConfig(time_scale=0.001, processing_delay=(1.0, 1.0))
BODY: dict[str, Any] = {
    "cancelations": [
        {
            "order_line_id": "O1-1",
            "quantity": 1,
            "reason": "OUT_OF_STOCK",
            "price": {"amount": 10, "currency": "EUR"},
            "shipping_price": {"amount": 0, "currency": "EUR"},
        }
    ]
}


def the_order() -> SimOrder:
    return SimOrder(
        id="O1", lines=[SimLine(id="O1-1", product_id="P1", quantity=50, price=Decimal(10))]
    )


class Raw:
    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim, self.session = sim, session
        self.auth = {"Authorization": f"Bearer {sim.token}"}

    async def cancel(self) -> aiohttp.ClientResponse:
        url = f"{self.sim.base_url}/v2/orders/O1/cancel"
        async with self.session.post(url, json=BODY, headers=self.auth) as resp:
            await resp.read()
            return resp

    async def status(self, action_id: str = "x") -> aiohttp.ClientResponse:
        url = f"{self.sim.base_url}/v2/orders/actions/{action_id}"
        async with self.session.get(url, headers=self.auth) as resp:
            await resp.read()
            return resp

    async def orders(self) -> aiohttp.ClientResponse:
        url = f"{self.sim.base_url}/v2/orders"
        async with self.session.get(url, headers=self.auth) as resp:
            await resp.read()
            return resp

    async def token(self) -> aiohttp.ClientResponse:
        form = {
            "grant_type": "client_credentials",
            "client_id": "sim-client",
            "client_secret": "sim-secret",
        }
        async with self.session.post(self.sim.token_url, data=form) as resp:
            await resp.read()
            return resp


async def running(config: SimulatorConfig) -> AsyncIterator[tuple[Simulator, Raw]]:
    async with Simulator(config) as sim, aiohttp.ClientSession() as session:
        sim.add_order(the_order())
        yield sim, Raw(sim, session)


@pytest_asyncio.fixture
async def env() -> AsyncIterator[tuple[Simulator, Raw]]:
    async for pair in running(CONFIG):
        yield pair


# -- scripted HTTP faults: refused, nothing processed -------------------------


async def test_scripted_503_count_then_normal(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(503), route="cancel", count=2)
    first, second, third = await raw.cancel(), await raw.cancel(), await raw.cancel()
    assert [first.status, second.status, third.status] == [503, 503, 202]
    assert first.content_type == "application/json"
    assert (await first.json())["code"] == "UNAVAILABLE"
    assert first.headers["Retry-After"] == "0.001"  # one API second, scaled
    assert sim.stats.actions_created == 1  # the refused ones were not processed
    assert sim.stats.faults_injected == {"503": 2}
    assert sim.stats.posts_per_order == {"O1": 1}
    assert sim.stats.duplicate_posts == 0  # retrying a refusal is not a duplicate


async def test_scripted_fault_only_hits_its_route(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(500), route="status")
    assert (await raw.cancel()).status == 202
    resp = await raw.status()
    assert resp.status == 500
    assert (await resp.json())["code"] == "UNEXPECTED"
    assert (await raw.status()).status == 404


async def test_429_with_retry_after_seconds(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(429, retry_after="2"), route="status")
    resp = await raw.status()
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"
    assert sim.stats.responses_429 == 1


async def test_429_with_http_date_on_any_route(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    sim.inject(Fault.http(429, retry_after=date), route="*", count=3)
    # "*" spares the token endpoint, which lives on another host in production.
    assert (await raw.token()).status == 200
    responses = [await raw.cancel(), await raw.status(), await raw.orders()]
    assert [r.status for r in responses] == [429, 429, 429]
    assert {r.headers["Retry-After"] for r in responses} == {date}
    assert sim.stats.actions_created == 0


async def test_numeric_retry_after_is_scaled(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(429, retry_after=30), route="cancel")
    resp = await raw.cancel()
    assert resp.headers["Retry-After"] == "0.030"


async def test_502_is_an_html_gateway_page(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(502), route="cancel")
    resp = await raw.cancel()
    assert resp.status == 502
    assert resp.content_type == "text/html"
    assert "<h1>502 Bad Gateway</h1>" in await resp.text()
    assert sim.stats.actions_created == 0


async def test_504_json_error(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(504), route="orders")
    resp = await raw.orders()
    assert resp.status == 504
    assert set(await resp.json()) >= {"code", "message"}


async def test_token_route_fault(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(503), route="token")
    resp = await raw.token()
    assert resp.status == 503
    assert (await resp.json())["error"] == "temporarily_unavailable"
    assert (await raw.token()).status == 200


async def test_scripted_faults_are_served_in_order(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.http(500), route="cancel")
    sim.inject(Fault.http(503), route="cancel")
    sim.inject(Fault.http(504), route="*")
    statuses = [(await raw.cancel()).status for _ in range(4)]
    assert statuses == [500, 503, 504, 202]
    assert sim.state.faults.pending() == 0


# -- processed, answer lost -----------------------------------------------------


async def test_drop_after_read_processes_the_cancel(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.drop_after_read(), route="cancel")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await raw.cancel()
    assert sim.stats.drops == 1
    assert sim.stats.faults_injected == {"drop_after_read": 1}
    (action,) = sim.actions.values()
    assert sim.orders["O1"].lines[0].remaining_quantity == 49  # reserved
    await asyncio.sleep(0.005)
    assert action.status == "SUCCESS"
    # The client cannot know; a blind retry is visible as a duplicate that cancels more.
    assert (await raw.cancel()).status == 202
    assert sim.stats.duplicate_posts == 1
    assert sim.orders["O1"].lines[0].remaining_quantity == 48
    assert sim.stats.status_codes == {"202": 1}  # the dropped answer was never sent


async def test_delay_processes_then_times_out(env: tuple[Simulator, Raw]) -> None:
    sim, raw = env
    sim.inject(Fault.delay(0.5), route="cancel")
    with pytest.raises(asyncio.TimeoutError):  # the answer stalls past the client's wait
        await asyncio.wait_for(raw.cancel(), 0.1)
    assert sim.stats.actions_created == 1  # processed before the stall
    assert sim.stats.faults_injected == {"delay": 1}


# -- global rate limit and random faults ----------------------------------------


async def test_global_rate_limit() -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(1, 1), rate_limit=5)
    async for sim, raw in running(config):
        statuses = [(await raw.status()).status for _ in range(8)]
        assert statuses[:5] == [404] * 5  # the burst: one second's worth
        assert set(statuses[5:]) == {429}
        resp = await raw.orders()
        assert resp.status == 429
        wait = float(resp.headers["Retry-After"])
        assert 0 < wait <= 0.2  # real seconds (rate limits are not scaled)
        assert (await resp.json())["code"] == "TOO_MANY_REQUEST"
        assert sim.stats.responses_429 == 4
        assert (await raw.token()).status == 200  # the token endpoint is not limited
        await asyncio.sleep(wait + 0.01)
        assert (await raw.status()).status == 404


async def test_random_faults_are_seeded_and_counted() -> None:
    config = SimulatorConfig(
        time_scale=0.001,
        processing_delay=(1, 1),
        fault_rates={"503": 0.3, "500": 0.2},
        seed=7,
    )
    runs = []
    for _ in range(2):
        async for sim, raw in running(config):
            statuses = [(await raw.status()).status for _ in range(40)]
            assert (await raw.token()).status == 200  # random faults spare the token route
            runs.append(statuses)
            assert sim.stats.faults_injected.get("503", 0) == statuses.count(503)
            assert sim.stats.faults_injected.get("500", 0) == statuses.count(500)
    assert runs[0] == runs[1]
    assert {404, 500, 503} <= set(runs[0])


async def test_random_drops() -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(1, 1), fault_rates={"drop": 1.0})
    async for sim, raw in running(config):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await raw.cancel()
        assert sim.stats.actions_created == 1
        assert sim.stats.drops == 1


async def test_latency_is_added() -> None:
    config = SimulatorConfig(time_scale=0.001, latency=(50, 50))  # 50 ms
    async for _, raw in running(config):
        started = time.monotonic()
        await raw.status()
        assert time.monotonic() - started >= 0.045
