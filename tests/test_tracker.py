"""ActionTracker on a manual clock with a fake client: every scheduling rule, exactly."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import random
import tracemalloc
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import pytest

from mirakl_cancel._http.pollguard import PollGuard
from mirakl_cancel.errors import (
    ActionTimeoutError,
    AuthenticationError,
    MiraklError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
)
from mirakl_cancel.models import ActionError, ActionState, ActionStatus
from mirakl_cancel.testing import ManualClock
from mirakl_cancel.tracker import ActionTracker, PollPolicy, TrackedResult, first_read_due

MIN = 60.0
POLICY = PollPolicy(min_interval=MIN, interval=300.0, first_delay=60.0)

Step = ActionState | ActionStatus | Exception | Callable[[], Any]


class FakeClient:
    """Answers status reads from a per-action script, on the manual clock, keeping
    the ceiling by the library's own poll guard on that clock.

    Every read is recorded as (start, end), so tests can check the one invariant that
    matters: the gap between the end of a read and the start of the next.
    """

    def __init__(self, clock: ManualClock, *, min_poll_interval: float = MIN,
                 latency: float = 0.0) -> None:
        self.clock = clock
        self.min_poll_interval = min_poll_interval
        self.latency = latency
        self.guard = PollGuard(min_poll_interval, clock=clock)
        self.scripts: dict[str, list[Step]] = {}
        self.done_at: dict[str, float] = {}
        self.polls: dict[str, list[tuple[float, float]]] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    def poll_ready_in(self, action_id: str) -> float:
        return self.guard.ready_in(action_id)

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        self.guard.record_ago(action_id, seconds_ago)

    def script(self, action_id: str, *steps: Step) -> None:
        self.scripts[action_id] = list(steps)

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        assert retry is False, "the tracker must make single attempts"
        start = self.clock.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await self.clock.sleep(self.latency)
            steps = self.scripts.get(action_id)
            step: Step
            if steps:
                step = steps.pop(0)
            elif action_id in self.done_at and start >= self.done_at[action_id]:
                step = ActionState.SUCCESS
            else:
                step = ActionState.PENDING
            if callable(step) and not isinstance(step, (ActionState, ActionStatus)):
                step = step()
            if isinstance(step, Exception):
                raise step
            if isinstance(step, ActionState):
                return ActionStatus(action_id, step, raw_status=step.value)
            assert isinstance(step, ActionStatus)
            return step
        finally:
            self.in_flight -= 1
            end = self.clock.monotonic()
            self.polls.setdefault(action_id, []).append((start, end))
            self.guard.record(action_id, end)

    def starts(self, action_id: str) -> list[float]:
        return [start for start, _ in self.polls.get(action_id, [])]

    def assert_spacing(self, floor: float) -> None:
        for action_id, polls in self.polls.items():
            for (_, end), (start, _) in itertools.pairwise(polls):
                assert start - end >= floor - 1e-9, (action_id, polls)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1000.0)


@pytest.fixture
def client(clock: ManualClock) -> FakeClient:
    return FakeClient(clock)


def rel(clock_start: float, times: list[float]) -> list[float]:
    return [round(t - clock_start, 6) for t in times]


# --- PollPolicy -----------------------------------------------------------------------


def test_policy_defaults_follow_the_api_guidance() -> None:
    policy = PollPolicy()
    assert (policy.min_interval, policy.interval, policy.first_delay, policy.timeout) == (
        60.0, 300.0, 60.0, None)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"min_interval": -1}, "min_interval"),
    ({"interval": 30.0}, "interval"),
    ({"first_delay": math.nan}, "first_delay"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": -5.0}, "timeout"),
    ({"interval": "300"}, "interval"),
    ({"min_interval": True}, "min_interval"),
])
def test_policy_refuses_bad_durations(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PollPolicy(**kwargs)
    assert field in info.value.fields


def test_tracker_refuses_bad_concurrency(client: FakeClient) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        ActionTracker(client, POLICY, concurrency=0)


# --- the schedule ---------------------------------------------------------------------


async def test_first_poll_after_first_delay_then_every_interval(
        clock: ManualClock, client: FakeClient) -> None:
    client.done_at["a1"] = 1000.0 + 500.0
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        future = tracker.track("a1", order_id="o1")
        await clock.advance(59.0)
        assert client.starts("a1") == []
        await clock.run_until(future.done)
        assert future.result().state is ActionState.SUCCESS
    assert rel(1000.0, client.starts("a1")) == [60.0, 360.0, 660.0]


async def test_effective_min_interval_is_the_larger_of_policy_and_client(
        clock: ManualClock) -> None:
    client = FakeClient(clock, min_poll_interval=120.0)
    policy = PollPolicy(min_interval=60.0, interval=60.0, first_delay=10.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        assert tracker.min_interval == 120.0
        tracker.add("a1")
        await clock.advance(400.0)
        await tracker.aclose()
    assert rel(1000.0, client.starts("a1")) == [10.0, 130.0, 250.0, 370.0]


async def test_interval_is_measured_from_the_end_of_the_previous_poll(clock: ManualClock) -> None:
    client = FakeClient(clock, latency=7.0)
    policy = PollPolicy(min_interval=60.0, interval=60.0, first_delay=0.0)
    tracker = ActionTracker(client, policy, clock=clock)
    tracker.add("slow")
    await clock.advance(200.0)
    await tracker.close(drain=False)
    assert rel(1000.0, client.starts("slow")) == [0.0, 67.0, 134.0]
    client.assert_spacing(60.0)


async def test_many_actions_due_at_once_keep_polls_bounded(clock: ManualClock) -> None:
    client = FakeClient(clock, latency=1.0)
    for i in range(200):
        client.done_at[f"a{i}"] = 1000.0  # done at their first poll
    tasks_seen = 0
    async with ActionTracker(client, POLICY, concurrency=5, clock=clock) as tracker:
        futures = [tracker.track(f"a{i}") for i in range(200)]
        assert len(asyncio.all_tasks()) <= 2  # the test and the scheduler: no task per action
        while not all(f.done() for f in futures):
            await clock.advance(0.5)
            tasks_seen = max(tasks_seen, len(asyncio.all_tasks()))
    assert client.max_in_flight == 5
    assert tasks_seen <= 5 + 2
    assert all(len(p) == 1 for p in client.polls.values())
    starts = sorted(start for p in client.polls.values() for start, _ in p)
    assert starts[0] == pytest.approx(1060.0)
    assert starts[-1] == pytest.approx(1060.0 + 200 / 5 - 1)


async def test_a_429_waits_for_the_longer_of_retry_after_and_min_interval(
        clock: ManualClock, client: FakeClient) -> None:
    client.script("long", RateLimitError(429, "TOO_MANY_REQUEST", "slow down", retry_after=200.0),
                  ActionState.SUCCESS)
    client.script("short", RateLimitError(429, None, "slow down", retry_after=5.0),
                  ActionState.SUCCESS)
    client.script("none", RateLimitError(429, None, "slow down"), ActionState.SUCCESS)
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        futures = [tracker.track(a) for a in ("long", "short", "none")]
        await clock.run_until(lambda: all(f.done() for f in futures))
        assert tracker.stats.rate_limited == 3
    assert rel(1000.0, client.starts("long")) == [60.0, 260.0]
    assert rel(1000.0, client.starts("short")) == [60.0, 120.0]
    assert rel(1000.0, client.starts("none")) == [60.0, 120.0]


async def test_server_and_transport_errors_back_off_from_min_interval_to_interval(
        clock: ManualClock, client: FakeClient) -> None:
    boom = ServerError(503, None, "unavailable")
    lost = TransportError("connection reset")
    client.script("a1", boom, lost, boom, boom, boom, ActionState.PENDING, boom,
                  ActionState.SUCCESS)
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        future = tracker.track("a1")
        await clock.run_until(future.done, step=10.0)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(client.starts("a1"))]
    # 60, 120, 240, then capped at the interval; a good answer resets the back-off.
    assert gaps == [60.0, 120.0, 240.0, 300.0, 300.0, 300.0, 60.0]
    assert future.result().state is ActionState.SUCCESS


async def test_unknown_404_and_refusals_end_tracking_with_the_error(
        clock: ManualClock, client: FakeClient) -> None:
    client.script("gone", NotFoundError(404, "DATA_NOT_FOUND", "no such action"))
    client.script("denied", AuthenticationError(401, None, "bad token"))
    client.script("bug", lambda: RuntimeError("oops"))
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        waits = {a: asyncio.ensure_future(tracker.wait(a)) for a in ("gone", "denied", "bug")}
        await clock.run_until(lambda: all(w.done() for w in waits.values()))
    with pytest.raises(NotFoundError):
        waits["gone"].result()
    with pytest.raises(AuthenticationError):
        waits["denied"].result()
    with pytest.raises(MiraklError, match="oops"):
        waits["bug"].result()
    assert all(len(client.starts(a)) == 1 for a in waits)


async def test_unknown_states_keep_polling(clock: ManualClock, client: FakeClient) -> None:
    odd = ActionStatus("a1", ActionState.UNKNOWN, raw_status="QUEUED")
    failed = ActionStatus("a1", ActionState.FAILED, errors=(ActionError("ORDER_IN_WRONG_STATE"),),
                          raw_status="FAILED")
    client.script("a1", odd, odd, ActionState.PENDING, failed)
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        future = tracker.track("a1")
        await clock.run_until(future.done, step=30.0)
    assert future.result() == failed
    assert len(client.starts("a1")) == 4


async def test_timeout_resolves_as_timed_out(clock: ManualClock, client: FakeClient) -> None:
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0, timeout=1000.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        results: list[TrackedResult] = []

        async def collect() -> None:
            async for result in tracker.as_completed():
                results.append(result)

        future = tracker.track("never")
        collector = asyncio.ensure_future(collect())
        await clock.run_until(future.done, step=10.0)
        await collector
    with pytest.raises(ActionTimeoutError) as info:
        future.result()
    assert info.value.action_id == "never"
    # Polled at 60, 360, 660, 960; given up at 1000 exactly, not at the next poll.
    assert rel(1000.0, client.starts("never")) == [60.0, 360.0, 660.0, 960.0]
    assert clock.monotonic() - 1000.0 < 1010.0
    [result] = results
    assert result.timed_out and result.status is None and result.polls == 4
    assert result.elapsed == pytest.approx(1000.0)
    assert tracker.stats.timed_out == 1


async def test_an_action_is_read_once_before_it_can_time_out(
        clock: ManualClock, client: FakeClient) -> None:
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0, timeout=10.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        future = tracker.track("a1")
        await clock.run_until(future.done, step=5.0)
    assert isinstance(future.exception(), ActionTimeoutError)
    assert rel(1000.0, client.starts("a1")) == [60.0]


async def test_the_spacing_invariant_holds_under_random_failures(clock: ManualClock) -> None:
    rng = random.Random(7)
    client = FakeClient(clock, latency=3.0)
    policy = PollPolicy(min_interval=60.0, interval=90.0, first_delay=5.0, timeout=3000.0)
    for i in range(300):
        steps: list[Step] = []
        for _ in range(rng.randint(0, 6)):
            steps.append(rng.choice([
                ActionState.PENDING,
                RateLimitError(429, None, "slow", retry_after=rng.choice([None, 1.0, 150.0])),
                ServerError(502, None, "bad gateway"),
                TransportError("reset"),
                ActionStatus(f"a{i}", ActionState.UNKNOWN, raw_status="NEW"),
            ]))
        steps.append(rng.choice([ActionState.SUCCESS, ActionState.FAILED, ActionState.PENDING]))
        client.script(f"a{i}", *steps)
    async with ActionTracker(client, policy, concurrency=3, clock=clock) as tracker:
        for i in range(300):
            tracker.add(f"a{i}")
            if i % 50 == 0:
                await clock.advance(rng.uniform(0, 40))
        await clock.run_until(lambda: tracker.pending == 0, step=7.0)
    client.assert_spacing(60.0)
    assert client.max_in_flight <= 3
    assert sum(len(p) for p in client.polls.values()) == tracker.stats.polls


# --- the API --------------------------------------------------------------------------


async def test_track_is_idempotent_and_wait_shields(clock: ManualClock, client: FakeClient) -> None:
    client.done_at["a1"] = 0.0
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        first = tracker.track("a1")
        assert tracker.track("a1") is first
        tracker.add("a1")
        assert tracker.pending == 1
        impatient = asyncio.ensure_future(tracker.wait("a1"))
        await clock.settle()
        impatient.cancel()
        await clock.settle()
        assert not first.done()
        await clock.run_until(first.done)
        assert first.result().state is ActionState.SUCCESS
    assert len(client.starts("a1")) == 1
    with pytest.raises(ValidationError):
        tracker.track("")


async def test_a_future_cancelled_by_its_waiter_does_not_stop_tracking(
        clock: ManualClock, client: FakeClient) -> None:
    client.done_at["a1"] = 0.0
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        tracker.track("a1").cancel()
        again = tracker.track("a1")
        assert not again.cancelled()
        await clock.run_until(again.done)
    assert again.result().state is ActionState.SUCCESS


async def test_track_respects_a_read_made_directly_through_the_client(
        clock: ManualClock, client: FakeClient) -> None:
    await clock.advance(50.0)
    client.guard.record("a1")  # a direct read ended at +50
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=0.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        tracker.add("a1")
        await clock.advance(150.0)
        await tracker.aclose()
    assert rel(1000.0, client.starts("a1")) == [110.0]


async def test_last_polled_at_delays_the_first_read(clock: ManualClock, client: FakeClient) -> None:
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=0.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        tracker.add("epoch", last_polled_at=clock.wall() - 20.0)
        tracker.add("aware", last_polled_at=datetime.fromtimestamp(clock.wall() - 50.0,
                                                                    tz=timezone.utc))
        with pytest.raises(ValueError, match="timezone-aware"):
            tracker.add("naive", last_polled_at=datetime(2024, 1, 1))
        await clock.advance(100.0)
        await tracker.aclose()
    assert rel(1000.0, client.starts("epoch")) == [40.0]
    assert rel(1000.0, client.starts("aware")) == pytest.approx([10.0])


async def test_accepted_at_starts_the_first_delay_at_the_acceptance(
        clock: ManualClock, client: FakeClient) -> None:
    """A resumed job's action is read `first_delay` after it was accepted (not after it
    is tracked again), never within the ceiling of its last contact, and never before
    now (an acceptance "in the future" counts as just made)."""
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=120.0)
    async with ActionTracker(client, policy, clock=clock) as tracker:
        tracker.add("resumed", accepted_at=clock.wall() - 100.0)
        tracker.add("long-ago", accepted_at=clock.wall() - 3600.0,
                    last_polled_at=clock.wall() - 30.0)
        tracker.track("aware", accepted_at=datetime.fromtimestamp(clock.wall() - 90.0,
                                                                   tz=timezone.utc))
        tracker.add("future", accepted_at=clock.wall() + 500.0)
        tracker.add("fresh")
        with pytest.raises(ValueError, match="accepted_at must be timezone-aware"):
            tracker.add("naive", accepted_at=datetime(2024, 1, 1))
        await clock.advance(200.0)
        await tracker.aclose()
    assert rel(1000.0, client.starts("resumed")) == [20.0]
    assert rel(1000.0, client.starts("long-ago")) == [30.0]
    assert rel(1000.0, client.starts("aware")) == pytest.approx([30.0])
    assert rel(1000.0, client.starts("future")) == [120.0]
    assert rel(1000.0, client.starts("fresh")) == [120.0]


def test_first_read_due_is_one_rule() -> None:
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=30.0)
    assert first_read_due(policy, 1000.0) == 1030.0
    assert first_read_due(policy, 1000.0, accepted_at=900.0) == 930.0
    assert first_read_due(policy, 1000.0, accepted_at=900.0, last_read=990.0) == 1050.0
    assert first_read_due(policy, 1000.0, last_read=990.0, gap=100.0) == 1090.0
    assert first_read_due(policy, 1000.0, accepted_at=2000.0) == 1030.0


async def test_as_completed_includes_actions_tracked_while_iterating(
        clock: ManualClock, client: FakeClient) -> None:
    for name, at in (("a", 0.0), ("b", 0.0), ("c", 0.0)):
        client.done_at[name] = at
    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        tracker.add("a", order_id="o-a")
        seen: list[str] = []

        async def consume() -> None:
            async for result in tracker.as_completed():
                seen.append(result.action_id)
                assert result.ok and result.state is ActionState.SUCCESS
                assert result.result().id == result.action_id
                if result.action_id == "a":
                    tracker.add("b")
                    tracker.add("c")

        task = asyncio.ensure_future(consume())
        await clock.run_until(task.done, step=10.0)
    assert seen == ["a", "b", "c"]


async def test_as_completed_without_pending_ends_at_once_but_follow_waits_for_close(
        clock: ManualClock, client: FakeClient) -> None:
    tracker = ActionTracker(client, POLICY, clock=clock)
    assert [r async for r in tracker.as_completed()] == []
    client.done_at["late"] = 0.0
    seen: list[TrackedResult] = []

    async def follow() -> None:
        async for result in tracker.as_completed(follow=True):
            seen.append(result)

    task = asyncio.ensure_future(follow())
    await clock.advance(100.0)
    assert not task.done()
    tracker.add("late")
    await clock.advance(100.0)
    assert [r.action_id for r in seen] == ["late"]
    assert not task.done()
    await tracker.close(drain=True)
    await clock.settle()
    assert task.done()


async def test_close_drain_waits_for_every_action(clock: ManualClock, client: FakeClient) -> None:
    client.done_at["a1"] = 1000.0 + 300.0
    tracker = ActionTracker(client, POLICY, clock=clock)
    future = tracker.track("a1")
    closing = asyncio.ensure_future(tracker.close(drain=True))
    await clock.advance(100.0)
    assert not closing.done()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.track("new")
    assert tracker.track("a1") is future  # still possible to wait for it while draining
    await clock.run_until(closing.done, step=20.0)
    assert future.result().state is ActionState.SUCCESS
    assert tracker.pending == 0


async def test_close_cancel_cancels_futures_and_keeps_the_actions_exportable(
        clock: ManualClock) -> None:
    client = FakeClient(clock, latency=5.0)
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0)
    tracker = ActionTracker(client, policy, clock=clock)
    future = tracker.track("busy", order_id="o1")
    idle = tracker.track("idle")
    await clock.advance(62.0)  # "busy" and "idle" both have a read in flight
    assert tracker.in_flight == 2
    client.polls.clear()
    await tracker.close(drain=False)
    assert future.cancelled() and idle.cancelled()
    assert tracker.pending == 2 and tracker.in_flight == 0
    exported = tracker.export_pending()
    by_id = {item["action_id"]: item for item in exported["actions"]}
    # The interrupted reads count as having ended at the cancellation.
    assert by_id["busy"]["last_polled_at"] == pytest.approx(clock.wall())
    assert by_id["busy"]["order_id"] == "o1"
    assert by_id["busy"]["tracked_at"] == pytest.approx(clock.wall() - 62.0)
    with pytest.raises(RuntimeError):
        tracker.add("x")
    await tracker.close(drain=True)  # closing twice is harmless


async def test_leaving_the_block_with_an_error_cancels(clock: ManualClock,
                                                       client: FakeClient) -> None:
    tracker = ActionTracker(client, POLICY, clock=clock)

    async def fail() -> None:
        async with tracker:
            tracker.track("a1")
            raise KeyError("boom")

    future = tracker.track("a1")
    with pytest.raises(KeyError):
        await fail()
    assert future.cancelled()
    assert client.polls == {}


async def test_resume_in_another_tracker_keeps_the_interval(clock: ManualClock,
                                                            tmp_path: Any) -> None:
    first = FakeClient(clock, latency=2.0)
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=10.0)
    tracker = ActionTracker(first, policy, clock=clock)
    tracker.add("a1", order_id="o1")
    tracker.add("a2")
    await clock.advance(13.0)  # both read once, ended at +12
    tracker.add("fresh")
    assert tracker.dump(tmp_path / "pending.json") == 3
    await tracker.close(drain=False)
    data = json.loads((tmp_path / "pending.json").read_text())
    assert data["version"] == 1 and data["min_interval"] == 60.0
    last_wall = {item["action_id"]: item["last_polled_at"] for item in data["actions"]}
    assert last_wall["a1"] == pytest.approx(clock.wall() - 1.0)
    assert last_wall["fresh"] is None

    # Another process: its monotonic clock has another origin; 20 s of wall time later.
    clock2 = ManualClock(start=50.0, wall_start=clock.wall() + 20.0)
    second = FakeClient(clock2, min_poll_interval=30.0)
    resumed = ActionTracker(second, PollPolicy(min_interval=30.0, interval=30.0,
                                               first_delay=0.0), clock=clock2)
    assert resumed.load(tmp_path / "pending.json") == 3
    assert resumed.import_pending(data) == 0  # already tracked
    # The guard knows about the read made by the other process (in its own clock).
    assert second.guard.ready_at("a1") - second.guard.min_interval == pytest.approx(50.0 - 21.0)
    await clock2.advance(100.0)
    await resumed.aclose()
    # Exported min interval (60) wins over the new, smaller one: first read 60 s after
    # the last one, i.e. 39 s into the new process; later reads use the new pace.
    assert rel(50.0, second.starts("a1")) == pytest.approx([39.0, 69.0, 99.0])
    assert rel(50.0, second.starts("fresh"))[0] == pytest.approx(0.0)


async def test_import_refuses_malformed_data_without_importing_any(
        clock: ManualClock, client: FakeClient) -> None:
    tracker = ActionTracker(client, POLICY, clock=clock)
    good = {"action_id": "ok", "order_id": None, "last_polled_at": None, "tracked_at": None}
    for bad, problem in (
        ({"version": 2, "actions": []}, "version"),
        ({"version": 1, "actions": "nope"}, "actions"),
        ({"version": 1, "actions": [good, {"action_id": ""}]}, r"actions\[1\].action_id"),
        ({"version": 1, "actions": [good, {"action_id": "x", "last_polled_at": "yesterday"}]},
         "last_polled_at"),
        ({"version": 1, "min_interval": "60", "actions": []}, "min_interval"),
    ):
        with pytest.raises(ValueError, match=problem):
            tracker.import_pending(bad)
    assert tracker.pending == 0
    await tracker.aclose()


async def test_a_resumed_action_is_read_before_it_can_time_out(clock: ManualClock,
                                                               client: FakeClient) -> None:
    policy = PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0, timeout=600.0)
    data = {"version": 1, "min_interval": 60.0, "actions": [
        {"action_id": "old", "order_id": None, "tracked_at": clock.wall() - 10_000.0,
         "last_polled_at": clock.wall() - 9_000.0}]}
    async with ActionTracker(client, policy, clock=clock) as tracker:
        tracker.import_pending(data)
        future = tracker.track("old")
        await clock.run_until(future.done)
    assert isinstance(future.exception(), ActionTimeoutError)
    assert len(client.starts("old")) == 1


async def test_a_listener_error_does_not_break_tracking(clock: ManualClock,
                                                        client: FakeClient) -> None:
    client.done_at["a1"] = 0.0

    def broken(result: TrackedResult) -> None:
        raise RuntimeError("listener bug")

    async with ActionTracker(client, POLICY, clock=clock) as tracker:
        unsubscribe = tracker.subscribe(broken)
        future = tracker.track("a1")
        await clock.run_until(future.done)
        unsubscribe()
    assert future.result().state is ActionState.SUCCESS


# --- footprint ------------------------------------------------------------------------


async def test_memory_per_pending_action_stays_under_one_kilobyte() -> None:
    clock = ManualClock()
    client = FakeClient(clock)
    ids = [f"{i:08x}-4b1e-4c6a-9d2e-3f5a6b7c8d9e" for i in range(100_000)]
    tracker = ActionTracker(client, POLICY, clock=clock)
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for index, action_id in enumerate(ids):
            tracker.track(action_id, order_id=None if index % 2 else "0001_3200000-A")
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_action = (after - before) / len(ids)
    assert tracker.pending == 100_000
    assert len(asyncio.all_tasks()) <= 2
    print(f"{per_action:.0f} bytes per pending action")
    assert per_action <= 1024, f"{per_action:.0f} bytes per pending action"
    await tracker.aclose()


async def test_cancelling_a_drain_stops_everything(clock: ManualClock, client: FakeClient) -> None:
    tracker = ActionTracker(client, POLICY, clock=clock)
    future = tracker.track("a1")
    closing = asyncio.ensure_future(tracker.close(drain=True))
    await clock.advance(10.0)
    closing.cancel()
    await clock.settle()
    assert closing.cancelled() and future.cancelled()
    assert tracker.pending == 1  # still exportable


# --- the read rules, one table for this tracker and the fleet's -------------------------

_RULES_POLICY = PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0,
                           max_retry_after=900.0)
_BOOM = RuntimeError("boom")


@pytest.mark.parametrize(("status", "error", "failures", "delay", "failures_after", "ends_with"), [
    (ActionState.SUCCESS, None, 3, None, 0, "status"),
    (ActionState.FAILED, None, 0, None, 0, "status"),
    (ActionState.PENDING, None, 4, 300.0, 0, None),
    (ActionState.UNKNOWN, None, 0, 300.0, 0, None),  # a state added later: still polling
    (None, RateLimitError(429, None, "slow down", retry_after=120.0), 2, 120.0, 2, None),
    (None, RateLimitError(429, None, "slow down", retry_after=5.0), 0, 60.0, 0, None),
    (None, RateLimitError(429, None, "slow down"), 0, 60.0, 0, None),
    (None, RateLimitError(429, None, "no", retry_after=901.0), 0, None, 0, "error"),
    (None, RateLimitError(429, None, "no", retry_after=math.nan), 0, None, 0, "error"),
    (None, NotFoundError(404, None, "unknown"), 0, None, 0, "error"),
    (None, ServerError(503, None, "down"), 0, 60.0, 1, None),
    (None, TransportError("reset"), 1, 120.0, 2, None),
    (None, ServerError(500, None, "down"), 2, 240.0, 3, None),
    (None, ServerError(500, None, "down"), 3, 300.0, 4, None),  # capped at the interval
    (None, ServerError(500, None, "down"), 10_000, 300.0, 10_001, None),  # no overflow
    (None, AuthenticationError(401, None, "who"), 0, None, 0, "error"),
    (None, ValidationError([]), 0, None, 0, "error"),
    (None, _BOOM, 0, None, 0, "wrapped"),
])
async def test_the_read_rules_as_a_table(
    status: ActionState | None, error: Exception | None, failures: int,
    delay: float | None, failures_after: int, ends_with: str | None,
) -> None:
    """`_judge_read` is the one home of what a read means (the shared tracker calls it
    too): every kind of answer, and what it does to the schedule."""
    clock = ManualClock()
    tracker = ActionTracker(FakeClient(clock), _RULES_POLICY, clock=clock)
    answer = None if status is None else ActionStatus("a-1", status, raw_status="X")
    verdict = tracker._judge_read("a-1", "o-1", 1, failures, answer, error)
    assert verdict.delay == delay
    assert verdict.failures == failures_after
    if ends_with == "status":
        assert verdict.status is answer and verdict.error is None
    elif ends_with == "error":
        assert verdict.status is None and verdict.error is error
    elif ends_with == "wrapped":
        assert isinstance(verdict.error, MiraklError) and verdict.error.__cause__ is error
    else:
        assert verdict.status is None and verdict.error is None
    assert tracker.stats.poll_errors == (0 if error is None else 1)
