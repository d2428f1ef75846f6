"""Find out whether a cancel whose answer was lost took effect.

Mirakl Connect has no idempotency key, so a cancel POST that may have reached the server
(dropped connection, read timeout, 502/504) cannot simply be sent again. But a processed
cancel leaves evidence: a `CANCELATION` adjustment on the order line, created after the
cancel was sent, with the same quantity, reason and price. Reading the orders back with
`v2-listOrders` (100 orders per call) tells, for each uncertain cancel, one of:

- APPLIED: every line of the request has a matching adjustment no other request claims;
- NOT_APPLIED: none has, and the settling window (time enough for the action to be
  processed) has passed, so sending the request again cannot cancel twice;
- UNCERTAIN: the evidence is ambiguous (similar cancels competing for one adjustment,
  a partial match, a missing order or line, or a window not yet passed), with the reason.

What it cannot prove: that a cancel applied *by someone else* (another tool, the back
office) with the same quantity, reason and price after T is not ours. Give it the other
cancels your job sent on the same lines (`others`) so that they claim their share.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import attrs

from ._constants import DEFAULT_SETTLE, DEFAULT_SKEW
from .models import Adjustment, AdjustmentType, Cancelation, CancelRequest, Order, OrderLine

if TYPE_CHECKING:
    from .client import MiraklConnectClient

__all__ = ["ReconcilePolicy", "Reconciliation", "SentCancel", "Verdict", "reconcile",
           "reconcile_orders"]


@attrs.frozen
class ReconcilePolicy:
    """How reconciliation weighs time, in seconds.

    `settle` is how long after sending a cancel its absence from the adjustments
    proves it was not applied: long enough for Mirakl to have processed the action
    (Mirakl gives no bound; 15 minutes is a conservative default). `skew` allows for
    the difference between our clock and the API's when comparing `created_at`.
    `resend` lets a bulk run send again what was proven NOT_APPLIED.
    """

    settle: float = DEFAULT_SETTLE
    skew: float = DEFAULT_SKEW
    resend: bool = False
    #: How many times a bulk run may resend a request proven not applied.
    max_rounds: int = 3

    def __attrs_post_init__(self) -> None:
        if self.settle < 0 or self.skew < 0 or self.max_rounds < 1:
            raise ValueError("settle and skew must be >= 0, max_rounds >= 1")


class Verdict(str, enum.Enum):
    """What the order's adjustments say about one uncertain cancel."""

    APPLIED = "APPLIED"
    NOT_APPLIED = "NOT_APPLIED"
    UNCERTAIN = "UNCERTAIN"


@attrs.frozen
class SentCancel:
    """A cancel request and when it was sent (aware UTC)."""

    request: CancelRequest
    sent_at: datetime


@attrs.frozen
class Reconciliation:
    """The verdict on one uncertain cancel, the reason in words, and the evidence."""

    cancel: SentCancel
    verdict: Verdict
    reason: str
    adjustments: tuple[Adjustment, ...] = ()


def _recent_cancelations(line: OrderLine, since: datetime) -> list[Adjustment]:
    return [a for a in line.adjustments
            if a.type is AdjustmentType.CANCELATION and a.created_at is not None
            and a.created_at >= since]


def _undated_cancelations(line: OrderLine) -> list[Adjustment]:
    """CANCELATION adjustments whose `created_at` is missing or unreadable.

    The spec requires the field, but the parser leaves an odd timestamp as None rather
    than failing the listing. Such an adjustment may be ours, so it can never be
    skipped as "older than the send": skipping it could turn an applied cancel into
    NOT_APPLIED, and a resend into a double cancel.
    """
    return [a for a in line.adjustments
            if a.type is AdjustmentType.CANCELATION and a.created_at is None]


def _same(adjustment: Adjustment, cancelation: Cancelation) -> bool:
    """Same quantity and reason, and the same price when the API reports one."""
    return (adjustment.quantity == cancelation.quantity
            and adjustment.reason == cancelation.reason.value
            and (adjustment.price is None or adjustment.price == cancelation.price))


def _line_for(order: Order, cancelation: Cancelation) -> OrderLine | None:
    return order.line(order_line_id=cancelation.order_line_id,
                      product_id=cancelation.product_id)


def reconcile_orders(
    uncertain: Sequence[SentCancel],
    orders: Iterable[Order],
    *,
    others: Sequence[SentCancel] = (),
    now: datetime | None = None,
    policy: ReconcilePolicy | None = None,
) -> list[Reconciliation]:
    """Judge each uncertain cancel against orders already read (no I/O).

    `others` are cancels of the same job known to have been applied (or still in
    flight) on the same lines: they compete for the same adjustments, so an adjustment
    is counted as ours only when there are enough of them for every claimant.
    """
    policy = policy or ReconcilePolicy()
    settle, skew = timedelta(seconds=policy.settle), timedelta(seconds=policy.skew)
    now = now or datetime.now(timezone.utc)
    by_id = {order.id: order for order in orders}
    verdicts: list[Reconciliation] = []
    claimants = [*uncertain, *others]
    for sent in uncertain:
        order = by_id.get(sent.request.order_id)
        if order is None:
            verdicts.append(Reconciliation(sent, Verdict.UNCERTAIN,
                                           "order not returned by v2-listOrders"))
            continue
        since = sent.sent_at - skew
        matched: list[Adjustment] = []
        problems: list[str] = []
        for cancelation in sent.request.cancelations:
            line = _line_for(order, cancelation)
            if line is None:
                problems.append(f"line {cancelation.order_line_id or cancelation.product_id} "
                                "not found in the order")
                continue
            undated = _undated_cancelations(line)
            if undated:
                problems.append(f"cancelation adjustment(s) "
                                f"{', '.join(a.id or '?' for a in undated)} on line {line.id} "
                                "have no readable created_at, so they cannot be dated")
                continue
            recent = _recent_cancelations(line, since)
            if not recent:
                continue  # no evidence on this line
            candidates = [a for a in recent if _same(a, cancelation)]
            # How many cancels of this job could have produced these adjustments?
            rivals = sum(
                1 for other in claimants
                if other.request.order_id == order.id
                for c in other.request.cancelations
                if _line_for(order, c) is line and c.quantity == cancelation.quantity
                and c.reason == cancelation.reason
            )
            if candidates and len(candidates) >= rivals:
                matched.append(candidates[0])
            else:
                # Something was cancelled on this line after the send, but it cannot be
                # attributed to this request with certainty: never call that NOT_APPLIED.
                problems.append(f"{len(candidates)} matching of {len(recent)} recent "
                                f"cancelation(s) on line {line.id} for {rivals} similar "
                                "cancel(s)")
        total = len(sent.request.cancelations)
        if problems:
            verdicts.append(Reconciliation(sent, Verdict.UNCERTAIN, "; ".join(problems),
                                           tuple(matched)))
        elif len(matched) == total:
            ids = ", ".join(a.id for a in matched)
            verdicts.append(Reconciliation(
                sent, Verdict.APPLIED, f"cancelation adjustment(s) {ids} found after the send",
                tuple(matched)))
        elif matched:
            verdicts.append(Reconciliation(
                sent, Verdict.UNCERTAIN,
                f"only {len(matched)} of {total} lines show a matching cancelation",
                tuple(matched)))
        elif now >= sent.sent_at + settle:
            verdicts.append(Reconciliation(
                sent, Verdict.NOT_APPLIED,
                f"no matching cancelation adjustment {settle.total_seconds():.0f}s after the "
                "send: safe to send again"))
        else:
            wait = (sent.sent_at + settle - now).total_seconds()
            verdicts.append(Reconciliation(
                sent, Verdict.UNCERTAIN,
                f"no matching adjustment yet; settling window ends in {wait:.0f}s"))
    return verdicts


async def reconcile(
    client: MiraklConnectClient,
    uncertain: Sequence[SentCancel],
    *,
    others: Sequence[SentCancel] = (),
    policy: ReconcilePolicy | None = None,
) -> list[Reconciliation]:
    """Read the orders of `uncertain` cancels (batched, 100 per call) and judge each."""
    if not uncertain:
        return []
    orders = await client.list_orders(s.request.order_id for s in uncertain)
    return reconcile_orders(uncertain, orders, others=others, policy=policy)
