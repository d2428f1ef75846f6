"""Reconciliation of uncertain cancels, against the simulator's order adjustments."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from builders import request

from mirakl_cancel import (
    CancelRequest,
    MiraklConnectClient,
    Money,
    RetryPolicy,
    StaticToken,
    UncertainDeliveryError,
)
from mirakl_cancel.models import Adjustment, AdjustmentType, Order, OrderLine
from mirakl_cancel.reconcile import (
    ReconcilePolicy,
    SentCancel,
    Verdict,
    reconcile,
    reconcile_orders,
)
from mirakl_cancel.simulator import (
    Fault,
    SimLine,
    SimOrder,
    Simulator,
    SimulatorConfig,
    ThreadedSimulator,
)

SETTLE = ReconcilePolicy(settle=0.3)


#: The price of every simulated line here (a cancel matches its adjustment by price too).
PRICE = "10.00"


#: Tests here run on the shipped plugin's threaded simulator; a few start their own.
Sim = Simulator | ThreadedSimulator


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    return SimulatorConfig(time_scale=0.001, processing_delay=(5, 20))


@pytest.fixture
def sim(mirakl_simulator: ThreadedSimulator) -> ThreadedSimulator:
    """The shipped `mirakl_simulator` fixture (our pytest plugin), with four orders."""
    for name in ("A", "B", "C", "D"):
        mirakl_simulator.add_order(SimOrder(id=name, lines=[
            SimLine(id=f"{name}-1", product_id=f"P{name}", quantity=5,
                    price=Decimal("10.00"))]))
    return mirakl_simulator


@pytest.fixture
async def client(sim: Sim) -> AsyncIterator[MiraklConnectClient]:
    async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                                   retry=RetryPolicy(max_attempts=2, base_delay=0.01),
                                   min_list_interval=0.06) as c:
        yield c


async def send_uncertain(client: MiraklConnectClient, req: CancelRequest) -> SentCancel:
    sent_at = datetime.now(timezone.utc)
    with pytest.raises(UncertainDeliveryError):
        await client.cancel(req)
    return SentCancel(req, sent_at)


async def test_processed_lost_answers_are_applied_and_others_not(
        sim: Sim, client: MiraklConnectClient) -> None:
    sim.inject(Fault.drop_after_read(), route="cancel")
    applied = await send_uncertain(client, request("A", price=PRICE))
    sim.inject(Fault.http(502), route="cancel")  # a gateway error: never reached the API
    lost = await send_uncertain(client, request("B", price=PRICE))
    await asyncio.sleep(0.35)  # the processing delay and the settling window pass

    verdicts = {r.cancel.request.order_id: r for r in await reconcile(
        client, [applied, lost], policy=SETTLE)}

    assert verdicts["A"].verdict is Verdict.APPLIED
    assert verdicts["A"].adjustments
    assert verdicts["B"].verdict is Verdict.NOT_APPLIED
    assert sim.stats.requests_by_route["orders"] == 1  # both orders in one listing call
    # Resending what was proven not applied cancels exactly once.
    await client.cancel(lost.request)
    assert sim.stats.duplicate_posts == 0


async def test_within_the_settling_window_it_stays_uncertain(
        sim: Sim, client: MiraklConnectClient) -> None:
    sim.inject(Fault.http(502), route="cancel")
    lost = await send_uncertain(client, request("C", price=PRICE))
    [verdict] = await reconcile(client, [lost], policy=ReconcilePolicy(settle=300))
    assert verdict.verdict is Verdict.UNCERTAIN
    assert "settling window" in verdict.reason


async def test_two_similar_cancels_for_one_adjustment_are_ambiguous(
        sim: Sim, client: MiraklConnectClient) -> None:
    sim.inject(Fault.drop_after_read(), route="cancel")
    first = await send_uncertain(client, request("D", price=PRICE))
    sim.inject(Fault.http(502), route="cancel")
    second = await send_uncertain(client, request("D", price=PRICE))
    await asyncio.sleep(0.35)
    verdicts = await reconcile(client, [first, second], policy=SETTLE)
    assert [v.verdict for v in verdicts] == [Verdict.UNCERTAIN, Verdict.UNCERTAIN]
    assert "similar" in verdicts[0].reason


def _order(*adjustments: Adjustment, line_id: str = "O-1") -> Order:
    return Order("O", "AWAITING_SHIPMENT",
                 (OrderLine(line_id, "P", 4, "AWAITING_SHIPMENT", adjustments),))


def _adjustment(at: datetime, qty: int = 1, reason: str = "OUT_OF_STOCK") -> Adjustment:
    return Adjustment("adj", AdjustmentType.CANCELATION, "CANCELATION", at, qty, reason,
                      Money("10.00", "EUR") if qty == 1 else None)


def test_a_different_recent_cancelation_is_never_taken_as_not_applied() -> None:
    sent = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cancel = SentCancel(request("O", price=PRICE), sent)
    later = sent + timedelta(hours=1)
    [verdict] = reconcile_orders([cancel], [_order(_adjustment(sent, qty=2))], now=later)
    assert verdict.verdict is Verdict.UNCERTAIN


def test_old_adjustments_do_not_count_and_missing_lines_are_uncertain() -> None:
    sent = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cancel = SentCancel(request("O", price=PRICE), sent)
    later = sent + timedelta(hours=1)
    old = _adjustment(sent - timedelta(hours=1))
    [verdict] = reconcile_orders([cancel], [_order(old)], now=later)
    assert verdict.verdict is Verdict.NOT_APPLIED
    [missing] = reconcile_orders([cancel], [_order(line_id="other")], now=later)
    assert missing.verdict is Verdict.UNCERTAIN
    assert "not found" in missing.reason
    [no_order] = reconcile_orders([cancel], [], now=later)
    assert no_order.verdict is Verdict.UNCERTAIN


async def test_nothing_to_reconcile_reads_nothing(client: MiraklConnectClient,
                                                  sim: Sim) -> None:
    assert await reconcile(client, []) == []
    assert "orders" not in sim.stats.requests_by_route


async def test_list_orders_batches_ids_by_100_and_spaces_calls() -> None:
    async with Simulator(SimulatorConfig(time_scale=0.001)) as sim:
        generated = sim.generate_orders(n_orders=250, lines_per_order=(1, 2))
        async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                                       min_list_interval=0.06) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            orders = await client.list_orders([o.id for o in generated] + [generated[0].id])
            elapsed = loop.time() - started
    assert sorted(o.id for o in orders) == sorted(o.id for o in generated)
    assert sim.stats.requests_by_route["orders"] == 3
    assert elapsed >= 2 * 0.06  # the API allows one listing call per minute: spaced
    assert sim.stats.list_violations == 0
    assert all(line.product_id for order in orders for line in order.lines)


async def test_cancel_and_track_reconciles_uncertain_cancels(sim: Sim) -> None:
    from mirakl_cancel import Outcome, PollPolicy, cancel_and_track

    policy = PollPolicy(min_interval=0.02, interval=0.02, first_delay=0.02, timeout=5)
    async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                                   retry=RetryPolicy(max_attempts=2, base_delay=0.01),
                                   min_poll_interval=0.02, min_list_interval=0.06,
                                   max_concurrency=1) as client:
        sim.inject(Fault.drop_after_read(), route="cancel")  # A: processed, answer lost
        sim.inject(Fault.http(502), route="cancel")          # B: never processed
        requests = [request("A", price=PRICE), request("B", price=PRICE), request("C", price=PRICE)]
        results = {r.order_id: r async for r in cancel_and_track(
            client, requests, policy, reconcile=ReconcilePolicy(settle=0.3))}
        assert results["A"].outcome is Outcome.SUCCEEDED
        assert results["A"].action_id is None
        assert "no action id" in results["A"].describe()
        assert results["B"].outcome is Outcome.NOT_APPLIED
        assert results["C"].outcome is Outcome.SUCCEEDED and results["C"].action_id
        assert results["B"].to_dict()["reconciliation"]["verdict"] == "NOT_APPLIED"

        # With resend, what was proven not applied is sent again, once.
        sim.inject(Fault.http(502), route="cancel")
        [again] = [r async for r in cancel_and_track(
            client, [request("D", price=PRICE)], policy,
            reconcile=ReconcilePolicy(settle=0.3, resend=True))]
    assert again.outcome is Outcome.SUCCEEDED and again.action_id
    assert sim.stats.duplicate_posts == 0


def test_an_undatable_cancelation_is_never_taken_as_not_applied() -> None:
    # Regression: an adjustment whose created_at could not be read was skipped as if
    # it predated the send, so an applied cancel could be judged NOT_APPLIED (and resent).
    sent = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cancel = SentCancel(request("O", price=PRICE), sent)
    undated = Adjustment("adj-x", AdjustmentType.CANCELATION, "CANCELATION", None, 1,
                         "OUT_OF_STOCK", Money("10.00", "EUR"))
    [verdict] = reconcile_orders([cancel], [_order(undated)], now=sent + timedelta(hours=1))
    assert verdict.verdict is Verdict.UNCERTAIN
    assert "adj-x" in verdict.reason
