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
