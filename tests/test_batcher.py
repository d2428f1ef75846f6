"""CancelBatcher: lines of one order arriving close together travel in one POST."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from builders import line

from mirakl_cancel import MiraklConnectClient, RetryPolicy, StaticToken
from mirakl_cancel._sending import send_many
from mirakl_cancel.batching import CancelBatcher, CancelOutcome
from mirakl_cancel.errors import NotFoundError, ValidationError
from mirakl_cancel.models import (
    ActionAccepted,
    ActionState,
    ActionStatus,
    CancelRequest,
)
from mirakl_cancel.simulator import Simulator, SimulatorConfig
from mirakl_cancel.tracker import ActionTracker, PollPolicy


class FakeClient:
    max_concurrency = 4
    min_poll_interval = 0.0

    def poll_ready_in(self, action_id: str) -> float:
        return 0.0

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        pass

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[CancelRequest] = []
        self.refuse: set[str] = set()

    async def cancel(self, request: CancelRequest, *, on_send: Any = None) -> ActionAccepted:
        self.sent.append(request)
        await asyncio.sleep(self.delay)
        if request.order_id in self.refuse:
            raise NotFoundError(404, "DATA_NOT_FOUND", f"Order {request.order_id} not found")
        return ActionAccepted(f"act-{len(self.sent)}", request.order_id)

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        return ActionStatus(action_id, ActionState.SUCCESS, raw_status="SUCCESS")

    def lines_sent(self) -> list[list[str | None]]:
        return [[c.order_line_id for c in r.cancelations] for r in self.sent]


async def test_lines_of_one_order_within_linger_share_one_request() -> None:
    client = FakeClient()
    async with CancelBatcher(client, linger=0.05) as batcher:  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            batcher.submit("o1", line("o1-1")),
            batcher.submit("o2", line("o2-1")),
            batcher.submit("o1", line("o1-2")),
            batcher.submit("o1", line("o1-3")),
        )
    assert client.lines_sent() == [["o1-1", "o1-2", "o1-3"], ["o2-1"]]
    assert outcomes[0] is outcomes[2] is outcomes[3]
    assert outcomes[0].ok and outcomes[0].request.order_id == "o1"
    assert outcomes[1].request.order_id == "o2"
    assert batcher.requests_sent == 2


async def test_a_line_after_the_linger_window_goes_in_the_next_request() -> None:
    client = FakeClient()
    async with CancelBatcher(client, linger=0.02) as batcher:  # type: ignore[arg-type]
        first = asyncio.ensure_future(batcher.submit("o1", line("o1-1")))
        await asyncio.sleep(0.01)
        assert batcher.lingering == 1 and client.sent == []
        second = asyncio.ensure_future(batcher.submit("o1", line("o1-2")))
        await first
        third = await batcher.submit("o1", line("o1-3"))
        await second
    assert client.lines_sent() == [["o1-1", "o1-2"], ["o1-3"]]
    assert third.request.cancelations[0].order_line_id == "o1-3"


async def test_max_lines_sends_a_full_batch_at_once() -> None:
    client = FakeClient()
    # A linger of an hour: had anything waited for it, the generous bounds below (not
    # timing assertions, a guard against hanging) would fail instead of the test hanging.
    batcher = CancelBatcher(client, linger=3600.0, max_lines=2)  # type: ignore[arg-type]
    async with batcher:
        full = await asyncio.wait_for(asyncio.gather(batcher.submit("o1", line("a")),
                                                     batcher.submit("o1", line("b"))), 60)
        assert full[0] is full[1]  # sent as soon as full, not after the linger
        rest = asyncio.ensure_future(batcher.submit("o1", line("c")))
        await asyncio.sleep(0)
        assert batcher.lingering == 1
        await asyncio.wait_for(batcher.close(), 60)  # closing sends it, without lingering
    assert rest.result().ok
    assert client.lines_sent() == [["a", "b"], ["c"]]


async def test_cancelling_a_submit_before_the_send_withdraws_its_line() -> None:
    client = FakeClient()
    async with CancelBatcher(client, linger=0.02) as batcher:  # type: ignore[arg-type]
        keep = asyncio.ensure_future(batcher.submit("o1", line("keep")))
        drop = asyncio.ensure_future(batcher.submit("o1", line("drop")))
        alone = asyncio.ensure_future(batcher.submit("o2", line("alone")))
        await asyncio.sleep(0)
        drop.cancel()
        alone.cancel()
        await asyncio.sleep(0)
        assert batcher.lingering == 1
        await keep
    assert client.lines_sent() == [["keep"]]


async def test_refusals_are_shared_outcomes_and_bad_lines_fail_alone() -> None:
    client = FakeClient()
    client.refuse = {"gone"}
    async with CancelBatcher(client, linger=0.01) as batcher:  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await batcher.submit("  ", line("x"))
        outcomes = await asyncio.gather(batcher.submit("gone", line("g1")),
                                        batcher.submit("gone", line("g2")))
    assert all(isinstance(o, CancelOutcome) and isinstance(o.error, NotFoundError)
               for o in outcomes)
    assert len(client.sent) == 1
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.submit("o1", line("late"))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="linger"):
        CancelBatcher(FakeClient(), linger=-1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_lines"):
        CancelBatcher(FakeClient(), max_lines=0)  # type: ignore[arg-type]


async def test_accepted_actions_are_handed_to_the_tracker() -> None:
    client = FakeClient()
    policy = PollPolicy(min_interval=0.0, interval=0.0, first_delay=0.0)
    tracker = ActionTracker(client, policy)  # type: ignore[arg-type]
    batcher = CancelBatcher(client, linger=0.0, tracker=tracker)  # type: ignore[arg-type]
    async with tracker, batcher:
        outcome = await batcher.submit("o1", line("o1-1"))
        assert outcome.accepted is not None
        status = await tracker.wait(outcome.accepted.action_id)
    assert status.state is ActionState.SUCCESS


async def test_against_the_simulator_three_concurrent_lines_make_one_post() -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(50.0, 100.0),
                             min_poll_interval=60.0, seed=0)
    async with Simulator(config) as sim:
        [order, other] = sim.generate_orders(n_orders=2, lines_per_order=(3, 3),
                                             wrong_state_ratio=0.0)
        client = MiraklConnectClient(auth=StaticToken(sim.token), base_url=sim.base_url,
                                     min_poll_interval=0.06,
                                     retry=RetryPolicy(base_delay=0.005))
        policy = PollPolicy(min_interval=0.06, interval=0.06, first_delay=0.06)

        async def worker(batcher: CancelBatcher, tracker: ActionTracker, order_id: str,
                         index: int) -> ActionState:
            source = sim.orders[order_id].lines[index]
            outcome = await batcher.submit(order_id, line(source.id, currency=source.currency,
                                                          price=source.price))
            assert outcome.accepted is not None, outcome.error
            return (await tracker.wait(outcome.accepted.action_id)).state

        async with client, ActionTracker(client, policy) as tracker, CancelBatcher(
                client, linger=0.05, tracker=tracker) as batcher:
            states = await asyncio.gather(
                *(worker(batcher, tracker, order.id, i) for i in range(3)),
                worker(batcher, tracker, other.id, 0))
        assert states == [ActionState.SUCCESS] * 4
        assert sim.stats.posts_per_order == {order.id: 1, other.id: 1}
        assert sim.stats.poll_violations == 0
        assert all(line.remaining_quantity == line.quantity - 1
                   for line in sim.orders[order.id].lines)


async def test_stopping_cancel_many_early_names_the_cancels_in_flight(
        caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.Event()

    class Slow:
        max_concurrency = 2

        async def cancel(self, request: CancelRequest, *, on_send: Any = None) -> ActionAccepted:
            if request.order_id == "FAST":
                return ActionAccepted("a-1", request.order_id)
            started.set()
            await asyncio.sleep(10)
            raise AssertionError("never answered")

    requests = [CancelRequest("FAST", [line("F-1")]), CancelRequest("SLOW", [line("S-1")])]
    outcomes = send_many(Slow(), requests)
    async with contextlib.aclosing(outcomes):
        first = await anext(outcomes)
        await started.wait()
    assert first.request.order_id == "FAST"
    assert any("SLOW" in r.getMessage() and "in flight" in r.getMessage()
               for r in caplog.records)
