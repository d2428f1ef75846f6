"""The one engine behind `cancel_and_track` and `mirakl-cancel run`.

send → track → settle → reconcile → resend, written once:

- **A pass** (`Engine.run_pass`) takes its work from a *work source*, an async iterator of
  ``(item, Choice)``: SEND and RESEND items go through one pool of senders
  (`_sending.send_one`, so an unexpected failure after a send is UNCERTAIN, never an
  error), TRACK items (accepted earlier) straight to the tracker. An accepted cancel is
  tracked at once, so the first reads start while later cancels are still leaving.
  A pass ends when every item handed out has ended, when `interrupt` is set (the sends
  in flight finish; tracking stops), or, after `stop` (no new send), once what was
  accepted has been tracked.
- **Settling** (`Engine.reconcile_rounds`): the UNCERTAIN cancels wait out their
  settling window (interruptible), are judged against the orders' adjustments with the
  other cancels on the same orders as rivals (`claims_adjustments`), and those proven
  NOT_APPLIED are sent again (RESEND) when the policy allows, `max_rounds` at most.
- **Outcome rules** (`Ending`, `ending_of_*`): which `Outcome` each ending gets, and
  the rule for a second cancel answered with an action id already given to another
  (issue 11): UNCERTAIN, naming the other request, whether the first is still tracked
  or already finished (the engine remembers the action ids of its run, hashed: ~60 B
  each; the caller names the earlier owner of an id seen again).

Who may resend: only the engine, only items its caller chose (RESEND), and only through
the same guarded path: the caller's `Steps.before_attempt` guard (the job's durable
SENDING mark) runs before every attempt and may refuse it by raising. Nothing is ever
sent again on the engine's own initiative, except what reconciliation proved was not
applied, and only with `ReconcilePolicy.resend`.

What the caller plugs in (the seams):

- the *work source* (`run_pass(work)`): the job streams it from its store
  (`_stores.base.JobStore.requests` + its choice of what to do); a fleet worker can give an
  iterator that claims rows from a shared store; the library wraps its requests;
- the *tracker* (`tracker=`: an `ActionTracker`, shared, or a factory called once per
  pass, e.g. ``lambda: ActionTracker(client, policy, store=shared)`` for a fleet's
  `SharedActionTracker`);
- the *steps* (`Steps`): where each ending goes. The job journals it (durably where it
  guards a send) and reports from its store; the library yields `CancelResult`s. The
  engine knows nothing of SQLite, PostgreSQL or reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Generic, Protocol, TypeAlias, TypeVar

import attrs

from ._observe.hooks import with_request_key
from ._sending import CancelOutcome, GuardRefused, StoredBody, drain, send_one
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
from .reconcile import ReconcilePolicy, Reconciliation, SentCancel, Verdict, reconcile
from .tracker import ActionTracker, TrackedResult

if TYPE_CHECKING:
    from .client import MiraklConnectClient

__all__ = [
    "Choice",
    "Ending",
    "Engine",
    "ErrorDetail",
    "Outcome",
    "Standing",
    "Steps",
    "claims_adjustments",
    "detail_text",
    "ending_of_duplicate",
    "ending_of_send_error",
    "ending_of_tracking",
    "ending_of_untracked",
    "reconcile_note",
]

logger = logging.getLogger("mirakl_cancel")

_T = TypeVar("_T")
Item = TypeVar("Item")


# --- the outcome rules -----------------------------------------------------------------

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


def detail_text(detail: ErrorDetail) -> str:
    """One reason as a printable text."""
    if isinstance(detail, ActionError):
        return f"{detail.code}: {detail.message}" if detail.message else detail.code
    if isinstance(detail, ErrorItem):
        return f"{detail.field}: {detail.message}" if detail.field else detail.message
    return str(detail) or type(detail).__name__


def reconcile_note(reason: str) -> str:
    """How a reconciliation's reason reads among a request's errors."""
    return f"reconciled: {reason}"


@attrs.frozen
class Ending:
    """How one request ended, by the rules below: its outcome and why."""

    outcome: Outcome
    action_id: str | None = None
    status: ActionStatus | None = None
    errors: tuple[ErrorDetail, ...] = ()
    exception: MiraklError | None = None

    def texts(self) -> list[str]:
        """The reasons as printable texts, one per entry of `errors`.

        A REJECTED request gives the API's whole refusal instead (one text): its
        summary already lists every item with its field, and keeps the status and code
        that the items alone would lose.
        """
        if self.outcome is Outcome.REJECTED and self.exception is not None:
            return [str(self.exception)]
        return [detail_text(detail) for detail in self.errors]


def _reasons(error: MiraklError) -> tuple[ErrorDetail, ...]:
    if isinstance(error, ApiError) and error.errors:
        return error.errors
    return (error,)


def ending_of_send_error(error: MiraklError | None) -> Ending:
    """A request the API did not accept (so there is nothing to track)."""
    error = error or MiraklError("cancel neither accepted nor refused")
    if isinstance(error, (BadRequestError, NotFoundError)):
        kind = Outcome.REJECTED
    elif isinstance(error, UncertainDeliveryError):
        kind = Outcome.UNCERTAIN
    else:  # authentication, permission, 5xx after retries, ValidationError, ...
        kind = Outcome.ERROR
    return Ending(kind, errors=_reasons(error), exception=error)


def ending_of_tracking(tracked: TrackedResult) -> Ending:
    """An accepted request whose action tracking has ended."""
    status, error, action_id = tracked.status, tracked.error, tracked.action_id
    if status is not None:
        if status.state is ActionState.SUCCESS:
            return Ending(Outcome.SUCCEEDED, action_id, status)
        return Ending(Outcome.FAILED, action_id, status, errors=status.errors)
    error = error or MiraklError("tracking ended without a status")
    kind = Outcome.TIMED_OUT if isinstance(error, ActionTimeoutError) else Outcome.ERROR
    return Ending(kind, action_id, errors=_reasons(error), exception=error)


def ending_of_untracked(action_id: str) -> Ending:
    """An accepted request whose tracking stopped (tracker closed) before it ended."""
    error = MiraklError(f"tracking of action {action_id} stopped before it ended; "
                        "resume it from its action_id")
    return Ending(Outcome.ERROR, action_id, errors=(error,), exception=error)


def ending_of_duplicate(order_id: str, action_id: str, other: str) -> Ending:
    """A cancel answered with an action id already given to another request (`other`).

    The API's status of that action cannot tell whether *this* cancel was applied, so it
    is UNCERTAIN (never resent on its own; reconciliation may settle it)."""
    error = UncertainDeliveryError(
        f"the API answered with action {action_id}, already given to the cancel of "
        f"{other}: whether this cancel was applied is unknown; check the order before "
        "resending", order_id=order_id)
    return Ending(Outcome.UNCERTAIN, action_id, errors=(error,), exception=error)


@attrs.frozen
class Standing:
    """What is known of another cancel on the same orders, for `claims_adjustments`."""

    #: The API accepted it (it has an action id).
    accepted: bool
    #: Its outcome so far, if any (None while tracked).
    outcome: Outcome | str | None = None
    #: What an earlier reconciliation decided about it, if one did.
    verdict: Verdict | str | None = None


def claims_adjustments(standing: Standing) -> bool:
    """Whether another cancel competes with the uncertain ones for the same adjustments.

    Accepted cancels do (unless their action FAILED: it cancelled nothing), and so do
    cancels an earlier reconciliation found APPLIED: each must claim its share, or an
    uncertain cancel could take theirs and be called APPLIED when it was not.
    """
    if standing.accepted and standing.outcome != Outcome.FAILED:
        return True
    return standing.verdict == Verdict.APPLIED


class Choice(str, enum.Enum):
    """What a pass does with one item of its work."""

    SEND = "send"
    #: Send again (an UNCERTAIN request the caller chose to resend, or one proven
    #: NOT_APPLIED): the guard is told, so that its record says so.
    RESEND = "resend"
    #: Accepted earlier: track its action on.
    TRACK = "track"


# --- the steps: where each ending goes -------------------------------------------------

class Steps(Protocol[Item]):
    """The caller's side of the engine: what an item is, and what becomes of each ending.

    Every method is called from the event loop; the async ones are awaited before the
    item counts as ended (their failure is logged and stops the run). A method that
    records something durably must not return before it is durable.
    """

    def label(self, item: Item) -> str:
        """How logs and stop reasons name the item (the job: its key)."""

    def order_id(self, item: Item) -> str: ...

    def cancel_request(self, item: Item) -> CancelRequest | StoredBody:
        """The request to send for a SEND/RESEND item, or the exact bytes written for it
        when it was checked (`StoredBody`: the job's journaled body, sent as it is)."""

    def tracked_action(self, item: Item) -> tuple[str, float | None, float | None]:
        """A TRACK item's action id, when the server last saw a read of it, and when it
        accepted the cancel (wall; the first delay counts from there, not again)."""

    def send_key(self, item: Item) -> str | None:
        """The key carried on the cancel's hooks and spans (`Call.request_key`)."""

    async def before_attempt(self, item: Item, *, first: bool, resend: bool) -> None:
        """Awaited right before each attempt of the cancel leaves; raise to refuse it."""

    async def send_failed(self, item: Item, outcome: CancelOutcome, left: bool) -> None:
        """The API did not accept it (`outcome.error`); `left`: an attempt left."""

    def guard_failed(self, item: Item, error: BaseException, left: bool) -> None:
        """`before_attempt` raised: the attempt did not leave (an earlier one may have)."""

    def accepted(self, item: Item, outcome: CancelOutcome) -> Awaitable[None] | None:
        """The API accepted it: record the action id. Called at once, in answer order;
        tracking starts when the returned awaitable (if any) resolves."""

    def accept_failed(self, item: Item, action_id: str, error: BaseException) -> None:
        """Recording the action id failed: the item ends untracked."""

    def tracking(self, item: Item, action_id: str, last_read: float | None,
                 accepted_at: float | None = None) -> None:
        """Its action is now tracked (`last_read`: the last read the server may have seen;
        `accepted_at`: an earlier acceptance, None when just accepted)."""

    async def earlier_owner(self, action_id: str) -> str | None:
        """The label of the request of this run, already ended, that was given
        `action_id` (asked only when the engine's compact memory says one may have been;
        None: none was, the ids only shared a hash)."""

    async def duplicate(self, item: Item, outcome: CancelOutcome, other: str) -> None:
        """Answered with the action id of another request (labelled `other`), still
        tracked or already ended: end it by `ending_of_duplicate`."""

    async def tracked(self, item: Item, result: TrackedResult) -> None:
        """Its action's tracking ended (final status, timeout, or a read error)."""

    async def untracked(self, item: Item, action_id: str) -> None:
        """The tracker closed (or refused the action) before its action ended."""

    def resolved(self, item: Item, *, tracked: bool) -> None:
        """The item has ended for this pass (after any of the above)."""

    # settling -----------------------------------------------------------------------

    def uncertain(self, only: set[str] | None) -> AsyncIterator[tuple[Item, SentCancel | None]]:
        """The UNCERTAIN items to reconcile (`only`: labels of the last round's resends);
        None for an item with no send time (it cannot be judged)."""

    def rivals(self, orders: set[str], exclude: set[str]) -> AsyncIterator[
            tuple[Standing, Callable[[], SentCancel]]]:
        """The other cancels on `orders` (not labelled in `exclude`), with their standing."""

    def settling(self, count: int, wait: float, deadline: datetime) -> None:
        """`count` cancels wait `wait` seconds, until `deadline`, before being judged."""

    def reading(self, count: int) -> None:
        """The orders of `count` cancels are being read."""

    async def read_over(self, failed: MiraklError | None = None) -> None:
        """The settling wait or the orders' reading ended (interrupted, or `failed`:
        every cancel of the round is then handed to `unjudged`)."""

    async def judged(self, item: Item, verdict: Reconciliation, *, resend: bool) -> None:
        """Reconciliation's verdict on `item`; `resend`: it will be sent again now."""

    async def unjudged(self, item: Item, reason: str, error: MiraklError | None) -> None:
        """`item` could not be judged (no send time, or the orders could not be read)."""

    def resending(self, items: Sequence[Item]) -> None:
        """`items`, proven NOT_APPLIED, are about to be sent again."""


#: What `_unless` returns when the event came first.
_INTERRUPTED = object()


async def _unless(event: asyncio.Event, awaitable: Awaitable[_T]) -> _T | object:
    """Await `awaitable`, unless `event` is set first: then cancel it, return _INTERRUPTED.

    Only for waits and reads that are safe to abandon (a sleep, a v2-listOrders call).
    """
    task = asyncio.ensure_future(awaitable)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return _INTERRUPTED
    return task.result()


async def first_of(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Engine(Generic[Item]):
    """send → track → settle → reconcile → resend (see the module docstring).

    `tracker`: one `ActionTracker` for every pass (the caller's, left open), or a
    factory called at each pass for a tracker the pass closes at its end. `guarded`:
    whether `Steps.before_attempt` runs before each attempt (the library has no guard,
    and skips its cost).
    """

    def __init__(self, client: MiraklConnectClient, steps: Steps[Item], *,
                 tracker: ActionTracker | Callable[[], ActionTracker],
                 concurrency: int | None = None,
                 reconcile: ReconcilePolicy | None = None, guarded: bool = True) -> None:
        self.client = client
        self.steps = steps
        self.concurrency = concurrency or client.max_concurrency
        self.policy = reconcile
        #: Whether `Steps.before_attempt` guards each attempt (the library needs none).
        self.guarded = guarded
        self._tracker_source = tracker
        #: Stop sending new requests (a signal, or a failure every request would share).
        self.stop = asyncio.Event()
        #: Stop everything: also stop waiting for actions.
        self.interrupt = asyncio.Event()
        self.stop_reason: str | None = None
        #: `interrupt` stopped a settling wait or an orders' read (not a resend pass).
        self.settling_interrupted = False
        #: The tracker of the current pass.
        self.tracker: ActionTracker | None = None
        #: Accepted action ids of the current pass and the item each belongs to.
        self._owners: dict[str, Item] = {}
        #: The action ids handed to the tracker (a subset of `_owners`).
        self._tracking: set[str] = set()
        #: The action ids of this engine's items that have ended, as 64-bit hashes (about
        #: 60 B each, whatever the id's length): a later cancel answered with one of them
        #: is a duplicate too. A hit is confirmed (and named) by `Steps.earlier_owner`.
        self._ended: set[int] = set()
        self._outstanding = 0
        self._all_done = asyncio.Event()
        #: Work running on its own (action-id marks, recorded endings); a pass waits for it.
        self._recording: set[asyncio.Future[None]] = set()

    # stopping ------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop sending new requests; what was accepted is still tracked."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    # bookkeeping ----------------------------------------------------------------------

    def _begin(self) -> None:
        self._outstanding += 1

    def _resolve(self, item: Item, *, tracked: bool = False) -> None:
        self._outstanding -= 1
        self.steps.resolved(item, tracked=tracked)
        if self._outstanding <= 0:
            self._all_done.set()

    def _background(self, work: Awaitable[None]) -> None:
        """Run `work` on its own; the pass waits for it before it ends."""
        task = asyncio.ensure_future(work)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _ending(self, item: Item, work: Awaitable[None], *, tracked: bool = False) -> None:
        """Await one recorded ending, then resolve the item (even if recording failed:
        the pass must never wait for it forever)."""
        try:
            await work
        except Exception:
            logger.exception("recording the ending of %s failed", self.steps.label(item))
        finally:
            self._resolve(item, tracked=tracked)

    # a pass ---------------------------------------------------------------------------

    async def run_pass(self, work: AsyncIterable[tuple[Item, Choice]]) -> bool:
        """Send and track `work` to the end; True when interrupted.

        Work is pulled lazily by `concurrency` senders, so a million-row source costs a
        million items over time, not at once. An error of the source itself is raised
        once everything already handed out has ended.
        """
        if isinstance(self._tracker_source, ActionTracker):
            tracker, own = self._tracker_source, False
        else:
            tracker, own = self._tracker_source(), True
        self.tracker = tracker
        self._owners.clear()
        self._tracking.clear()
        self._outstanding = 1  # the source, until it is exhausted
        self._all_done.clear()
        unsubscribe = tracker.subscribe(self._on_tracked, self._on_tracker_closed)

        async def handle(got: tuple[Item, Choice]) -> None:
            item, choice = got
            if choice is Choice.TRACK:
                self._begin()
                action_id, last_read, accepted_at = self.steps.tracked_action(item)
                self._track(item, action_id, last_read, accepted_at)
                return
            if self.stop.is_set():
                return  # not sent: the caller's record of it is unchanged
            self._begin()
            try:
                await self._send(item, resend=choice is Choice.RESEND)
            except Exception as exc:
                # Whatever failed (recording an ending, a bug), the item must count as
                # ended, or the pass would wait for it forever; and sending on past an
                # unexplained failure is not worth the risk.
                label = self.steps.label(item)
                logger.exception("sending %s failed unexpectedly", label)
                self.request_stop(f"stopping: sending {label} failed unexpectedly "
                                  f"({type(exc).__name__}: {exc})")
                self._resolve(item)

        try:
            # Sends in flight finish (and are recorded) even after a stop or an interrupt;
            # after a stop, what is to be tracked is still handed over.
            failure: Exception | None = None
            try:
                await drain(work, handle, self.concurrency,
                            more=lambda: not self.interrupt.is_set())
            except Exception as exc:  # the source's own (`handle` lets nothing out)
                failure = exc
            self._outstanding -= 1  # everything is handed out
            if self._outstanding > 0:
                await first_of(self.interrupt, self._all_done)
            if failure is not None:
                raise failure
            return self.interrupt.is_set()
        finally:
            # Action ids and endings already seen are recorded before the pass ends.
            while self._recording:
                # Drop what is done here: a gather of done tasks need not yield to the
                # loop, so their own done-callbacks may not have run yet (a spin on 3.13).
                recording = list(self._recording)
                await asyncio.gather(*recording, return_exceptions=True)
                self._recording.difference_update(recording)
            unsubscribe()
            if own:
                await tracker.close(drain=False)

    async def _send(self, item: Item, *, resend: bool) -> None:
        steps = self.steps
        request = steps.cancel_request(item)
        left = False

        async def guard() -> None:
            nonlocal left
            await steps.before_attempt(item, first=not left, resend=resend)
            left = True

        key = steps.send_key(item)
        sending = send_one(self.client, request, guard=guard if self.guarded else None)
        try:
            outcome = await (sending if key is None else with_request_key(key, sending))
        except GuardRefused as exc:
            steps.guard_failed(item, exc.__cause__ or exc, left)
            self._resolve(item)
            return
        accepted = outcome.accepted
        if accepted is None:
            await steps.send_failed(item, outcome, left)
            self._resolve(item)
            return
        action_id = accepted.action_id
        owner = self._owners.get(action_id)
        other = steps.label(owner) if owner is not None else None
        if other is None and hash(action_id) in self._ended:
            other = await steps.earlier_owner(action_id)  # rare: confirm, and name it
        if other is not None:
            # One action id for two requests (issue 11), the first still tracked or
            # already ended: the second cannot know from the action's status whether it
            # was applied. Checked before its action id is recorded, so that no record
            # ever ties it to an action that is not (provably) its own.
            logger.warning("the cancel of order %s was answered with action %s, already "
                           "given to %s: UNCERTAIN", request.order_id, action_id, other)
            self._background(self._ending(item, steps.duplicate(item, outcome, other)))
            return
        self._owners[action_id] = item
        # The next request's send mark is made after this one (the caller records in
        # order); the sender goes on while it is being made durable.
        recorded = steps.accepted(item, outcome)
        self._background(self._accepted(item, action_id, recorded))

    async def _accepted(self, item: Item, action_id: str,
                        recorded: Awaitable[None] | None) -> None:
        """Wait for the action id to be recorded, then track it."""
        try:
            if recorded is not None:
                await recorded
        except Exception as exc:
            self._owners.pop(action_id, None)
            self._ended.add(hash(action_id))
            self.steps.accept_failed(item, action_id, exc)
            self._resolve(item)
            return
        if self.interrupt.is_set():
            self._owners.pop(action_id, None)
            self._resolve(item)  # recorded; tracking has stopped (a re-run tracks it on)
            return
        self._track(item, action_id, None)

    def _track(self, item: Item, action_id: str, last_read: float | None,
               accepted_at: float | None = None) -> None:
        tracker = self.tracker
        assert tracker is not None
        self._owners[action_id] = item
        try:
            tracker.add(action_id, order_id=self.steps.order_id(item), last_polled_at=last_read,
                        accepted_at=accepted_at)
        except (RuntimeError, ValidationError):  # closed, or an action id it refuses
            self._owners.pop(action_id, None)
            self._background(self._ending(item, self.steps.untracked(item, action_id)))
            return
        self._tracking.add(action_id)
        self.steps.tracking(item, action_id, last_read, accepted_at)

    def _on_tracked(self, result: TrackedResult) -> None:
        action_id = result.action_id
        if action_id not in self._tracking:
            return
        self._tracking.discard(action_id)
        item = self._owners.pop(action_id)
        self._ended.add(hash(action_id))
        self._background(self._ending(item, self.steps.tracked(item, result), tracked=True))

    def _on_tracker_closed(self) -> None:
        for action_id in list(self._tracking):
            item = self._owners.pop(action_id)
            self._ended.add(hash(action_id))
            self._background(self._ending(item, self.steps.untracked(item, action_id),
                                          tracked=True))
        self._tracking.clear()

    # settling -------------------------------------------------------------------------

    async def reconcile_rounds(self) -> bool:
        """Reconcile every UNCERTAIN item; resend the NOT_APPLIED ones if the policy says
        so, and reconcile those resends again if they too end UNCERTAIN, `max_rounds`
        at most. True when interrupted (what was not judged stays UNCERTAIN)."""
        policy = self.policy
        assert policy is not None
        only: set[str] | None = None  # later rounds: just the resends that came back uncertain
        for round_number in range(1, policy.max_rounds + 2):
            held = [pair async for pair in self.steps.uncertain(only)]
            if not held:
                return False
            resend = policy.resend and round_number <= policy.max_rounds
            unapplied = await self._judge_round(held, policy, resend=resend)
            if unapplied is None:
                return True
            if not (resend and unapplied):
                return False
            self.steps.resending(unapplied)
            if await self.run_pass(_resends(unapplied)):
                return True
            if self.stop.is_set():
                return False
            only = {self.steps.label(item) for item in unapplied}
        return False

    async def _judge_round(self, held: Sequence[tuple[Item, SentCancel | None]],
                           policy: ReconcilePolicy, *, resend: bool) -> list[Item] | None:
        """Wait out the settling window, judge `held`, hand each verdict over.

        Returns the items proven NOT_APPLIED, or None when interrupted."""
        steps = self.steps
        items: list[Item] = []
        sent: list[SentCancel] = []
        for item, cancel in held:
            if cancel is None:  # only a damaged journal has no send time
                await steps.unjudged(item, "the journal has no send time for this cancel, so "
                                     "its adjustments cannot be dated: check the order", None)
                continue
            items.append(item)
            sent.append(cancel)
        if not sent:
            return []
        deadline = max(s.sent_at for s in sent) + timedelta(seconds=policy.settle)
        wait = (deadline - datetime.now(timezone.utc)).total_seconds()
        steps.settling(len(sent), wait, deadline)
        if wait > 0 and await _unless(self.interrupt, asyncio.sleep(wait)) is _INTERRUPTED:
            self.settling_interrupted = True
            await steps.read_over()
            return None
        steps.reading(len(sent))
        labels = {steps.label(item) for item in items}
        others = [make() async for standing, make in steps.rivals(
            {s.request.order_id for s in sent}, labels) if claims_adjustments(standing)]
        try:
            verdicts = await _unless(self.interrupt,
                                     reconcile(self.client, sent, others=others, policy=policy))
        except MiraklError as exc:
            await steps.read_over(exc)
            for item in items:
                await steps.unjudged(item, f"reconciliation failed: {exc}", exc)
            return []
        await steps.read_over()
        if verdicts is _INTERRUPTED:
            self.settling_interrupted = True
            return None
        assert isinstance(verdicts, list)
        unapplied: list[Item] = []
        for item, verdict in zip(items, verdicts, strict=True):
            again = resend and verdict.verdict is Verdict.NOT_APPLIED
            await steps.judged(item, verdict, resend=again)
            if again:
                unapplied.append(item)
        return unapplied


async def _resends(items: Sequence[_T]) -> AsyncIterator[tuple[_T, Choice]]:
    for item in items:
        yield item, Choice.RESEND
