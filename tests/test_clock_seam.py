"""The one clock seam: a client given a ManualClock keeps every time rule on it.

Against the simulator over 127.0.0.1 (real HTTP, real simulator time at full scale),
the client's retry pause, a 429's Retry-After pause, the once-a-minute poll ceiling,
a token's expiry and the tracker's schedule all wait on the manual clock: each wait
shows up as a sleep on it (`next_due` would fail if the client slept for real), and
nothing happens until the test moves the clock past it.
"""

from __future__ import annotations

import asyncio

import pytest
from builders import request_for, sim_order

from mirakl_cancel import (
    ActionState,
    ActionTracker,
    ClientCredentials,
    MiraklConnectClient,
    PollPolicy,
    RetryPolicy,
)
from mirakl_cancel.simulator import Fault, SimulatorConfig, ThreadedSimulator
from mirakl_cancel.testing import ManualClock

BACKOFF = 8.0
TOKEN_TTL = 600.0  # the simulator's expires_in; the client renews 60 s before (margin)


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    # Full scale: the simulator's own clock is real time, so a token or a read ceiling
    # there never lapses while the test runs; the simulator does not enforce the read
    # ceiling itself (the client's guard is what is measured, on the manual clock).
    return SimulatorConfig(time_scale=1.0, min_poll_interval=0.0, min_list_interval=0.0,
                           token_ttl=TOKEN_TTL, processing_delay=(3600.0, 3600.0))


@pytest.fixture
def sim(mirakl_simulator: ThreadedSimulator) -> ThreadedSimulator:
    for n in range(1, 4):
        mirakl_simulator.add_order(sim_order(f"O{n}"))
    return mirakl_simulator


def manual_client(sim: ThreadedSimulator, clock: ManualClock) -> MiraklConnectClient:
    config = sim.config
    auth = ClientCredentials(config.client_id, config.client_secret, sim.token_url)
    return MiraklConnectClient(auth=auth, base_url=sim.base_url, clock=clock,
                               retry=RetryPolicy(base_delay=BACKOFF, max_delay=BACKOFF))


def route_count(sim: ThreadedSimulator, route: str) -> int:
    return sim.stats_snapshot()["requests_by_route"].get(route, 0)


async def test_retry_pause_and_poll_ceiling_follow_the_manual_clock(
        sim: ThreadedSimulator) -> None:
    clock = ManualClock()
    async with manual_client(sim, clock) as client:
        accepted = await client.cancel(request_for("O1"))
        start = clock.monotonic()
        sim.inject(Fault.http(503), route="status")
        read = asyncio.create_task(client.get_action_status(accepted.action_id))
        # The 503 (with the simulator's 1 s hint) asks for the backoff: on the clock.
        backoff = await clock.next_due()
        assert 1.0 <= backoff < BACKOFF and clock.sleeps == [pytest.approx(backoff)]
        assert route_count(sim, "status") == 1
        await clock.advance(backoff)
        # The 503 was a read: the retry also waits for the ceiling, on the clock too.
        ceiling = await clock.next_due()
        assert backoff + ceiling == pytest.approx(client.min_poll_interval)
        assert route_count(sim, "status") == 1 and not read.done()
        await clock.advance(ceiling)
        status = await read
        assert status.state is ActionState.PENDING
        assert route_count(sim, "status") == 2
        assert clock.monotonic() - start == pytest.approx(60.0)
        # A read right after waits the whole minute, from the end of the last one.
        assert client.poll_ready_in(accepted.action_id) == pytest.approx(60.0)
        again = asyncio.create_task(client.get_action_status(accepted.action_id))
        assert await clock.next_due() == pytest.approx(60.0)
        await clock.advance(59.0)
        assert route_count(sim, "status") == 2 and not again.done()
        await clock.advance(1.0)
        await again
        assert route_count(sim, "status") == 3


async def test_retry_after_pause_follows_the_manual_clock(sim: ThreadedSimulator) -> None:
    clock = ManualClock()
    async with manual_client(sim, clock) as client:
        sim.inject(Fault.http(429, retry_after=30), route="cancel")
        send = asyncio.create_task(client.cancel(request_for("O2")))
        assert await clock.next_due() == pytest.approx(30.0)
        assert client.stats.rate_limited == 1 and route_count(sim, "cancel") == 1
        # The whole client holds back meanwhile: another cancel waits for the same pause.
        other = asyncio.create_task(client.cancel(request_for("O3")))
        await clock.advance(29.5)
        assert not send.done() and not other.done() and route_count(sim, "cancel") == 1
        await clock.advance(0.5)
        await asyncio.gather(send, other)
        assert route_count(sim, "cancel") == 3
        # The refused one was not processed: each order was cancelled once.
        assert sim.stats_snapshot()["posts_per_order"] == {"O2": 1, "O3": 1}


async def test_token_expiry_follows_the_manual_clock(sim: ThreadedSimulator) -> None:
    clock = ManualClock()
    async with manual_client(sim, clock) as client:
        await client.cancel(request_for("O1"))
        assert route_count(sim, "token") == 1
        await clock.advance(TOKEN_TTL - 60.0 - 1.0)  # before the refresh margin
        await client.cancel(request_for("O2"))
        assert route_count(sim, "token") == 1
        await clock.advance(2.0)  # past it: the cached token is renewed first
        await client.cancel(request_for("O3"))
        assert route_count(sim, "token") == 2


async def test_a_tracker_on_the_client_keeps_its_clock(sim: ThreadedSimulator) -> None:
    clock = ManualClock()
    async with manual_client(sim, clock) as client:
        accepted = await client.cancel(request_for("O1"))
        answered = asyncio.Event()  # the tracker's read came back (its only request)
        client.hooks.on("response", lambda event: answered.set())
        policy = PollPolicy(first_delay=120.0, interval=300.0, timeout=3600.0)
        async with ActionTracker(client, policy) as tracker:  # no clock: the client's
            tracker.add(accepted.action_id)
            await clock.advance(119.0)
            assert route_count(sim, "status") == 0
            await clock.advance(1.0)
            await asyncio.wait_for(answered.wait(), 30)  # (real I/O: a bound, not a measure)
            assert route_count(sim, "status") == 1
            # Its next read is due `interval` after that one, on the same clock.
            assert client.poll_ready_in(accepted.action_id) == pytest.approx(60.0)
            await tracker.close(drain=False)
