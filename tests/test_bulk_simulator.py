"""cancel_and_track and ActionTracker against the simulator on loopback, in scaled time.

At time_scale=0.001 the API's one-read-per-minute rule lasts 60 ms, and a processing
delay of 30-200 API seconds lasts 30-200 ms, so a whole bulk job with its polling
schedule runs in seconds while the simulator still counts every rule we break.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

import builders

from mirakl_cancel import (
    BadRequestError,
    CancelReason,
    CancelRequest,
    MiraklConnectClient,
    NotFoundError,
    RetryPolicy,
    StaticToken,
)
from mirakl_cancel.bulk import CancelResult, Outcome, cancel_and_track
from mirakl_cancel.models import ActionStatus
from mirakl_cancel.simulator import Fault, SimOrder, Simulator, SimulatorConfig
from mirakl_cancel.tracker import ActionTracker, PollPolicy

SCALE = 0.001
MIN = 60.0 * SCALE
PROCESSING = (30.0, 200.0)  # API seconds
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=10.0)


def config(**overrides: object) -> SimulatorConfig:
    options: dict[str, object] = {"time_scale": SCALE, "processing_delay": PROCESSING,
                                  "min_poll_interval": 60.0, "seed": 0}
    options.update(overrides)
    return SimulatorConfig(**options)  # type: ignore[arg-type]


def client_for(sim: Simulator, **overrides: object) -> MiraklConnectClient:
    options: dict[str, object] = {
        "auth": StaticToken(sim.token), "base_url": sim.base_url, "min_poll_interval": MIN,
        "max_concurrency": 32, "retry": RetryPolicy(base_delay=0.005, max_delay=0.05)}
    options.update(overrides)
    return MiraklConnectClient(**options)  # type: ignore[arg-type]


def cancel_all(order: SimOrder, *, excess: bool = False) -> CancelRequest:
    """One unit of every line; with `excess`, one unit more than the first line has."""
    cancelations = [
        builders.line(sim_line.id, sim_line.quantity + 1 if excess and i == 0 else 1,
                      price=sim_line.price, currency=sim_line.currency,
                      reason=CancelReason.CUSTOMER_CANCELATION)
        for i, sim_line in enumerate(order.lines)]
    return CancelRequest(order.id, cancelations)


async def test_a_mixed_bulk_run_ends_every_request_once_and_politely() -> None:
    started = time.perf_counter()
    async with Simulator(config()) as sim:
        orders = sim.generate_orders(n_orders=1900, lines_per_order=(1, 3),
                                     wrong_state_ratio=0.1)
        excess = {order.id for i, order in enumerate(orders) if i % 10 == 3}
        requests = [cancel_all(order, excess=order.id in excess) for order in orders]
        unknown = [CancelRequest(f"0009_{n}-Z", cancel_all(orders[0]).cancelations)
                   for n in range(100)]
        requests += unknown  # last, so that the scripted faults below never reach them
        sim.inject(Fault.http(400), route="cancel", count=20)
        sim.inject(Fault.drop_after_read(), route="cancel", count=10)
        sim.inject(Fault.drop_after_read(), route="status", count=10)
        sim.inject(Fault.http(503), route="status", count=10)
        sim.inject(Fault.http(429, retry_after=150.0), route="status", count=5)

        results: list[CancelResult] = []
        async with client_for(sim) as client:
            async for result in cancel_and_track(client, requests, POLICY):
                results.append(result)

        # Exactly one result per request.
        assert len(results) == len(requests)
        assert Counter(r.order_id for r in results) == Counter(r.order_id for r in requests)

        outcomes = Counter(r.outcome for r in results)
        assert outcomes[Outcome.UNCERTAIN] == 10
        unexpected = [r.describe() for r in results
                      if r.outcome in (Outcome.ERROR, Outcome.TIMED_OUT)]
        assert not unexpected, unexpected
        rejected = [r for r in results if r.outcome is Outcome.REJECTED]
        assert sum(isinstance(r.exception, BadRequestError) for r in rejected) == 20
        not_found = [r for r in rejected if isinstance(r.exception, NotFoundError)]
        assert {r.order_id for r in not_found} == {r.order_id for r in unknown}
        for result in results:
            if result.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
                continue
            order = sim.orders[result.order_id]
            cancellable = order.status == "AWAITING_SHIPMENT"
            if cancellable and order.id not in excess:
                assert result.outcome is Outcome.SUCCEEDED, result.describe()
                assert all(line.remaining_quantity == line.quantity - 1 for line in order.lines)
            else:
                assert result.outcome is Outcome.FAILED, result.describe()
                codes = {error.code for error in result.errors}  # type: ignore[union-attr]
                assert codes == {"ORDER_IN_WRONG_STATE" if not cancellable else "INVALID_INPUT"}
        assert outcomes[Outcome.FAILED] > 150 and outcomes[Outcome.SUCCEEDED] > 1400

        stats = sim.stats
        assert stats.poll_violations == 0
        assert stats.duplicate_posts == 0
        assert sum(stats.posts_per_order.values()) == len(requests) - 20  # 400s never reach it
        # Polls at the schedule's minimum: first at 60 ms, then every 100 ms, until at most
        # 200 ms; failed reads (scripted faults) add one read each.
        ideal = math.ceil((PROCESSING[1] * SCALE - POLICY.first_delay) / POLICY.interval) + 1
        polls = stats.polls_per_action
        tracked = [r.action_id for r in results if r.action_id]
        assert all(polls[action_id] >= 1 for action_id in tracked)
        extra = sum(max(0, polls[action_id] - ideal) for action_id in tracked)
        assert extra <= 10 + 5 + 10  # at most one extra read per scripted status fault
    print(f"mixed run: {len(requests)} requests, {sum(polls.values())} polls, "
          f"{time.perf_counter() - started:.1f}s")


async def test_resume_in_a_new_tracker_and_client_keeps_the_interval() -> None:
    async with Simulator(config(processing_delay=(400.0, 400.0))) as sim:
        [order] = sim.generate_orders(n_orders=1, wrong_state_ratio=0.0)
        policy = PollPolicy(min_interval=MIN, interval=MIN, first_delay=0.0)
        async with client_for(sim) as first:
            accepted = await first.cancel(cancel_all(order))
            tracker = ActionTracker(first, policy)
            polled = asyncio.Event()
            tracker.track(accepted.action_id, order_id=order.id)
            original = first.get_action_status

            async def spy(action_id: str, *, retry: bool = True) -> ActionStatus:
                try:
                    return await original(action_id, retry=retry)
                finally:
                    polled.set()

            first.get_action_status = spy  # type: ignore[method-assign]
            await asyncio.wait_for(polled.wait(), 5.0)
            exported = tracker.export_pending()
            await tracker.close(drain=False)
        assert sim.stats.polls_per_action[accepted.action_id] == 1

        async with client_for(sim) as second:
            resumed = ActionTracker(second, PollPolicy(min_interval=MIN, interval=MIN,
                                                        first_delay=0.0))
            assert resumed.import_pending(exported) == 1
            # Even a direct read through the new client waits for the interval.
            status = await second.get_action_status(accepted.action_id)
            assert status.id == accepted.action_id
            async with resumed:
                final = await resumed.wait(accepted.action_id)
        assert final.state.value == "SUCCESS"
        assert sim.stats.poll_violations == 0


async def test_a_rate_limited_poll_is_rescheduled_without_breaking_the_ceiling() -> None:
    async with Simulator(config(processing_delay=(100.0, 100.0))) as sim:
        orders = sim.generate_orders(n_orders=5, wrong_state_ratio=0.0)
        sim.inject(Fault.http(429, retry_after=150.0), route="status", count=3)
        async with client_for(sim) as client:
            results = [r async for r in cancel_and_track(
                client, [cancel_all(o) for o in orders], POLICY)]
        assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
        assert sim.stats.poll_violations == 0
        assert client.stats.rate_limited == 3


async def test_polling_at_exactly_the_ceiling_never_breaks_it() -> None:
    """interval == min_interval: every read lands as early as the rule allows, so any
    latency the tracker failed to account for would show up as a violation."""
    async with Simulator(config(processing_delay=(250.0, 250.0))) as sim:
        orders = sim.generate_orders(n_orders=10, wrong_state_ratio=0.0)
        policy = PollPolicy(min_interval=MIN, interval=MIN, first_delay=0.0)
        async with client_for(sim) as client:
            results = [r async for r in cancel_and_track(
                client, [cancel_all(o) for o in orders], policy)]
        assert {r.outcome for r in results} == {Outcome.SUCCEEDED}
        assert sim.stats.poll_violations == 0
        assert max(sim.stats.polls_per_action.values()) <= math.ceil(0.25 / MIN) + 1
