"""A bulk run: send many cancels and follow each to its final state, one result each.

Sending and tracking overlap: an action is handed to the tracker the moment its
cancel is accepted, so the first polls start while later cancels are still being
sent, and a long job finishes about one processing delay after its last POST. The
run itself is the engine's (`_engine.Engine`, shared with `mirakl-cancel run`); this
module turns each ending into a `CancelResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import attrs

from ._engine import (
    Choice,
    Ending,
    Engine,
    ErrorDetail,
    Outcome,
    Standing,
    detail_text,
    ending_of_duplicate,
    ending_of_send_error,
    ending_of_tracking,
    ending_of_untracked,
    reconcile_note,
)
from ._sending import CancelOutcome
from .errors import ApiError, ErrorItem, MiraklError
from .models import ActionError, ActionStatus, CancelRequest
from .reconcile import ReconcilePolicy, Reconciliation, SentCancel, Verdict
from .tracker import DEFAULT_POLICY, ActionTracker, PollPolicy, TrackedResult

if TYPE_CHECKING:
    from .client import MiraklConnectClient

__all__ = ["CancelResult", "Outcome", "cancel_and_track"]

logger = logging.getLogger("mirakl_cancel")


def _detail_dict(detail: ErrorDetail) -> dict[str, Any]:
    if isinstance(detail, ActionError):
        return {"code": detail.code, "message": detail.message}
    if isinstance(detail, ErrorItem):
        return {"field": detail.field, "message": detail.message}
    data: dict[str, Any] = {"type": type(detail).__name__, "message": detail_text(detail)}
    if isinstance(detail, ApiError):
        data.update(status=detail.status, code=detail.code)
    return data


@attrs.frozen
class CancelResult:
    """The final word on one CancelRequest.

    `errors` holds simple, printable reasons: the action's `ActionError`s when it
    FAILED, the API's `ErrorItem`s when it was REJECTED with details, otherwise the
    exception itself. `exception` keeps the original exception (e.g. the ApiError
    with its status and code) whenever there is one.
    """

    request: CancelRequest
    outcome: Outcome
    action_id: str | None = None
    status: ActionStatus | None = None
    errors: tuple[ErrorDetail, ...] = ()
    exception: MiraklError | None = None
    #: For a once-UNCERTAIN cancel: what the orders' adjustments said, and why.
    reconciliation: Reconciliation | None = None

    @property
    def order_id(self) -> str:
        return self.request.order_id

    @property
    def ok(self) -> bool:
        """Whether the lines are known to be canceled."""
        return self.outcome is Outcome.SUCCEEDED

    @property
    def message(self) -> str:
        """A one-line summary for logs and reports."""
        return self.describe()

    def error_texts(self) -> list[str]:
        """The reasons as printable texts, one per entry of `errors`.

        A REJECTED request gives the API's whole refusal instead (one text): its
        summary already lists every item with its field, and keeps the status and code
        that the items alone would lose.
        """
        return Ending(self.outcome, errors=self.errors, exception=self.exception).texts()

    def describe(self) -> str:
        """A one-line, human-readable account of what happened to this request."""
        lines = len(self.request.cancelations)
        head = f"order {self.order_id} ({lines} line{'s' if lines != 1 else ''}"
        head += f", action {self.action_id})" if self.action_id else ")"
        reasons = "; ".join(self.error_texts())
        text = {
            Outcome.SUCCEEDED: "canceled",
            Outcome.FAILED: "action failed",
            Outcome.REJECTED: "rejected by the API",
            Outcome.UNCERTAIN: "may or may not have been canceled (answer lost); "
                               "check the order before resending",
            Outcome.TIMED_OUT: "still pending when tracking timed out",
            Outcome.ERROR: "error",
            Outcome.NOT_APPLIED: "not applied (safe to resend)",
        }[self.outcome]
        if self.reconciliation is not None:
            verdict = reconcile_note(self.reconciliation.reason)
            reasons = f"{reasons}; {verdict}" if reasons else verdict
            if self.outcome is Outcome.SUCCEEDED:
                text = "canceled (proven by the order's adjustments; no action id)"
        return f"{head}: {text}" + (f": {reasons}" if reasons else "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record for reports (amounts are left out; the request has them)."""
        return {
            "order_id": self.order_id,
            "order_line_ids": [c.order_line_id for c in self.request.cancelations],
            "quantity": self.request.total_quantity,
            "outcome": self.outcome.value,
            "action_id": self.action_id,
            "status": None if self.status is None else (
                self.status.raw_status or self.status.state.value),
            "errors": [_detail_dict(detail) for detail in self.errors],
            "reconciliation": None if self.reconciliation is None else {
                "verdict": self.reconciliation.verdict.value,
                "reason": self.reconciliation.reason,
                "adjustments": [a.id for a in self.reconciliation.adjustments]},
            "message": self.describe(),
        }




def _result(request: CancelRequest, ending: Ending,
            reconciliation: Reconciliation | None = None) -> CancelResult:
    return CancelResult(request, ending.outcome, ending.action_id, ending.status,
                        errors=ending.errors, exception=ending.exception,
                        reconciliation=reconciliation)


class _Results:
    """The library's steps for the engine: each ending becomes a CancelResult, queued
    for `cancel_and_track` to yield. With reconciliation (`hold`), UNCERTAIN cancels
    are held back for it, and accepted ones kept as rivals for the same adjustments."""

    def __init__(self, hold: bool) -> None:
        self.queue: asyncio.Queue[CancelResult | None] = asyncio.Queue()
        self.hold = hold
        self.held: list[SentCancel] = []
        #: Accepted cancels (with their action ids), and cancels proven APPLIED.
        self.accepted_cancels: list[tuple[SentCancel, str]] = []
        self.applied: list[SentCancel] = []
        #: The outcome of each accepted cancel's action, once tracked (held only).
        self.outcomes: dict[str, Outcome] = {}
        #: Who had each action id whose tracking ended (~100 B each), to name it when a
        #: later cancel is answered with the same id.
        self.ended: dict[str, str] = {}

    def label(self, item: CancelRequest) -> str:
        return f"order {item.order_id}"

    def order_id(self, item: CancelRequest) -> str:
        return item.order_id

    def cancel_request(self, item: CancelRequest) -> CancelRequest:
        return item

    def tracked_action(self, item: CancelRequest) -> tuple[str, float | None, float | None]:
        raise AssertionError("cancel_and_track only sends")  # pragma: no cover

    def send_key(self, item: CancelRequest) -> str | None:
        return None

    async def before_attempt(self, item: CancelRequest, *, first: bool,
                             resend: bool) -> None:
        return None  # pragma: no cover (the library's engine sends unguarded)

    def _sent(self, outcome: CancelOutcome) -> SentCancel:
        return SentCancel(outcome.request, outcome.sent_at or datetime.now(timezone.utc))

    async def send_failed(self, item: CancelRequest, outcome: CancelOutcome,
                          left: bool) -> None:
        ending = ending_of_send_error(outcome.error)
        if self.hold and ending.outcome is Outcome.UNCERTAIN:
            self.held.append(self._sent(outcome))
        else:
            self.queue.put_nowait(_result(item, ending))

    def guard_failed(self, item: CancelRequest, error: BaseException,
                     left: bool) -> None:  # pragma: no cover (unguarded)
        raise AssertionError("cancel_and_track sends unguarded")

    def accepted(self, item: CancelRequest, outcome: CancelOutcome) -> None:
        if self.hold:
            assert outcome.accepted is not None
            self.accepted_cancels.append((self._sent(outcome), outcome.accepted.action_id))

    def accept_failed(self, item: CancelRequest, action_id: str,
                      error: BaseException) -> None:  # pragma: no cover (nothing to record)
        raise AssertionError("cancel_and_track records nothing")

    def tracking(self, item: CancelRequest, action_id: str, last_read: float | None,
                 accepted_at: float | None = None) -> None:
        pass

    async def duplicate(self, item: CancelRequest, outcome: CancelOutcome, other: str) -> None:
        accepted = outcome.accepted
        assert accepted is not None
        if self.hold:
            self.held.append(self._sent(outcome))
        else:
            self.queue.put_nowait(_result(item, ending_of_duplicate(
                item.order_id, accepted.action_id, other)))

    async def earlier_owner(self, action_id: str) -> str | None:
        return self.ended.get(action_id)

    async def tracked(self, item: CancelRequest, result: TrackedResult) -> None:
        self.ended[result.action_id] = self.label(item)
        ending = ending_of_tracking(result)
        if self.hold:
            self.outcomes[result.action_id] = ending.outcome
        self.queue.put_nowait(_result(item, ending))

    async def untracked(self, item: CancelRequest, action_id: str) -> None:
        self.ended[action_id] = self.label(item)
        self.queue.put_nowait(_result(item, ending_of_untracked(action_id)))

    def resolved(self, item: CancelRequest, *, tracked: bool) -> None:
        pass

    async def uncertain(self, only: set[str] | None,
                        ) -> AsyncIterator[tuple[CancelRequest, SentCancel | None]]:
        held, self.held = self.held, []  # a later round: only what its resends left
        for cancel in held:
            yield cancel.request, cancel

    async def rivals(self, orders: set[str], exclude: set[str],
                     ) -> AsyncIterator[tuple[Standing, Callable[[], SentCancel]]]:
        for cancel, action_id in self.accepted_cancels:
            if cancel.request.order_id in orders:
                yield Standing(True, self.outcomes.get(action_id)), _const(cancel)
        for cancel in self.applied:
            if cancel.request.order_id in orders:
                yield Standing(False, verdict=Verdict.APPLIED), _const(cancel)

    def settling(self, count: int, wait: float, deadline: datetime) -> None:
        if wait > 0:
            logger.info("reconciling %d uncertain cancel(s) in %.0fs", count, wait)

    def reading(self, count: int) -> None:
        pass

    async def read_over(self, failed: MiraklError | None = None) -> None:
        pass

    async def judged(self, item: CancelRequest, verdict: Reconciliation, *,
                     resend: bool) -> None:
        if resend:
            return  # sent again: its next ending is its result
        if verdict.verdict is Verdict.APPLIED:
            self.applied.append(verdict.cancel)
            outcome = Outcome.SUCCEEDED
        elif verdict.verdict is Verdict.NOT_APPLIED:
            outcome = Outcome.NOT_APPLIED
        else:
            outcome = Outcome.UNCERTAIN
        self.queue.put_nowait(CancelResult(item, outcome, reconciliation=verdict))

    async def unjudged(self, item: CancelRequest, reason: str,
                       error: MiraklError | None) -> None:
        error = error or MiraklError(reason)
        self.queue.put_nowait(CancelResult(item, Outcome.UNCERTAIN, errors=(error,),
                                           exception=error))

    def resending(self, items: Sequence[CancelRequest]) -> None:
        pass


def _const(cancel: SentCancel) -> Callable[[], SentCancel]:
    return lambda: cancel


async def _work(requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
                ) -> AsyncIterator[tuple[CancelRequest, Choice]]:
    if isinstance(requests, AsyncIterable):
        async for request in requests:
            yield request, Choice.SEND
    else:
        for request in requests:
            yield request, Choice.SEND


async def cancel_and_track(
    client: MiraklConnectClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    policy: PollPolicy = DEFAULT_POLICY,
    *,
    tracker: ActionTracker | None = None,
    concurrency: int | None = None,
    reconcile: ReconcilePolicy | bool = False,
) -> AsyncIterator[CancelResult]:
    """Send every request and yield one CancelResult per request as it reaches its end.

    Requests are pulled lazily, `concurrency` (default: the client's) at a time, and
    each accepted action is tracked at once. Pass a `tracker` to share one with other
    work (its policy then applies, and `policy` is ignored); otherwise one is made and
    closed here. Nothing is lost to an exception: a failure is a result. If the
    requests iterable itself raises, the results of everything already sent are
    yielded first, then the error is raised. Wrap in `contextlib.aclosing` when you may
    stop early, so that the run is cleaned up at once.

    Two requests answered with one action id get one result each: the second is
    UNCERTAIN (the action's status cannot tell whether it was applied), whether the
    first is still tracked or already ended.

    With `reconcile` (True, or a ReconcilePolicy), UNCERTAIN cancels are held back
    until their settling window has passed, then checked against the orders'
    adjustments: proven applied → SUCCEEDED (without an action id), proven not applied
    → NOT_APPLIED, or sent again when the policy says `resend=True`; ambiguous evidence
    stays UNCERTAIN with the reason.
    """
    rules = ReconcilePolicy() if reconcile is True else (reconcile or None)
    if tracker is None:
        async with ActionTracker(client, policy, concurrency=client.max_concurrency) as own:
            async for result in _results(client, requests, own, concurrency, rules):
                yield result
    else:
        async for result in _results(client, requests, tracker, concurrency, rules):
            yield result


async def _results(
    client: MiraklConnectClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    tracker: ActionTracker,
    concurrency: int | None,
    rules: ReconcilePolicy | None,
) -> AsyncIterator[CancelResult]:
    """Run the engine in a task and yield its results as they come."""
    steps = _Results(hold=rules is not None)
    engine: Engine[CancelRequest] = Engine(client, steps, tracker=tracker,
                                           concurrency=concurrency, reconcile=rules,
                                           guarded=False)

    async def drive() -> None:
        try:
            await engine.run_pass(_work(requests))
            if rules is not None:
                await engine.reconcile_rounds()
        finally:
            steps.queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(drive())
    try:
        while (result := await steps.queue.get()) is not None:
            yield result
        await task  # raise an error of the requests iterable, if any
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, return_exceptions=True)
