"""Client hooks against the simulator on loopback: what each event carries, when it fires,
and that a failing hook never breaks an exchange."""

from __future__ import annotations

import logging
from typing import Any

import builders
import pytest

from mirakl_cancel import (
    ActionFinalEvent,
    ActionTrackedEvent,
    ActionTracker,
    Call,
    CallEndEvent,
    CallOutcome,
    Hooks,
    MiraklConnectClient,
    Observer,
    PollEvent,
    PollPolicy,
    RateLimitEvent,
    RequestEvent,
    ResponseEvent,
    RetryEvent,
    RetryPolicy,
    StaticToken,
    UncertainDeliveryError,
    UncertainEvent,
)
from mirakl_cancel.simulator import Fault, Simulator, SimulatorConfig

SCALE = 0.001
MIN = 60.0 * SCALE
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=10.0)


class Recorder(Observer):
    """Keeps every event, in order, as (name, event)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def of(self, name: str) -> list[Any]:
        return [event for kind, event in self.events if kind == name]

    def on_call_start(self, call: Call) -> None:
        self.events.append(("call_start", call))

    def on_request(self, event: RequestEvent) -> None:
        self.events.append(("request", event))

    def on_response(self, event: ResponseEvent) -> None:
        self.events.append(("response", event))

    def on_retry(self, event: RetryEvent) -> None:
        self.events.append(("retry", event))

    def on_rate_limit(self, event: RateLimitEvent) -> None:
        self.events.append(("rate_limit", event))

    def on_uncertain(self, event: UncertainEvent) -> None:
        self.events.append(("uncertain", event))

    def on_call_end(self, event: CallEndEvent) -> None:
        self.events.append(("call_end", event))

    def on_action_tracked(self, event: ActionTrackedEvent) -> None:
        self.events.append(("action_tracked", event))

    def on_poll(self, event: PollEvent) -> None:
        self.events.append(("poll", event))

    def on_action_final(self, event: ActionFinalEvent) -> None:
        self.events.append(("action_final", event))


def config() -> SimulatorConfig:
    return SimulatorConfig(time_scale=SCALE, processing_delay=(30.0, 60.0), seed=1)




def client_for(sim: Simulator, hooks: Hooks | None = None) -> MiraklConnectClient:
    return MiraklConnectClient(
        auth=StaticToken(sim.token), base_url=sim.base_url, min_poll_interval=MIN,
        retry=RetryPolicy(base_delay=0.001, max_delay=0.01), hooks=hooks)


async def test_a_cancel_tracked_to_its_end_reports_every_step() -> None:
    recorder = Recorder()
    async with Simulator(config()) as sim:
        sim.add_order(builders.sim_order("0001_H-A"))
        sim.inject(Fault.http(429, retry_after=10.0), route="cancel")
        sim.inject(Fault.http(503), route="status")
        async with client_for(sim, Hooks(recorder)) as client:
            accepted = await client.cancel(builders.request_for("0001_H-A"))
            async with ActionTracker(client, POLICY) as tracker:
                status = await tracker.wait(accepted.action_id)

    names = [name for name, _ in recorder.events]
    # The cancel: started, a 429 answer, a pause and a retry, then accepted.
    assert names[:7] == ["call_start", "request", "response", "rate_limit", "retry",
                         "request", "response"]
    call = recorder.of("call_start")[0]
    assert (call.route, call.method, call.order_id, call.lines) == \
        ("v2-cancelOrderLines", "POST", "0001_H-A", 1)
    first, second = recorder.of("response")[:2]
    assert (first.call, first.attempt, first.status) == (call, 1, 429)
    assert (second.attempt, second.status) == (2, 202)
    assert first.elapsed >= 0
    pause = recorder.of("rate_limit")[0]
    assert pause.seconds >= 0.01
    retry = recorder.of("retry")[0]
    assert retry.reason == "HTTP 429" and retry.delay >= 0.01
    end = recorder.of("call_end")[0]
    assert (end.outcome, end.status, end.call.action_id) == \
        (CallOutcome.OK, 202, accepted.action_id)

    # The tracker: tracked, every read with its lag, the 503 read, then final.
    assert recorder.of("action_tracked") == [ActionTrackedEvent(accepted.action_id, None)]
    polls = recorder.of("poll")
    assert [p.polls for p in polls] == list(range(len(polls)))
    assert all(p.lag >= 0 for p in polls)
    reads = [e for e in recorder.of("call_end") if e.call.route == "v2-getActionStatus"]
    assert reads[0].outcome is CallOutcome.ERROR and reads[0].status == 503
    assert reads[-1].outcome is CallOutcome.OK
    assert reads[-1].action_state == status.raw_status
    assert all(r.call.action_id == accepted.action_id for r in reads)
    final = recorder.of("action_final")
    assert len(final) == 1 and final[0].result.status == status
    assert names[-1] == "action_final"


async def test_an_uncertain_cancel_is_reported_once_and_not_resent() -> None:
    recorder = Recorder()
    async with Simulator(config()) as sim:
        sim.add_order(builders.sim_order("0001_H-A"))
        sim.inject(Fault.drop_after_read(), route="cancel")
        async with client_for(sim, Hooks(recorder)) as client:
            with pytest.raises(UncertainDeliveryError):
                await client.cancel(builders.request_for("0001_H-A"))
        assert sum(sim.stats.posts_per_order.values()) == 1
    assert len(recorder.of("request")) == 1
    (response,) = recorder.of("response")
    assert response.status is None and response.error
    (uncertain,) = recorder.of("uncertain")
    assert uncertain.call.order_id == "0001_H-A"
    assert "secret" not in uncertain.reason.lower()
    (end,) = recorder.of("call_end")
    assert end.outcome is CallOutcome.UNCERTAIN
    assert end.error == "UncertainDeliveryError"


async def test_a_failing_hook_is_logged_and_the_exchange_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("hook bug")

    seen: list[ResponseEvent] = []
    hooks = Hooks(on_request=broken, on_call_start=broken, on_call_end=[broken],
                  on_response=seen.append)
    async with Simulator(config()) as sim:
        sim.add_order(builders.sim_order("0001_H-A"))
        async with client_for(sim, hooks) as client:
            with caplog.at_level(logging.ERROR, logger="mirakl_cancel"):
                accepted = await client.cancel(builders.request_for("0001_H-A"))
    assert accepted.action_id
    assert [e.status for e in seen] == [202]
    failures = [r for r in caplog.records if "hook failed" in r.getMessage()]
    assert len(failures) == 3


async def test_hooks_added_and_removed_at_run_time() -> None:
    async with Simulator(config()) as sim:
        sim.add_order(builders.sim_order("0001_H-A"))
        async with client_for(sim) as client:
            assert not client.hooks.active
            ends: list[CallEndEvent] = []
            remove = client.hooks.on("call_end", ends.append)
            assert client.hooks.active and client.hooks.listens("call_end")
            accepted = await client.cancel(builders.request_for("0001_H-A"))
            remove()
            assert not client.hooks.active
            await client.get_action_status(accepted.action_id)
            assert [e.call.route for e in ends] == ["v2-cancelOrderLines"]
            orders_seen: list[Call] = []
            remove = client.hooks.add(type("Obs", (), {"on_call_start": orders_seen.append})())
            await client.list_orders(["0001_H-A"])
            remove()
            assert [c.route for c in orders_seen] == ["v2-listOrders"]


def test_hooks_registration_errors() -> None:
    hooks = Hooks()
    with pytest.raises(ValueError, match="unknown hook event"):
        hooks.on("nope", print)
    with pytest.raises(TypeError):
        hooks.on("retry", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="no on_<event>"):
        hooks.add(object())
    with pytest.raises(TypeError, match="no on_<event>"):
        hooks.add(Observer())  # overrides nothing: would listen to nothing
    remove = hooks.add(Recorder())
    assert hooks.active and "call_start" in repr(hooks)
    remove()
    remove()  # idempotent
    assert not hooks.active and repr(hooks) == "Hooks({})"
