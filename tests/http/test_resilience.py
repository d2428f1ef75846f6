"""The transport's rules, proven over a real wire against the simulator on 127.0.0.1.

Each test injects one fault the way production shows it and checks both sides: what the
client raised or returned, and what the server actually received.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import aiohttp
import pytest
from builders import line

from mirakl_cancel import (
    AuthenticationError,
    BadRequestError,
    ClientCredentials,
    MiraklConnectClient,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StaticToken,
    Timeout,
    TransportError,
    UncertainDeliveryError,
)
from mirakl_cancel.simulator import (
    Fault,
    SimLine,
    SimOrder,
    Simulator,
    SimulatorConfig,
    ThreadedSimulator,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_time=10)


#: Tests here run on the shipped plugin's threaded simulator; a few start their own.
Sim = Simulator | ThreadedSimulator


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    return SimulatorConfig(time_scale=0.001, processing_delay=(1.0, 2.0), min_poll_interval=60)


@pytest.fixture
def sim(mirakl_simulator: ThreadedSimulator) -> ThreadedSimulator:
    """The shipped `mirakl_simulator` fixture (our pytest plugin), with one order."""
    mirakl_simulator.add_order(SimOrder(id="O1", lines=[
        SimLine(id="O1-1", product_id="P1", quantity=10, price=Decimal("19.99"))]))
    return mirakl_simulator


def client_for(sim: Sim, **kwargs: object) -> MiraklConnectClient:
    options: dict[str, object] = {"retry": FAST, "min_poll_interval": 0.06}
    options.update(kwargs)
    return MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                               **options)  # type: ignore[arg-type]


def cancel_posts(sim: Sim) -> int:
    """Cancel POSTs that reached the server's handler (i.e. could have been processed)."""
    return sim.stats.posts_per_order.get("O1", 0)


async def test_429_with_delta_seconds_waits_at_least_retry_after(sim: Sim) -> None:
    sim.inject(Fault.http(429, retry_after="0.3"), route="cancel")
    async with client_for(sim) as client:
        started = time.monotonic()
        accepted = await client.cancel_order_lines("O1", [line()])
        elapsed = time.monotonic() - started
    assert accepted.action_id in sim.actions
    assert elapsed >= 0.3
    assert cancel_posts(sim) == 1 and sim.stats.duplicate_posts == 0
    assert client.stats.rate_limited == 1 and client.stats.retries == 1


async def test_429_with_http_date_waits_until_that_date(sim: Sim) -> None:
    when = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    sim.inject(Fault.http(429, retry_after=format_datetime(when, usegmt=True)), route="cancel")
    async with client_for(sim) as client:
        await client.cancel_order_lines("O1", [line()])
    assert datetime.now(timezone.utc) >= when - timedelta(milliseconds=50)
    assert cancel_posts(sim) == 1


async def test_a_429_pauses_every_request_of_the_client(sim: Sim) -> None:
    starts: list[float] = []

    async def on_start(*_: object) -> None:
        starts.append(time.monotonic())

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    sim.inject(Fault.http(429, retry_after="0.4"), route="status")
    async with aiohttp.ClientSession(trace_configs=[trace]) as session, \
            client_for(sim, session=session) as client:
        accepted = [await client.cancel_order_lines("O1", [line()]) for _ in range(3)]
        paused = asyncio.Event()
        client.hooks.on("rate_limit", lambda _: paused.set())
        starts.clear()
        first = asyncio.create_task(client.get_action_status(accepted[0].action_id))
        await paused.wait()  # the first read has met its 429: the client is paused
        others = [client.get_action_status(a.action_id) for a in accepted[1:]]
        await asyncio.gather(first, *others)
    # The 429 came after the first request left; from then on nothing else left the
    # client before Retry-After passed (its own retry included). Lower bounds only.
    assert len(starts) == 4
    assert min(starts[1:]) >= starts[0] + 0.4 - 0.02
    assert client.stats.rate_limited == 1


async def test_503_on_cancel_is_retried_then_succeeds(sim: Sim) -> None:
    sim.inject(Fault.http(503), route="cancel", count=2)
    async with client_for(sim) as client:
        accepted = await client.cancel_order_lines("O1", [line()])
    assert accepted.action_id in sim.actions
    assert client.stats.retries == 2
    assert cancel_posts(sim) == 1 and sim.stats.duplicate_posts == 0


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_5xx_on_status_read_is_retried_then_succeeds(sim: Sim, status: int) -> None:
    async with client_for(sim) as client:
        accepted = await client.cancel_order_lines("O1", [line()])
        sim.inject(Fault.http(status), route="status")
        status_read = await client.get_action_status(accepted.action_id)
    assert status_read.id == accepted.action_id
    assert client.stats.retries == 1
    assert sim.stats.poll_violations == 0  # the retry waited for the per-action interval


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_5xx_on_cancel_is_uncertain_and_never_resent(sim: Sim, status: int) -> None:
    sim.inject(Fault.http(status), route="cancel")
    async with client_for(sim) as client:
        with pytest.raises(UncertainDeliveryError) as caught:
            await client.cancel_order_lines("O1", [line()])
    assert caught.value.order_id == "O1"
    assert isinstance(caught.value.__cause__, ServerError)
    assert sim.stats.requests_by_route["cancel"] == 1
    assert client.stats.uncertain == 1 and client.stats.retries == 0


async def test_dropped_connection_on_cancel_is_uncertain_with_one_post(sim: Sim) -> None:
    sim.inject(Fault.drop_after_read(), route="cancel")
    async with client_for(sim) as client:
        with pytest.raises(UncertainDeliveryError):
            await client.cancel_order_lines("O1", [line()])
    assert cancel_posts(sim) == 1  # it reached the server, was processed...
    assert len(sim.actions) == 1  # ...and created an action the client never heard of
    assert sim.stats.duplicate_posts == 0


async def test_read_timeout_on_cancel_is_uncertain_with_one_post(sim: Sim) -> None:
    sim.inject(Fault.delay(1.0), route="cancel")
    async with client_for(sim, timeout=Timeout(connect=1, read=0.2)) as client:
        with pytest.raises(UncertainDeliveryError):
            await client.cancel_order_lines("O1", [line()])
    assert cancel_posts(sim) == 1 and sim.stats.duplicate_posts == 0


async def test_read_timeout_on_status_read_is_retried(sim: Sim) -> None:
    async with client_for(sim, timeout=Timeout(connect=1, read=0.2)) as client:
        accepted = await client.cancel_order_lines("O1", [line()])
        sim.inject(Fault.delay(0.5), route="status")
        status = await client.get_action_status(accepted.action_id)
    assert status.id == accepted.action_id
    assert client.stats.retries == 1
    assert sim.stats.poll_violations == 0


async def test_opt_in_resend_of_uncertain_posts(sim: Sim) -> None:
    sim.inject(Fault.drop_after_read(), route="cancel")
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, retry_uncertain_posts=True)
    async with client_for(sim, retry=policy) as client:
        await client.cancel_order_lines("O1", [line()])
    # The user asked for it: the same cancel reached the server twice.
    assert cancel_posts(sim) == 2 and sim.stats.duplicate_posts == 1


async def test_400_is_not_retried(sim: Sim) -> None:
    sim.inject(Fault.http(400), route="cancel")
    async with client_for(sim) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.cancel_order_lines("O1", [line()])
    assert caught.value.status == 400 and caught.value.message
    assert sim.stats.requests_by_route["cancel"] == 1 and client.stats.retries == 0


@pytest.mark.parametrize(("fault", "raised", "safe"), [
    # refused before processing (the transport retried what it could): safe to send later
    (Fault.http(503), ServerError, True),
    (Fault.http(429, retry_after="0.01"), RateLimitError, True),
    (Fault.http(401), AuthenticationError, True),
    (Fault.http(403), PermissionDeniedError, True),
    # refused for its content: the same request would be refused again
    (Fault.http(400), BadRequestError, False),
    (Fault.http(404), NotFoundError, False),
    # may have been processed
    (Fault.http(500), UncertainDeliveryError, False),
    (Fault.drop_after_read(), UncertainDeliveryError, False),
])
async def test_a_failed_cancel_carries_whether_sending_it_again_is_safe(
        sim: Sim, fault: Fault, raised: type[MiraklError], safe: bool) -> None:
    """Decided once, where the error is made (the job's journal only reads it)."""
    sim.inject(fault, route="cancel", count=10)
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, max_time=10)
    async with client_for(sim, retry=policy) as client:
        with pytest.raises(raised) as caught:
            await client.cancel_order_lines("O1", [line()])
    assert type(caught.value) is raised
    assert caught.value.resend_safe is safe


async def test_unknown_order_is_not_found(sim: Sim) -> None:
    async with client_for(sim) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.cancel_order_lines("NOPE", [line()])
    assert caught.value.status == 404
    assert caught.value.code == "DATA_NOT_FOUND"


async def test_401_refreshes_the_token_once_then_raises(sim: Sim) -> None:
    auth = ClientCredentials(sim.config.client_id, sim.config.client_secret, sim.token_url)
    sim.inject(Fault.http(401), route="cancel", count=2)
    async with MiraklConnectClient(base_url=sim.base_url, auth=auth, retry=FAST) as client:
        with pytest.raises(AuthenticationError):
            await client.cancel_order_lines("O1", [line()])
        assert client.stats.token_refreshes == 1
        assert sim.stats.requests_by_route["token"] == 2
        assert sim.stats.requests_by_route["cancel"] == 2
        # Once the API accepts tokens again, the same client carries on.
        await client.cancel_order_lines("O1", [line()])
    assert cancel_posts(sim) == 1


async def test_expired_token_is_renewed_transparently() -> None:
    config = SimulatorConfig(time_scale=0.001, token_ttl=300)  # tokens live 0.3 s
    async with Simulator(config) as sim:
        sim.add_order(SimOrder(id="O1", lines=[
            SimLine(id="O1-1", product_id="P1", quantity=10, price=Decimal("19.99"))]))
        auth = ClientCredentials(config.client_id, config.client_secret, sim.token_url,
                                 refresh_margin=0)
        async with MiraklConnectClient(base_url=sim.base_url, auth=auth, retry=FAST) as client:
            await client.cancel_order_lines("O1", [line()])
            await asyncio.sleep(0.4)
            await client.cancel_order_lines("O1", [line()])
    assert sim.stats.requests_by_route["token"] >= 2
    assert sim.stats.posts_per_order["O1"] == 2


async def test_static_token_401_is_final(sim: Sim) -> None:
    async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken("wrong"),
                                   retry=FAST) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.cancel_order_lines("O1", [line()])
    assert "wrong" not in str(caught.value)
    assert sim.stats.requests_by_route["cancel"] == 1


class _Rotating:
    """An Auth whose every token the server refuses, renewed once: two 401s in a row."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.used = 0

    async def token(self, session: aiohttp.ClientSession) -> str:
        return self.tokens[self.used]

    def invalidate(self, token: str) -> bool:
        if self.used + 1 >= len(self.tokens):
            return False
        self.used += 1
        return True

    def __repr__(self) -> str:
        return "_Rotating(<hidden>)"


@pytest.mark.parametrize("renewable", [False, True])
async def test_no_token_stays_in_the_frames_of_a_refused_request(
        sim: Simulator, renewable: bool) -> None:
    """A traceback keeps its frames' locals alive (loggers, debuggers, error reporters
    read them): no token a 401 refused is in any of them, nor in their attributes,
    whether the error came at once (a static token) or after the one renewal."""
    secrets = ["tok-" + "s3cr3t" * 4, "tok-" + "h1dden" * 4][:1 + renewable]
    async with MiraklConnectClient(base_url=sim.base_url, auth=_Rotating(secrets),
                                   retry=FAST) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.cancel_order_lines("O1", [line()])
        assert client.stats.token_refreshes == renewable
    frames = 0
    assert caught.value.__traceback__ is not None
    tb = caught.value.__traceback__.tb_next  # (the first frame is this test's)
    while tb is not None:
        frames += 1
        for value in tb.tb_frame.f_locals.values():
            assert value not in secrets
            attributes = getattr(value, "__dict__", {})
            assert not set(secrets) & {v for v in attributes.values() if isinstance(v, str)}
        tb = tb.tb_next
    assert frames > 1
    assert caught.value.__context__ is None
    assert not any(secret in repr(caught.value) for secret in secrets)


async def test_connection_refused_is_retried_and_never_uncertain() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
    async with MiraklConnectClient(base_url=f"http://127.0.0.1:{port}", auth=StaticToken("t"),
                                   retry=policy) as client:
        with pytest.raises(TransportError) as caught:
            await client.cancel_order_lines("O1", [line()])
    assert not isinstance(caught.value, UncertainDeliveryError)
    assert client.stats.retries == 2 and client.stats.uncertain == 0
    assert caught.value.resend_safe  # it never left


async def test_retry_after_beyond_the_cap_surfaces(sim: Sim) -> None:
    sim.inject(Fault.http(429, retry_after="3600"), route="cancel")
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_retry_after=60)
    async with client_for(sim, retry=policy) as client:
        # wait_for guards against a silent hour-long sleep (it would fail, not hang).
        with pytest.raises(RateLimitError) as caught:
            await asyncio.wait_for(client.cancel_order_lines("O1", [line()]), 60)
        # The server asked for an hour of silence: later calls say so at once too.
        with pytest.raises(RateLimitError) as later:
            await asyncio.wait_for(client.get_action_status("any"), 60)
    assert caught.value.retry_after == pytest.approx(3600)
    assert later.value.retry_after is not None and later.value.retry_after > 3500
    assert caught.value.resend_safe and later.value.resend_safe  # refused; never left
    assert sim.stats.requests_by_route.get("status", 0) == 0


async def test_polls_of_one_action_keep_the_minimum_interval(sim: Sim) -> None:
    async with client_for(sim, min_poll_interval=0.06) as client:
        accepted = await client.cancel_order_lines("O1", [line()])
        for _ in range(4):  # a naive caller polling in a tight loop
            await client.get_action_status(accepted.action_id)
    assert sim.stats.polls_per_action[accepted.action_id] == 4
    assert sim.stats.poll_violations == 0


async def test_client_rate_limit_keeps_under_server_quota() -> None:
    config = SimulatorConfig(time_scale=1.0, rate_limit=50)
    async with Simulator(config) as sim:
        sim.add_order(SimOrder(id="O1", lines=[
            SimLine(id="O1-1", product_id="P1", quantity=100, price=Decimal("19.99"))]))
        async with client_for(sim, rate_limit=40, max_concurrency=16) as client:
            started = time.monotonic()
            await asyncio.gather(*(client.cancel_order_lines("O1", [line()]) for _ in range(40)))
            elapsed = time.monotonic() - started
    assert sim.stats.responses_429 == 0
    assert elapsed >= 39 / 40 - 0.05  # evenly spaced, not a burst
