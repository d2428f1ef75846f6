"""A bulk run: send many cancels and follow each to its final state, one result each.

Sending and tracking overlap: an action is handed to the tracker the moment its
cancel is accepted, so the first polls start while later cancels are still being
sent, and a long job finishes about one processing delay after its last POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from ._sending import CancelOutcome, send_many
from .errors import (
    ActionTimeoutError,
    ApiError,
    BadRequestError,
    ErrorItem,
    MiraklError,
    NotFoundError,
    UncertainDeliveryError,
    ValidationError,
)
from .models import ActionError, ActionState, ActionStatus, CancelRequest
from .reconcile import ReconcilePolicy, Reconciliation, SentCancel, Verdict
from .reconcile import reconcile as reconcile_cancels
from .tracker import DEFAULT_POLICY, ActionTracker, PollPolicy, TrackedResult

if TYPE_CHECKING:
    from .client import MiraklConnectClient

__all__ = ["CancelResult", "Outcome", "cancel_and_track"]

logger = logging.getLogger("mirakl_cancel")


class Outcome(str, enum.Enum):
    """Where one cancel request ended up."""

    #: Accepted, and its action ended in SUCCESS: the lines are canceled.
    SUCCEEDED = "SUCCEEDED"
    #: Accepted, but its action ended in FAILED (see `errors`): nothing was canceled.
    FAILED = "FAILED"
    #: Refused by the API (400/404): nothing was canceled; fix the request.
    REJECTED = "REJECTED"
    #: The cancel may or may not have been processed (answer lost): check before resending.
    UNCERTAIN = "UNCERTAIN"
    #: Accepted, but still pending when tracking timed out: its action_id tells the rest.
    TIMED_OUT = "TIMED_OUT"
    #: Anything else (authentication, server errors after retries, invalid input...).
    ERROR = "ERROR"
    #: An UNCERTAIN cancel that reconciliation proved was not applied (safe to resend).
    NOT_APPLIED = "NOT_APPLIED"

    def __str__(self) -> str:
        return self.value


#: One printable reason: an action's error, an API error item, or the exception itself.
ErrorDetail: TypeAlias = ActionError | ErrorItem | MiraklError


def _detail_text(detail: ErrorDetail) -> str:
    if isinstance(detail, ActionError):
        return f"{detail.code}: {detail.message}" if detail.message else detail.code
    if isinstance(detail, ErrorItem):
        return f"{detail.field}: {detail.message}" if detail.field else detail.message
    return str(detail) or type(detail).__name__


def _detail_dict(detail: ErrorDetail) -> dict[str, Any]:
    if isinstance(detail, ActionError):
        return {"code": detail.code, "message": detail.message}
    if isinstance(detail, ErrorItem):
        return {"field": detail.field, "message": detail.message}
    data: dict[str, Any] = {"type": type(detail).__name__, "message": _detail_text(detail)}
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
        if self.outcome is Outcome.REJECTED and self.exception is not None:
            return [str(self.exception)]
        return [_detail_text(detail) for detail in self.errors]

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
            verdict = f"reconciled: {self.reconciliation.reason}"
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


def _reasons(error: MiraklError) -> tuple[ErrorDetail, ...]:
    if isinstance(error, ApiError) and error.errors:
        return error.errors
    return (error,)


def result_from_outcome(outcome: CancelOutcome) -> CancelResult:
    """The result of a request the API did not accept (so there is nothing to track)."""
    error = outcome.error or MiraklError("cancel neither accepted nor refused")
    if isinstance(error, (BadRequestError, NotFoundError)):
        kind = Outcome.REJECTED
    elif isinstance(error, UncertainDeliveryError):
        kind = Outcome.UNCERTAIN
    else:  # authentication, permission, 5xx after retries, ValidationError, ...
        kind = Outcome.ERROR
    return CancelResult(outcome.request, kind, errors=_reasons(error), exception=error)


def result_from_tracking(outcome: CancelOutcome, tracked: TrackedResult) -> CancelResult:
    """The result of an accepted request whose action tracking has ended."""
    accepted = outcome.accepted
    assert accepted is not None
    status, error = tracked.status, tracked.error
    if status is not None:
        if status.state is ActionState.SUCCESS:
            return CancelResult(outcome.request, Outcome.SUCCEEDED, accepted.action_id, status)
        return CancelResult(outcome.request, Outcome.FAILED, accepted.action_id, status,
                            errors=status.errors)
    error = error or MiraklError("tracking ended without a status")
    kind = Outcome.TIMED_OUT if isinstance(error, ActionTimeoutError) else Outcome.ERROR
    return CancelResult(outcome.request, kind, accepted.action_id,
                        errors=_reasons(error), exception=error)


def _untracked(outcome: CancelOutcome) -> CancelResult:
    accepted = outcome.accepted
    assert accepted is not None
    error = MiraklError(f"tracking of action {accepted.action_id} stopped before it ended; "
                        "resume it from its action_id")
    return CancelResult(outcome.request, Outcome.ERROR, accepted.action_id, errors=(error,),
                        exception=error)


def _duplicate(outcome: CancelOutcome, other_order: str) -> CancelResult:
    accepted = outcome.accepted
    assert accepted is not None
    error = UncertainDeliveryError(
        f"the API answered with action {accepted.action_id}, already given to the cancel "
        f"of order {other_order}: whether this cancel was applied is unknown; check the "
        "order before resending", order_id=outcome.request.order_id)
    return CancelResult(outcome.request, Outcome.UNCERTAIN, accepted.action_id,
                        errors=(error,), exception=error)


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

    With `reconcile` (True, or a ReconcilePolicy), UNCERTAIN cancels are held back
    until their settling window has passed, then checked against the orders'
    adjustments: proven applied → SUCCEEDED (without an action id), proven not applied
    → NOT_APPLIED, or sent again when the policy says `resend=True`; ambiguous evidence
    stays UNCERTAIN with the reason.
    """
    rules = ReconcilePolicy() if reconcile is True else (reconcile or None)
    if tracker is None:
        async with ActionTracker(client, policy, concurrency=client.max_concurrency) as own:
            async for result in _reconciled(client, requests, own, concurrency, rules):
                yield result
    else:
        async for result in _reconciled(client, requests, tracker, concurrency, rules):
            yield result


async def _reconciled(
    client: MiraklConnectClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    tracker: ActionTracker,
    concurrency: int | None,
    rules: ReconcilePolicy | None,
) -> AsyncIterator[CancelResult]:
    """Run, then settle the UNCERTAIN results by reconciliation (and resend rounds)."""
    rounds = 0
    while True:
        held: list[SentCancel] = []
        sent: list[SentCancel] = []  # accepted cancels: rivals for the same adjustments
        async for result in _run(client, requests, tracker, concurrency,
                                 None if rules is None else (held, sent)):
            yield result
        if rules is None or not held:
            return
        rounds += 1
        resend: list[CancelRequest] = []
        async for result in _judge(client, held, sent, rules):
            if (result.outcome is Outcome.NOT_APPLIED and rules.resend
                    and rounds <= rules.max_rounds):
                resend.append(result.request)
            else:
                yield result
        if not resend:
            return
        requests = resend


async def _judge(client: MiraklConnectClient, held: list[SentCancel], sent: list[SentCancel],
                 rules: ReconcilePolicy) -> AsyncIterator[CancelResult]:
    """Wait for the settling window of every held cancel, then reconcile them together."""
    deadline = max(h.sent_at for h in held) + timedelta(seconds=rules.settle)
    wait = (deadline - datetime.now(timezone.utc)).total_seconds()
    if wait > 0:
        logger.info("reconciling %d uncertain cancel(s) in %.0fs", len(held), wait)
        await asyncio.sleep(wait)
    orders = {h.request.order_id for h in held}
    others = [s for s in sent if s.request.order_id in orders]
    try:
        verdicts = await reconcile_cancels(client, held, others=others, policy=rules)
    except MiraklError as exc:
        for h in held:
            yield CancelResult(h.request, Outcome.UNCERTAIN, errors=(exc,), exception=exc)
        return
    for verdict in verdicts:
        request = verdict.cancel.request
        if verdict.verdict is Verdict.APPLIED:
            yield CancelResult(request, Outcome.SUCCEEDED, reconciliation=verdict)
        elif verdict.verdict is Verdict.NOT_APPLIED:
            yield CancelResult(request, Outcome.NOT_APPLIED, reconciliation=verdict)
        else:
            yield CancelResult(request, Outcome.UNCERTAIN, reconciliation=verdict)


async def _run(
    client: MiraklConnectClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    tracker: ActionTracker,
    concurrency: int | None,
    hold: tuple[list[SentCancel], list[SentCancel]] | None = None,
) -> AsyncIterator[CancelResult]:
    """One pass: send, track, yield. With `hold`, uncertain cancels go to `hold[0]`
    instead of being yielded, and accepted ones are noted in `hold[1]`."""
    results: asyncio.Queue[CancelResult | None] = asyncio.Queue()
    waiting: dict[str, CancelOutcome] = {}

    def on_result(tracked: TrackedResult) -> None:
        outcome = waiting.pop(tracked.action_id, None)
        if outcome is not None:
            results.put_nowait(result_from_tracking(outcome, tracked))

    def on_close() -> None:
        for outcome in waiting.values():
            results.put_nowait(_untracked(outcome))
        waiting.clear()

    async def feed() -> None:
        try:
            async for outcome in send_many(client, requests, concurrency=concurrency):
                accepted = outcome.accepted
                sent_at = outcome.sent_at or datetime.now(timezone.utc)
                if accepted is None:
                    if hold is not None and isinstance(outcome.error, UncertainDeliveryError):
                        hold[0].append(SentCancel(outcome.request, sent_at))
                    else:
                        results.put_nowait(result_from_outcome(outcome))
                    continue
                if accepted.action_id in waiting:
                    # One action id for two requests: the API's status of that action
                    # cannot tell whether *this* cancel was applied.
                    other = waiting[accepted.action_id].request.order_id
                    logger.warning("the cancel of order %s was answered with action %s, "
                                   "already given to the cancel of order %s: UNCERTAIN",
                                   outcome.request.order_id, accepted.action_id, other)
                    if hold is not None:
                        hold[0].append(SentCancel(outcome.request, sent_at))
                    else:
                        results.put_nowait(_duplicate(outcome, other))
                    continue
                if hold is not None:
                    hold[1].append(SentCancel(outcome.request, sent_at))
                waiting[accepted.action_id] = outcome
                try:
                    tracker.add(accepted.action_id, order_id=accepted.order_id)
                except (RuntimeError, ValidationError):
                    waiting.pop(accepted.action_id, None)
                    results.put_nowait(_untracked(outcome))
        finally:
            results.put_nowait(None)

    unsubscribe = tracker.subscribe(on_result, on_close)
    feeder = asyncio.get_running_loop().create_task(feed())
    try:
        feeding = True
        while feeding or waiting:
            item = await results.get()
            if item is None:
                feeding = False
            else:
                yield item
        while not results.empty():  # results queued by a close in the meantime
            item = results.get_nowait()
            if item is not None:
                yield item
        await feeder  # raise an error of the requests iterable, if any
    finally:
        unsubscribe()
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(feeder, return_exceptions=True)
