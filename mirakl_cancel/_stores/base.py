"""The job's durable state as the job sees it: the store interface and its records.

The bulk job (``_jobs/job.py``) keeps everything that makes it resumable without ever
cancelling twice in a *store*: the plan (requests, their exact bodies, the input rows
they cover), each request's state and send marks, action ids, the last-read times that
keep the once-a-minute ceiling across processes, final outcomes and reconciliation
verdicts. The job talks only to `JobStore`; SQLite (``sqlite.py``) is the first
implementation, and a second one (PostgreSQL, for worker fleets: ``pgjob.py``) goes beside
it without touching the job.

What every store must guarantee, whatever it is built on:

- **Durable guarding marks.** `mark_sending` (and `mark_send_attempt`) resolve only
  once the mark would survive a crash or a power cut: the job awaits it right before a
  POST leaves, so no POST leaves unrecorded. `mark_accepted` resolves once the action
  id is durable: a 202 the process has seen is never forgotten if it could be written.
- **Order.** Marks take effect in the order they were made; a read sees every mark
  made before it. (The job relies on it: a request is never read back older than it is.)
- **A failed guarding mark stops sending.** Once a mark could not be written, every
  later `mark_sending` / `mark_send_attempt` fails too, so nothing leaves unguarded.
- **Off the event loop.** Waiting for a disk flush must not stall other requests or
  polls: marks are awaitables, and the marks of requests leaving together may share one
  flush (group commit).
- **Bounded memory.** Reads stream in chunks (`requests`, `rows` are async iterators),
  so a million-row job never sits in memory whole.
"""

from __future__ import annotations

import abc
import enum
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import Any

import attrs

from .._engine import Outcome
from ..reconcile import Verdict

__all__ = [
    "FleetJobStore",
    "JobInfo",
    "JobStore",
    "JournalBusyError",
    "JournalError",
    "JournalRequest",
    "JournalRow",
    "PlannedRequest",
    "PlannedRow",
    "RequestState",
    "reconciled_end",
]


class RequestState(str, enum.Enum):
    """Where a request is in its life; see the module docstring."""

    PENDING = "PENDING"
    SENDING = "SENDING"
    ACCEPTED = "ACCEPTED"
    UNCERTAIN = "UNCERTAIN"
    DONE = "DONE"

    def __str__(self) -> str:
        return self.value


class JournalError(Exception):
    """The journal cannot be used (corrupt, from another version, another job)."""


class JournalBusyError(JournalError):
    """Another process has the journal open: running the job twice would double-send."""


@attrs.frozen
class PlannedRow:
    """One input row as the journal keeps it (for the report)."""

    row_number: int
    line_number: int
    order_id: str | None
    order_line_id: str | None
    product_id: str | None
    quantity: int | None
    #: Set for an invalid row that was skipped: why it was not sent.
    errors: tuple[str, ...] = ()


@attrs.frozen
class PlannedRequest:
    """One POST to make: its key, order, the rows it covers and its exact body."""

    key: str
    order_id: str
    rows: tuple[int, ...]
    body: str

    @staticmethod
    def make_key(order_id: str, rows: Sequence[int]) -> str:
        """A key stable across runs of the same input: order id and row numbers."""
        return f"{order_id}#" + ",".join(str(r) for r in rows)


@attrs.frozen
class JobInfo:
    """The `job` record: which input this journal belongs to."""

    input_path: str
    input_sha256: str
    input_format: str
    base_url: str
    created_at: str
    options: dict[str, Any]
    #: Whether every request of the plan is recorded. A new job's requests are journaled
    #: in chunks while the first ones are sent; a job stopped before the last chunk is
    #: planned on (from the same input) when it is resumed.
    plan_complete: bool = True


@attrs.frozen
class JournalRequest:
    """A `requests` record."""

    key: str
    seq: int
    order_id: str
    rows: tuple[int, ...]
    body: str
    state: RequestState
    attempts: int
    action_id: str | None
    sent_at: float | None
    accepted_at: float | None
    poll_started_at: float | None
    last_polled_at: float | None
    finished_at: float | None
    outcome: str | None
    status: str | None
    errors: tuple[str, ...]
    resendable: bool
    #: What reconciliation last decided (APPLIED, NOT_APPLIED, UNCERTAIN), if it ran.
    reconcile_verdict: str | None = None
    reconcile_reason: str | None = None
    #: Ids of the CANCELATION adjustments the verdict rests on.
    reconcile_adjustments: tuple[str, ...] = ()
    reconciled_at: float | None = None

    def last_contact(self, now: float | None = None) -> float | None:
        """Wall time of the latest read of this action the server may have seen.

        A poll that was started but never recorded as finished (the process died during
        it) may have reached the server as late as the moment of death, so it counts
        as `now`: waiting a full interval from the resume is the only safe assumption.
        """
        last = max((t for t in (self.accepted_at, self.last_polled_at) if t is not None),
                   default=None)
        if self.poll_started_at is not None and (last is None or self.poll_started_at > last):
            return time.time() if now is None else now
        return last


@attrs.frozen
class JournalRow:
    """A `rows` record joined with its request (None for a skipped invalid row)."""

    row_number: int
    line_number: int
    order_id: str | None
    order_line_id: str | None
    product_id: str | None
    quantity: int | None
    errors: tuple[str, ...]
    request: JournalRequest | None




class JobStore(abc.ABC):
    """The job's durable state (see the module docstring for the guarantees).

    Timestamps are wall-clock seconds (`time.time()`); `at=None` means now, taken when
    the mark is *made* (not when a writer gets to it).

    A mark is made when it is *called*, not when its awaitable is awaited: marks take
    effect in call order, so a caller may make a mark, go on, and await it later.
    """

    # --- reading ------------------------------------------------------------------------

    @abc.abstractmethod
    async def job(self) -> JobInfo | None:
        """The job this store holds, or None if none was created (or creation never ended)."""

    @abc.abstractmethod
    async def counts(self) -> dict[RequestState, int]:
        """Requests per state (every state present, zero when none)."""

    @abc.abstractmethod
    async def request(self, key: str) -> JournalRequest:
        """One request by key (KeyError if absent)."""

    @abc.abstractmethod
    def requests(self, *states: RequestState, orders: Collection[str] | None = None,
                 bodies: bool = True) -> AsyncIterator[JournalRequest]:
        """Requests in plan order (optionally only in `states`, or of `orders`), streamed.

        `bodies=False` leaves each `body` empty: a cheaper pass (to count, to choose)."""

    @abc.abstractmethod
    def rows(self) -> AsyncIterator[JournalRow]:
        """Every input row in file order with its request, streamed (for the report)."""

    @abc.abstractmethod
    async def skipped_rows(self) -> int:
        """How many input rows no request covers (invalid rows skipped by
        `--skip-invalid`). With `outcome_counts()` that is all a count of the rows per
        outcome needs, without reading every row and its request's body."""

    @abc.abstractmethod
    async def outcome_counts(self) -> list[tuple[RequestState, str | None, int, int]]:
        """(state, outcome, requests, rows) for each pair of state and recorded outcome
        the requests are in: the closing count of a job, counted by the store (one
        query, whatever the job's size) instead of every request read back."""

    # --- the guarding marks: durable before they resolve ---------------------------------

    @abc.abstractmethod
    def mark_sending(self, key: str, at: float | None = None, *,
                           resend: bool = False) -> Awaitable[None]:
        """`key` is about to be POSTed: from here on it may have been sent."""

    @abc.abstractmethod
    def mark_send_attempt(self, key: str, at: float | None = None) -> Awaitable[None]:
        """Another attempt of the SENDING `key` is about to leave (moves `sent_at`)."""

    @abc.abstractmethod
    def mark_accepted(self, key: str, action_id: str, at: float | None = None) -> Awaitable[None]:
        """The API accepted `key` as `action_id`."""

    # --- other marks: committed in order, flushed with the next durable one or at close --

    @abc.abstractmethod
    def mark_unsent(self, key: str, outcome: str, errors: Sequence[str],
                          at: float | None = None) -> Awaitable[None]:
        """A PENDING request failed before any attempt left: final, resendable."""

    @abc.abstractmethod
    def mark_uncertain(self, key: str, errors: Sequence[str],
                             at: float | None = None) -> Awaitable[None]:
        """The POST's answer was lost: it may have been processed."""

    @abc.abstractmethod
    def mark_done(self, key: str, outcome: str, *, status: str | None = None,
                        errors: Sequence[str] = (), resendable: bool = False,
                        at: float | None = None) -> Awaitable[None]:
        """The final result of `key`."""

    @abc.abstractmethod
    def mark_not_sent(self, key: str) -> Awaitable[None]:
        """Back to PENDING: the request was marked SENDING but provably never left (no
        connection could ever be made)."""

    @abc.abstractmethod
    def mark_tracking_stopped(self, key: str, outcome: str,
                                    errors: Sequence[str]) -> Awaitable[None]:
        """Tracking gave up for this run; the request stays ACCEPTED."""

    @abc.abstractmethod
    def mark_reconciled(self, key: str, verdict: str, reason: str,
                              adjustments: Sequence[str] = (), *, errors: Sequence[str],
                              at: float | None = None) -> Awaitable[None]:
        """What reconciliation decided about an UNCERTAIN request."""

    @abc.abstractmethod
    def mark_interrupted_sends(self, message: str) -> Awaitable[list[str]]:
        """On resume: SENDING requests (the process died mid-POST) become UNCERTAIN."""

    @abc.abstractmethod
    def mark_poll_started(self, action_id: str, at: float | None = None) -> Awaitable[None]:
        """A status read of `action_id` is about to leave. Committed (crash-safe, not
        necessarily fsync'd) before it resolves: a process killed during the read must
        leave a trace that makes the next one wait a full interval."""

    @abc.abstractmethod
    def note_polled(self, action_id: str, at: float | None = None,
                    status: str | None = None) -> None:
        """A status read of `action_id` ended (lazy: written soon, flushed at close)."""

    # --- lifetime -----------------------------------------------------------------------

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every mark made so far is durable."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Flush and release the store's workers (the store cannot be used afterwards)."""

    @property
    def failure(self) -> BaseException | None:
        """Why this store refuses every guarding mark from now on (it failed), or None.

        A SENDING mark made ahead of its POST was durable before a later failure: its
        sender asks this before it lets the POST go, as a new mark would be refused."""
        return None


class FleetJobStore(JobStore):
    """A job store shared by several worker processes at once (a fleet job).

    On top of `JobStore`: each worker holds a *lease* (renewed by a heartbeat); it sends
    and tracks only the requests it has *claimed*, and its guarding marks are refused
    once its lease lapsed. When a worker's lease lapses, its SENDING requests become
    UNCERTAIN (it may have died mid-POST) and the rest of its claims go back to the pool,
    for the others to send or track. `mark_interrupted_sends` does that for every lapsed
    worker of the job.
    """

    @abc.abstractmethod
    def claims(self) -> AsyncIterator[JournalRequest]:
        """The requests this worker claimed, in batches, until the fleet's job is done:
        nothing left to send or track, other than what this worker holds already."""

    @abc.abstractmethod
    async def reconcile_turn(self) -> bool:
        """Wait until no other worker reconciles the job; True when this one is to
        reconcile (then call `end_reconcile_turn`), False when another already did."""

    @abc.abstractmethod
    async def end_reconcile_turn(self, *, complete: bool) -> None:
        """This worker's reconciliation ended (`complete`: not interrupted)."""

    @property
    def stopped_because(self) -> str | None:
        """Why this worker stopped taking part before the job ended (its lease lapsed,
        or its marks could not be recorded), or None: then its run ends only with the
        job, and whatever is not final in the job is so because of this worker's run."""
        return None


#: Where reconciliation leaves an UNCERTAIN request. NOT_APPLIED ends DONE but is *not*
#: flagged resendable: only an explicit `--resend-unapplied` sends it again.
_RECONCILED_END = {
    Verdict.APPLIED: (RequestState.DONE, Outcome.SUCCEEDED),
    Verdict.NOT_APPLIED: (RequestState.DONE, Outcome.NOT_APPLIED),
    Verdict.UNCERTAIN: (RequestState.UNCERTAIN, Outcome.UNCERTAIN),
}


def reconciled_end(verdict: str) -> tuple[str, str]:
    """The (state, outcome) a store records for a reconciliation `verdict` (one rule for
    every store); ValueError for a verdict that is not one of `Verdict`'s."""
    try:
        state, outcome = _RECONCILED_END[Verdict(verdict)]
    except ValueError:
        raise ValueError(f"unknown reconciliation verdict {verdict!r}") from None
    return state.value, outcome.value


def now(at: float | None) -> float:
    """`at`, or the wall clock when it is None."""
    return time.time() if at is None else at
