"""The blocking client, from plain threads, against the simulator on its own thread."""

from __future__ import annotations

import contextlib
import threading
from decimal import Decimal

import pytest

from mirakl_cancel import (
    ActionState,
    Cancelation,
    CancelReason,
    CancelRequest,
    MiraklError,
    Money,
    Outcome,
    PollPolicy,
    StaticToken,
    ValidationError,
)
from mirakl_cancel.errors import SyncClientInLoopError
from mirakl_cancel.simulator import SimOrder, SimulatorConfig, ThreadedSimulator
from mirakl_cancel.sync import MiraklConnectClient

SCALE = 0.001
MIN = 60.0 * SCALE
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=30.0)


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    return SimulatorConfig(time_scale=SCALE, processing_delay=(30.0, 90.0), seed=3)


def cancel_of(order: SimOrder) -> CancelRequest:
    line = order.lines[0]
    return CancelRequest(order.id, [Cancelation(
        order_line_id=line.id, quantity=1, reason=CancelReason.OUT_OF_STOCK,
        price=Money(line.price, line.currency), shipping_price=Money(Decimal(0), line.currency))])


def client_for(sim: ThreadedSimulator) -> MiraklConnectClient:
    return MiraklConnectClient(auth=StaticToken(sim.token), base_url=sim.base_url,
                               min_poll_interval=MIN)


def test_many_threads_share_one_client_politely(mirakl_simulator: ThreadedSimulator) -> None:
    sim = mirakl_simulator
    orders = sim.generate_orders(n_orders=24, lines_per_order=(1, 2), wrong_state_ratio=0.0)
    states: dict[str, ActionState] = {}
    failures: list[BaseException] = []
    with client_for(sim) as client:
        def work(chunk: list[SimOrder]) -> None:
            try:
                for order in chunk:
                    accepted = client.cancel(cancel_of(order))
                    # Two reads straight away: the second waits for the ceiling.
                    client.get_action_status(accepted.action_id)
                    states[order.id] = client.wait(accepted.action_id, POLICY).state
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(orders[i::6],)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.stats.requests >= 2 * len(orders)
    assert not failures, failures
    assert set(states.values()) == {ActionState.SUCCESS} and len(states) == len(orders)
    assert sim.stats.poll_violations == 0
    assert sim.stats.duplicate_posts == 0


def test_iterators_cancel_and_track_and_cancel_many(mirakl_simulator: ThreadedSimulator) -> None:
    sim = mirakl_simulator
    orders = sim.generate_orders(n_orders=10, lines_per_order=(1, 1), wrong_state_ratio=0.0)
    with client_for(sim) as client:
        results = list(client.cancel_and_track([cancel_of(o) for o in orders[:6]], POLICY))
        assert sorted(r.order_id for r in results) == sorted(o.id for o in orders[:6])
        assert {r.outcome for r in results} == {Outcome.SUCCEEDED}

        outcomes = client.cancel_many([cancel_of(o) for o in orders[6:]])
        first = next(outcomes)
        assert first.accepted is not None
        with contextlib.closing(outcomes):
            rest = list(outcomes)
        assert len(rest) == 3
        assert next(outcomes, None) is None  # exhausted stays exhausted

        # Closing an iterator early stops it; the client stays usable.
        early = client.cancel_and_track([cancel_of(o) for o in orders[6:]], POLICY)
        early.close()
        assert list(early) == []
        assert client.list_orders([orders[0].id])[0].id == orders[0].id


def test_errors_cross_the_thread_and_nothing_is_sent(mirakl_simulator: ThreadedSimulator) -> None:
    with client_for(mirakl_simulator) as client:
        with pytest.raises(ValidationError, match="quantity"):
            client.cancel_order_lines("0001_X-A", [{"order_line_id": "l", "quantity": -1,
                                                    "reason": "OUT_OF_STOCK"}])
        assert client.stats.requests == 0
        assert "sync.MiraklConnectClient" in repr(client) and client.hooks is not None
        assert client.async_client.base_url == mirakl_simulator.base_url
    client.close()  # idempotent
    with pytest.raises(MiraklError, match="closed"):
        client.get_action_status("a")
    with pytest.raises(MiraklError, match="closed"):
        client.cancel_many([])


async def test_refused_inside_a_running_loop(mirakl_simulator: ThreadedSimulator) -> None:
    client = client_for(mirakl_simulator)
    try:
        with pytest.raises(SyncClientInLoopError, match="async"):
            client.get_action_status("a")
        with pytest.raises(SyncClientInLoopError):
            client.cancel_and_track([], POLICY)
        assert issubclass(SyncClientInLoopError, MiraklError)
        with pytest.raises(SyncClientInLoopError):
            client.close()
    finally:
        threading.Thread(target=client.close).start()


def test_a_hook_calling_back_into_the_client_is_refused(
        mirakl_simulator: ThreadedSimulator) -> None:
    seen: list[BaseException] = []
    with client_for(mirakl_simulator) as client:
        def reenter(event: object) -> None:
            try:
                client.get_action_status("x")
            except MiraklError as exc:
                seen.append(exc)

        client.hooks.on("call_start", reenter)
        client.list_orders(["0001_X-A"])
    assert len(seen) == 1 and isinstance(seen[0], SyncClientInLoopError)


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(TypeError):
        MiraklConnectClient(auth="not an auth")
    assert threading.active_count() >= 1
