"""`mirakl_cancel.testing`: the doubles users get for their own tests, used as they would."""

from __future__ import annotations

import asyncio

import pytest

from mirakl_cancel import (
    ActionState,
    ActionStatus,
    ActionTracker,
    NotFoundError,
    PollPolicy,
    ServerError,
)
from mirakl_cancel.testing import FakeStatusClient, ManualClock


async def test_the_readme_example_runs_an_hour_of_polling_instantly() -> None:
    clock = ManualClock()
    client = FakeStatusClient({"a-1": ["PENDING", "PENDING", "SUCCESS"]}, clock=clock)
    async with ActionTracker(client, PollPolicy()) as tracker:  # the client's clock
        task = asyncio.create_task(tracker.wait("a-1"))
        await clock.run_until(task.done, step=60)
    assert task.result().state is ActionState.SUCCESS
    assert client.reads["a-1"] == 3
    assert client.ceiling_waits == 0  # the tracker never asked too early


async def test_a_read_too_soon_waits_for_the_ceiling_on_the_fake_clock() -> None:
    clock = ManualClock(start=0.0)
    client = FakeStatusClient({"a": ["PENDING"]}, clock=clock)
    assert (await client.get_action_status("a")).state is ActionState.PENDING
    assert client.poll_ready_in("a") == 60.0
    second = asyncio.create_task(client.get_action_status("a"))
    await clock.advance(59.0)
    assert not second.done()  # like MiraklConnectClient: it waits, it does not break the rule
    await clock.advance(1.0)
    assert (await second).state is ActionState.PENDING
    assert client.ceiling_waits == 1
    assert client.reads == {"a": 2}


async def test_answers_states_raw_values_statuses_and_errors() -> None:
    clock = ManualClock(start=0.0)
    final = ActionStatus("a", ActionState.FAILED, raw_status="FAILED")
    client = FakeStatusClient(clock=clock, min_poll_interval=0.0)
    client.script("a", ActionState.PENDING, "ON_HOLD", ServerError(503, None, "busy"), final)
    assert (await client.get_action_status("a")).state is ActionState.PENDING
    odd = await client.get_action_status("a")
    assert (odd.state, odd.raw_status) == (ActionState.UNKNOWN, "ON_HOLD")  # kept raw
    with pytest.raises(ServerError):
        await client.get_action_status("a")
    assert await client.get_action_status("a") is final
    assert await client.get_action_status("a") is final  # the last answer repeats
    with pytest.raises(NotFoundError):
        await client.get_action_status("nobody")


async def test_reads_made_elsewhere_count() -> None:
    clock = ManualClock(start=100.0)
    client = FakeStatusClient({"a": ["SUCCESS"]}, clock=clock)
    client.record_poll("a", seconds_ago=45.0)
    assert client.poll_ready_in("a") == 15.0


def test_bad_scripts_are_refused() -> None:
    client = FakeStatusClient()
    with pytest.raises(ValueError, match="at least one"):
        client.script("a")
    with pytest.raises(TypeError, match="not an answer"):
        client.script("a", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        FakeStatusClient(min_poll_interval=-1)
    assert client.min_poll_interval == 60.0


def test_doubles_present_as_the_testing_module() -> None:
    assert FakeStatusClient.__module__ == ManualClock.__module__ == "mirakl_cancel.testing"


async def test_real_time_by_default() -> None:
    client = FakeStatusClient({"a": ["SUCCESS"]}, min_poll_interval=0.0)
    assert (await client.get_action_status("a")).state is ActionState.SUCCESS


# --- ManualClock: the one clock of the library's time rules ------------------------------


async def test_an_auto_advancing_clock_jumps_by_each_sleep_and_fires_what_falls_due() -> None:
    clock = ManualClock(start=0.0, auto_advance=True)
    fired: list[float] = []
    clock.call_at(5.0, lambda: fired.append(clock.monotonic()))
    clock.call_at(50.0, lambda: fired.append(-1.0)).cancel()
    await clock.sleep(10.0)
    await clock.settle()
    assert clock.monotonic() == 10.0 and fired == [10.0]  # due on the way: run soon after
    await clock.sleep(100.0)
    await clock.settle()
    assert fired == [10.0] and clock.sleeps == [10.0, 100.0]


async def test_next_due_waits_for_a_sleeper_and_a_cancelled_sleep_leaves_no_timer() -> None:
    clock = ManualClock(start=0.0)
    sleeper = asyncio.create_task(clock.sleep(30.0))
    assert await clock.next_due() == 30.0
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    with pytest.raises(AssertionError, match="nothing waited on the clock"):
        await clock.next_due(real_timeout=0.05)
    due = asyncio.create_task(clock.next_due())
    await asyncio.sleep(0.01)  # next_due is waiting: nothing sleeps on the clock yet
    late = asyncio.create_task(clock.sleep(2.0))
    assert await due == 2.0  # woken by the sleep registered meanwhile
    await clock.advance(2.0)
    await late


def test_a_client_takes_only_a_clock() -> None:
    from mirakl_cancel import MiraklConnectClient, StaticToken
    from mirakl_cancel._http.pollguard import PollGuard, ReadLog

    with pytest.raises(TypeError, match="clock must be a Clock"):
        MiraklConnectClient(auth=StaticToken("t"), clock=object())  # type: ignore[arg-type]
    clock = ManualClock()
    assert MiraklConnectClient(auth=StaticToken("t"), clock=clock).clock is clock
    with pytest.raises(ValueError, match="share one clock"):
        PollGuard(60.0, ReadLog(clock=ManualClock()), clock)
