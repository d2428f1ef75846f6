"""cancel_and_track with a fake client: the outcome mapping, streaming, and clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from builders import request

from mirakl_cancel._http.pollguard import PollGuard
from mirakl_cancel.bulk import CancelResult, Outcome, cancel_and_track
from mirakl_cancel.errors import (
    AuthenticationError,
    BadRequestError,
    ErrorItem,
    MiraklError,
    NotFoundError,
    ServerError,
    UncertainDeliveryError,
    ValidationError,
    ValidationIssue,
)
from mirakl_cancel.models import (
    ActionAccepted,
    ActionError,
    ActionState,
    ActionStatus,
    CancelRequest,
)
from mirakl_cancel.tracker import ActionTracker, PollPolicy

FAST = PollPolicy(min_interval=0.01, interval=0.01, first_delay=0.0)




class FakeClient:
    """POST answers and final action states decided per order id (reads spaced by the
    library's own poll guard, on the real clock: 10 ms)."""

    max_concurrency = 4
    min_poll_interval = 0.01

    def __init__(self) -> None:
        self.guard = PollGuard(self.min_poll_interval)
        self.refuse: dict[str, Exception] = {}
        self.final: dict[str, Any] = {}
        self.post_delay: dict[str, float] = {}
        self.events: list[tuple[str, str]] = []

    def poll_ready_in(self, action_id: str) -> float:
        return self.guard.ready_in(action_id)

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        self.guard.record_ago(action_id, seconds_ago)

    async def cancel(self, request: CancelRequest, *, on_send: Any = None) -> ActionAccepted:
        order_id = request.order_id
        await asyncio.sleep(self.post_delay.get(order_id, 0.0))
        self.events.append(("post", order_id))
        if order_id in self.refuse:
            raise self.refuse[order_id]
        return ActionAccepted(f"act-{order_id}", order_id)

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        order_id = action_id.removeprefix("act-")
        self.events.append(("poll", order_id))
        self.guard.record(action_id)
        final = self.final.get(order_id, ActionState.SUCCESS)
        if isinstance(final, Exception):
            raise final
        if isinstance(final, ActionStatus):
            return final
        return ActionStatus(action_id, final, raw_status=final.value)


async def collect(agen: AsyncIterator[CancelResult]) -> dict[str, CancelResult]:
    results: dict[str, CancelResult] = {}
    async for result in agen:
        assert result.order_id not in results, "one result per request"
        results[result.order_id] = result
    return results


async def test_every_kind_of_ending_maps_to_its_outcome() -> None:
    client = FakeClient()
    bad = BadRequestError(400, "INVALID_INPUT", "The request is invalid",
                          [ErrorItem("must be >= 0", "$.cancelations[0].quantity")])
    client.refuse = {
        "bad": bad,
        "unknown": NotFoundError(404, "DATA_NOT_FOUND", "Order unknown not found"),
        "lost": UncertainDeliveryError("POST may have been processed", order_id="lost"),
        "auth": AuthenticationError(401, None, "invalid token"),
        "down": ServerError(500, None, "internal error"),
        "invalid": ValidationError([ValidationIssue("order_id", "bad")]),
    }
    failed = ActionStatus("act-failed", ActionState.FAILED,
                          errors=(ActionError("ORDER_IN_WRONG_STATE", "it shipped"),),
                          raw_status="FAILED")
    client.final = {"failed": failed, "vanished": NotFoundError(404, None, "no action")}
    orders = ["ok", "failed", "vanished", *client.refuse]
    results = await collect(cancel_and_track(client, [request(o) for o in orders], FAST))  # type: ignore[arg-type]
    assert {o: r.outcome for o, r in results.items()} == {
        "ok": Outcome.SUCCEEDED, "failed": Outcome.FAILED, "vanished": Outcome.ERROR,
        "bad": Outcome.REJECTED, "unknown": Outcome.REJECTED, "lost": Outcome.UNCERTAIN,
        "auth": Outcome.ERROR, "down": Outcome.ERROR, "invalid": Outcome.ERROR,
    }
    ok = results["ok"]
    assert ok.ok and ok.action_id == "act-ok" and ok.status is not None and ok.errors == ()
    assert results["failed"].errors == failed.errors
    assert results["bad"].errors == bad.errors and results["bad"].exception is bad
    assert results["lost"].action_id is None
    assert isinstance(results["unknown"].errors[0], NotFoundError)
    assert results["vanished"].action_id == "act-vanished"


async def test_timeouts_are_reported_as_timed_out() -> None:
    client = FakeClient()
    client.final = {"slow": ActionState.PENDING}
    policy = PollPolicy(min_interval=0.01, interval=0.01, first_delay=0.0, timeout=0.05)
    results = await collect(cancel_and_track(client, [request("slow"), request("ok")], policy))  # type: ignore[arg-type]
    assert results["slow"].outcome is Outcome.TIMED_OUT
    assert results["slow"].action_id == "act-slow"
    assert "still pending" in results["slow"].describe()
    assert results["ok"].outcome is Outcome.SUCCEEDED


async def test_polling_starts_before_the_last_cancel_is_sent() -> None:
    client = FakeClient()
    client.post_delay = {"last": 0.3}
    reqs = [request("first"), request("last")]
    results = await collect(cancel_and_track(client, reqs, FAST, concurrency=2))  # type: ignore[arg-type]
    assert client.events.index(("poll", "first")) < client.events.index(("post", "last"))
    assert list(results) == ["first", "last"]  # streamed as each ends


async def test_results_stream_from_an_async_source_with_a_shared_tracker() -> None:
    client = FakeClient()

    async def source() -> AsyncIterator[CancelRequest]:
        for n in range(20):
            await asyncio.sleep(0)
            yield request(f"o{n}", lines=2)

    async with ActionTracker(client, FAST) as tracker:  # type: ignore[arg-type]
        results = await collect(cancel_and_track(client, source(), tracker=tracker))  # type: ignore[arg-type]
        assert tracker.pending == 0
    assert len(results) == 20
    assert all(r.outcome is Outcome.SUCCEEDED for r in results.values())


async def test_an_error_in_the_source_comes_after_the_results_already_sent() -> None:
    client = FakeClient()

    def source() -> Iterator[CancelRequest]:
        yield request("a")
        yield request("b")
        raise OSError("file went away")

    seen: list[str] = []

    async def run() -> None:
        async for result in cancel_and_track(client, source(), FAST):  # type: ignore[arg-type]
            seen.append(result.order_id)

    with pytest.raises(OSError, match="went away"):
        await run()
    assert sorted(seen) == ["a", "b"]


async def test_a_tracker_closed_under_the_run_reports_the_untracked_actions() -> None:
    client = FakeClient()
    client.final = {"slow": ActionState.PENDING}
    tracker = ActionTracker(client, FAST)  # type: ignore[arg-type]
    seen: list[CancelResult] = []

    async def run() -> None:
        async for result in cancel_and_track(client, [request("slow")], tracker=tracker):  # type: ignore[arg-type]
            seen.append(result)

    task = asyncio.ensure_future(run())
    await asyncio.sleep(0.05)
    await tracker.close(drain=False)
    await asyncio.wait_for(task, 1.0)
    [result] = seen
    assert result.outcome is Outcome.ERROR and result.action_id == "act-slow"
    assert "resume" in result.describe()


async def test_stopping_early_cleans_up() -> None:
    client = FakeClient()
    client.final = {f"o{n}": ActionState.PENDING for n in range(1, 10)}
    reqs = [request(f"o{n}") for n in range(10)]
    async with contextlib.aclosing(cancel_and_track(client, reqs, FAST)) as results:  # type: ignore[arg-type]
        async for result in results:
            assert result.order_id == "o0"
            break
    await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) == 1  # only this test's task is left


def test_describe_and_to_dict_are_report_ready() -> None:
    bad = BadRequestError(400, "INVALID_INPUT", "The request is invalid",
                          [ErrorItem("must be >= 0", "$.cancelations[0].quantity")])
    rejected = CancelResult(request("o1", lines=2), Outcome.REJECTED, errors=bad.errors,
                            exception=bad)
    assert rejected.message == rejected.describe()
    assert rejected.describe() == (
        "order o1 (2 lines): rejected by the API: HTTP 400 INVALID_INPUT: The request is "
        "invalid ($.cancelations[0].quantity: must be >= 0)")
    data = rejected.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["outcome"] == "REJECTED" and data["order_line_ids"] == ["o1-1", "o1-2"]
    assert data["errors"] == [{"field": "$.cancelations[0].quantity", "message": "must be >= 0"}]

    status = ActionStatus("act-1", ActionState.FAILED,
                          errors=(ActionError("ORDER_IN_WRONG_STATE", "shipped"),),
                          raw_status="FAILED")
    failed = CancelResult(request("o2"), Outcome.FAILED, "act-1", status, status.errors)
    assert failed.describe() == (
        "order o2 (1 line, action act-1): action failed: ORDER_IN_WRONG_STATE: shipped")
    assert failed.to_dict()["status"] == "FAILED"
    assert failed.to_dict()["errors"] == [{"code": "ORDER_IN_WRONG_STATE", "message": "shipped"}]

    error = ServerError(500, None, "boom")
    errored = CancelResult(request("o3"), Outcome.ERROR, errors=(error,), exception=error)
    assert errored.to_dict()["errors"] == [
        {"type": "ServerError", "message": "HTTP 500: boom", "status": 500, "code": None}]
    uncertain = CancelResult(request("o4"), Outcome.UNCERTAIN,
                             errors=(MiraklError("lost"),))
    assert "check the order before resending" in uncertain.describe()
    assert str(Outcome.NOT_APPLIED) == "NOT_APPLIED"
