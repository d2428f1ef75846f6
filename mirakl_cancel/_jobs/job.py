"""The resumable bulk job behind `mirakl-cancel run` (and `mirakl-cancel demo`).

Order of events for one request, each step committed to the journal before the next:

1. ``SENDING`` is committed (fsync'd) right before the POST leaves: from the guard the
   engine sets on each send (`client.guards`), after any wait for a concurrency slot,
   the rate limit or a token, so that a cancel still queued when the process dies is
   not mistaken for one in flight. (With ``--mark-ahead``, a fresh request's mark is
   *made* ``--concurrency`` requests ahead, so that its flush overlaps the POSTs before
   it (`_Run._ahead`); the guard still waits for it to be durable. A clean stop puts
   the requests marked but not sent back to PENDING; a crash leaves them UNCERTAIN
   too, at most ``--concurrency`` more than the POSTs in flight.)
2. the ``action_id`` is committed (``ACCEPTED``) as soon as the 202 arrives;
3. every status read is bracketed by "poll started" / "polled at" marks, so that a
   resumed job knows when the server last saw a read of the action;
4. the final result is committed (``DONE``).

A resumed job therefore sends only requests that certainly never left (``PENDING``),
tracks accepted actions on from their last read, and reports requests caught
mid-POST as UNCERTAIN without sending them again (unless ``--resend-uncertain``).

With ``--reconcile`` (and ``mirakl-cancel reconcile``), once sending and tracking are
over, every UNCERTAIN request is checked against its order's adjustments after its
settling window (``reconcile.py``): proven applied → SUCCEEDED, proven not applied →
NOT_APPLIED (sent again through the same journaled path with ``--resend-unapplied``),
undecided → stays UNCERTAIN with the reason.

On SIGINT/SIGTERM it stops taking new requests, lets the POSTs in flight finish and
be journaled (never losing an action_id), stops tracking, writes the report and the
summary so far, and exits 130. A second signal aborts the POSTs in flight too; those
stay ``SENDING`` and are reported UNCERTAIN on the next run: never resent blindly, only
after reconciliation proved them not applied. A signal during the settling wait (or
the orders read) of a reconciliation stops it too: unjudged requests stay UNCERTAIN.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import attrs

from .._constants import DEFAULT_JOB_CONCURRENCY, DEFAULT_PROGRESS_INTERVAL
from .._engine import (
    Choice,
    Engine,
    Outcome,
    Standing,
    ending_of_duplicate,
    ending_of_send_error,
    ending_of_tracking,
    reconcile_note,
)
from .._http.auth import Auth
from .._http.net import network_options_from_env
from .._http.pacing import SharedStore
from .._http.retry import RetryPolicy
from .._observe.hooks import Hooks
from .._sending import CancelOutcome, StoredBody
from .._serde import cancelation_json, loads, request_body, structure_request
from .._stores.base import (
    FleetJobStore,
    JobInfo,
    JobStore,
    JournalBusyError,
    JournalError,
    JournalRequest,
    PlannedRequest,
    PlannedRow,
    RequestState,
)
from .._stores.sqlite import JobPlan, Journal, PlanStaging, SqliteStore
from .._text import printable
from ..batching import group_by_order
from ..client import MiraklConnectClient
from ..errors import (
    AuthenticationError,
    ConnectError,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
)
from ..models import (
    ActionStatus,
    Cancelation,
    CancelRequest,
)
from ..reconcile import ReconcilePolicy, Reconciliation, SentCancel, Verdict
from ..tracker import ActionTracker, PollPolicy, TrackedResult, first_read_due
from .input import (
    CheckedLine,
    InputError,
    InputFormat,
    InputIssue,
    InvalidRow,
    ParsedInput,
    open_input,
)
from .progress import Progress, ProgressLogHandler
from .report import (
    JobCounts,
    ReportWriter,
    check_report_path,
    report_line,
    request_outcome,
    row_outcome,
    summary_table,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "JobOptions",
           "check_job_paths", "default_journal_path", "reconcile_job", "run_job", "tally"]

logger = logging.getLogger("mirakl_cancel")

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

def default_journal_path(input_path: Path) -> Path:
    """`<input>.journal.sqlite` beside the input: the same command finds the same journal."""
    return input_path.with_name(input_path.name + ".journal.sqlite")


@attrs.frozen
class JobOptions:
    """Everything `run` (and `reconcile`) needs, already resolved from flags and environment.

    `input_path` is None for `reconcile`, which works from the journal alone.
    """

    input_path: Path | None
    base_url: str
    input_format: str | None = None
    #: The input's text encoding (None: UTF-8), and its decimal comma (None: detected).
    encoding: str | None = None
    decimal_comma: bool | None = None
    journal_path: Path | None = None
    report_path: Path | None = None
    concurrency: int = DEFAULT_JOB_CONCURRENCY
    rate_limit: float | None = None
    max_lines_per_request: int | None = None
    policy: PollPolicy = attrs.field(factory=PollPolicy)
    resend_uncertain: bool = False
    #: Make each fresh request's SENDING mark ahead of its POST (`_Run._ahead`): faster on
    #: a slow disk; a crash then leaves up to `concurrency` more requests UNCERTAIN.
    mark_ahead: bool = False
    skip_invalid: bool = False
    dry_run: bool = False
    force: bool = False
    quiet: bool = False
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    #: None: a bar if stderr is a terminal. Tests and the demo may force it.
    progress_tty: bool | None = None
    retry: RetryPolicy | None = None
    http_timeout: float | None = None
    #: Reconcile UNCERTAIN requests after the run (`resend`: --resend-unapplied).
    reconcile: ReconcilePolicy | None = None
    #: Hooks for the job's client (e.g. the metrics of --metrics-port).
    hooks: Hooks | None = None
    #: The exact command that resumes this job, printed when a run stops early.
    resume_command: str | None = None
    #: The command that settles the job's UNCERTAIN cancels later (`mirakl-cancel reconcile`).
    reconcile_command: str | None = None


# --- planning ------------------------------------------------------------------------

def plan_requests(parsed: ParsedInput,
                  max_lines: int | None) -> tuple[list[PlannedRequest], list[CancelRequest]]:
    """Group valid rows per order (`group_by_order`) and key each request by its rows."""
    requests = group_by_order(((r.order_id, r.cancelation) for r in parsed.rows),
                              max_lines=max_lines)
    queues: dict[str, collections.deque[int]] = {}
    for row in parsed.rows:
        queues.setdefault(row.order_id, collections.deque()).append(row.row)
    by_number = {row.row: row for row in parsed.rows}
    planned: list[PlannedRequest] = []
    for request in requests:
        queue = queues[request.order_id]
        rows = tuple(queue.popleft() for _ in request.cancelations)
        # group_by_order keeps each order's lines in file order: check, don't assume.
        assert [by_number[n].cancelation for n in rows] == list(request.cancelations)
        planned.append(PlannedRequest(PlannedRequest.make_key(request.order_id, rows),
                                      request.order_id, rows, request_body(request).decode()))
    return planned, requests


def _cancelation_total(c: Cancelation) -> Decimal:
    """What one line refunds: price + shipping + taxes (one currency per row)."""
    return c.price.amount + c.shipping_price.amount + sum(
        (t.amount.amount for t in (*c.taxes, *c.shipping_taxes)), Decimal(0))


def _amounts(totals: dict[str, Decimal]) -> str:
    return ", ".join(f"{amount} {currency}" for currency, amount in sorted(totals.items()))


def print_dry_run(staging: PlanStaging, max_lines: int | None, out: TextIO) -> None:
    """What `run` would send: one line per request, then totals. Nothing is sent.

    Streamed from the staging file: the requests are never all in memory."""
    print(f"dry run: {staging.request_count(max_lines)} request(s) for {staging.orders()} "
          f"order(s), {staging.valid_rows} line(s); nothing sent", file=out)
    count = units = 0
    totals: dict[str, Decimal] = collections.defaultdict(Decimal)
    for request in staging.plan(max_lines):
        count += 1
        units += request.units
        for currency, amount in request.totals.items():
            totals[currency] += amount
        rows = ",".join(str(n) for n in request.rows)
        print(f"  {printable(request.order_id)}: {len(request.rows)} line(s), "
              f"{request.units} unit(s), {_amounts(request.totals)} (rows {rows})", file=out)
    print(f"total: {count} request(s), {staging.valid_rows} line(s), {units} unit(s), "
          f"{_amounts(totals) or 'no amount'} (price + shipping + taxes)", file=out)
    if staging.invalid_rows:
        print(f"{staging.invalid_rows} invalid row(s) would be skipped", file=out)


# --- the run --------------------------------------------------------------------------

#: How long a SENDING mark made ahead of its POST (`_Run._ahead`) stands for the POST's
#: own: when a sender takes it later (a slow POST before it, a wait for a token), the
#: first attempt moves `sent_at` to itself with a durable mark, so that reconciliation's
#: settling window (15 minutes by default) never starts more than this before the POST.
AHEAD_FRESH = 1.0

#: Where a pass takes its work: requests with what to do with each (see `_engine`).
WorkSource = AsyncIterator[tuple[JournalRequest, Choice]]


class _Run:
    """One execution of a job against its store: the engine's steps, journaled.

    The engine (`_engine.Engine`) sends, tracks, settles, reconciles and resends; this
    class is where each of its steps goes: durable marks in the store (the SENDING mark
    guards every attempt), progress, and what the operator is told. Two seams, for a
    fleet worker: `execute(work=...)` takes the work from another source than the
    store's requests (e.g. rows claimed from a shared store), and `tracker` makes the
    tracker of each pass (e.g. ``ActionTracker(client, policy, store=shared)``).
    """

    def __init__(self, options: JobOptions, store: JobStore, client: MiraklConnectClient,
                 progress: Progress, err: TextIO | None = None, *,
                 tracker: Callable[[], ActionTracker] | None = None) -> None:
        self.options = options
        self.store = store
        self.client = client
        self.progress = progress
        self.err = err or sys.stderr
        self.engine: Engine[JournalRequest] = Engine(
            client, self, tracker=tracker or self._new_tracker,
            concurrency=options.concurrency, reconcile=options.reconcile)
        self.posts_sent = 0
        #: The request key of each tracked action id (status reads are journaled by key).
        self.keys: dict[str, str] = {}
        client.guards.before_read(self._read_starting)
        client.guards.after_read(self._read_ended)
        #: Verdicts given this run, when reconciliation ran.
        self.reconciled: Counter[str] | None = None
        self.resent_unapplied = 0
        #: The tracking policy of the passes.
        self._policy = options.policy
        #: A signal stopped reconciliation (its settling wait or its reads).
        self.reconcile_interrupted = False
        #: Requests of this run whose POST reached the API (answered, or maybe processed).
        self.reached = 0
        #: Sending stopped because no connection could be made at all.
        self.unreachable = False
        self._connect_failures: set[str] = set()
        #: SENDING marks made ahead (`_ahead`) and not yet taken by a sender: the key, the
        #: mark, and when it was made (monotonic).
        self._marked_ahead: dict[str, tuple[Awaitable[None], float]] = {}

    def _new_tracker(self) -> ActionTracker:
        return ActionTracker(self.client, self._policy, concurrency=self.options.concurrency)

    @property
    def stop(self) -> asyncio.Event:
        """Set: send no new request."""
        return self.engine.stop

    @property
    def interrupt(self) -> asyncio.Event:
        """Set (a signal): stop everything, waiting for actions too."""
        return self.engine.interrupt

    @property
    def stop_reason(self) -> str | None:
        return self.engine.stop_reason

    def request_stop(self, reason: str) -> None:
        """Stop sending new requests (signal, or a failure every request would share)."""
        self.engine.request_stop(reason)

    def _note(self, text: str) -> None:
        if not self.options.quiet:
            self.progress.clear()
            # Notes quote ids and messages from the server or the input file: escaped.
            print(printable(text, limit=None), file=self.err, flush=True)

    # the engine's steps: what a request is ----------------------------------------------

    def label(self, item: JournalRequest) -> str:
        return item.key

    def order_id(self, item: JournalRequest) -> str:
        return item.order_id

    def cancel_request(self, item: JournalRequest) -> StoredBody:
        # The journaled body is the exact bytes `request_body` wrote for the checked rows
        # (the plan's body): it goes out as it is, never read back and written again.
        return StoredBody(item.order_id, item.body.encode(), len(item.rows))

    @staticmethod
    def _structured(item: JournalRequest) -> CancelRequest:
        """The request a journaled body is (reconciliation compares its lines)."""
        return structure_request(item.order_id, loads(item.body)["cancelations"])

    def tracked_action(self, item: JournalRequest) -> tuple[str, float | None, float | None]:
        assert item.action_id is not None
        return item.action_id, item.last_contact(), item.accepted_at

    def send_key(self, item: JournalRequest) -> str | None:
        return item.key  # the journal key, on the cancel's span

    # sending ---------------------------------------------------------------------------

    async def before_attempt(self, item: JournalRequest, *, first: bool,
                             resend: bool) -> None:
        # Awaited by the transport right before each attempt leaves. The first call moves
        # the request to SENDING (durably: the guarantee that a cancel is on record before
        # it can reach the API); a retry (after a refusal the API did not process) only
        # moves `sent_at` to the new attempt. Both share their flush with the marks of
        # the other requests leaving at the same time.
        if not first:
            await self.store.mark_send_attempt(item.key)
            return
        ahead = self._marked_ahead.get(item.key)
        if ahead is None:
            await self.store.mark_sending(item.key, resend=resend)
        else:
            marked, made = ahead
            try:
                # Durable by now, most often: flushed during earlier POSTs. Shielded: a
                # sender cancelled here leaves the mark to `_undo_ahead`, which puts it
                # back to PENDING once it is made (it never left).
                await asyncio.shield(marked)
            except Exception:
                self._marked_ahead.pop(item.key, None)  # never made: nothing to undo
                raise
            failure = self.store.failure
            if failure is not None:
                # The journal failed since: a mark made now would be refused, and so is
                # this POST (put back to PENDING with the others marked ahead, if the
                # journal still takes that; else a re-run reports it UNCERTAIN).
                raise JournalError(f"the journal failed earlier ({failure}): nothing more "
                                   "is sent")
            del self._marked_ahead[item.key]
            if time.monotonic() - made > AHEAD_FRESH:
                await self.store.mark_send_attempt(item.key)
        self.posts_sent += 1
        self.progress.sent += 1

    async def send_failed(self, item: JournalRequest, outcome: CancelOutcome,
                          left: bool) -> None:
        exc = outcome.error
        assert exc is not None
        ending = ending_of_send_error(exc)
        errors = ending.texts()
        marked = left
        if isinstance(exc, ConnectError):
            self._connect_failed(exc)
            if marked and item.state is RequestState.PENDING:
                # No connection was ever made: the cancel never left. Undo the send mark
                # (and the count), so the journal says nothing reached a server and a
                # re-run may go to a corrected base URL.
                await self.store.mark_not_sent(item.key)
                marked = False
                self.posts_sent -= 1
                self.progress.sent -= 1
        else:
            self.reached += marked
        if not marked:
            # No attempt left (no token, a long 429 pause...): the API never saw it. A
            # fresh request is final for this run but resendable; a resend keeps its row
            # as it was (an UNCERTAIN one may still have been applied before).
            if item.state is RequestState.PENDING:
                if self._marked_ahead.pop(item.key, None) is not None:
                    await self.store.mark_not_sent(item.key)  # marked ahead: PENDING first
                await self.store.mark_unsent(item.key, ending.outcome.value, errors)
        elif ending.outcome is Outcome.UNCERTAIN:
            await self.store.mark_uncertain(item.key, errors)
        else:
            await self.store.mark_done(item.key, ending.outcome.value, errors=errors,
                                       resendable=exc.resend_safe)  # decided by the transport
        if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
            self.request_stop(f"stopping: the API refused our credentials ({exc}); "
                              "the remaining requests were not sent")
        self.progress.sends_over += 1

    def guard_failed(self, item: JournalRequest, error: BaseException, left: bool) -> None:
        # The journal cannot record sends any more: sending on would be unguarded.
        left_fleet = self._left_fleet()
        self.request_stop(f"stopping: {left_fleet}" if left_fleet is not None
                          else f"stopping: the journal failed ({error})")
        self.progress.sends_over += 1

    def _left_fleet(self) -> str | None:
        """Why this fleet worker no longer takes part in its job (its lease lapsed...),
        or None (a single-process job, or a worker still in the fleet)."""
        store = self.store
        return store.stopped_because if isinstance(store, FleetJobStore) else None

    def accepted(self, item: JournalRequest, outcome: CancelOutcome) -> Awaitable[None]:
        # The sender goes on to the next request while the action id is being flushed:
        # the store writes marks in order, so the next SENDING mark cannot be durable
        # before this ACCEPTED one, and if this one fails the next is refused.
        assert outcome.accepted is not None
        self.reached += 1
        self.progress.sends_over += 1
        return self._accepted(self.store.mark_accepted(item.key, outcome.accepted.action_id))

    async def _accepted(self, marked: Awaitable[None]) -> None:
        await marked
        self.progress.accepted += 1

    def accept_failed(self, item: JournalRequest, action_id: str,
                      error: BaseException) -> None:
        if isinstance(error, (JournalError, sqlite3.Error)):
            # The cancel *was* accepted: its action id must not vanish with the journal.
            # The row stays SENDING, so a re-run reports it UNCERTAIN and never resends it.
            logger.error("cancel of order %s (%s) was accepted as action %s, but the journal "
                         "could not record it: %s", item.order_id, item.key, action_id, error)
            self.request_stop(f"stopping: the journal failed ({error}); the cancel of order "
                              f"{item.order_id} was accepted as action {action_id}")
            return
        logger.error("recording the action of %s failed unexpectedly", item.key,
                     exc_info=error)
        self.request_stop(f"stopping: sending {item.key} failed unexpectedly "
                          f"({type(error).__name__}: {error})")

    async def earlier_owner(self, action_id: str) -> str | None:
        # Asked only on a (rare) hit of the engine's memory: a scan of the store, which
        # keeps every action id (any store: no lookup by action id is required of it).
        async for row in self.store.requests(bodies=False):
            if row.action_id == action_id:
                return row.key
        return None

    async def duplicate(self, item: JournalRequest, outcome: CancelOutcome,
                        other: str) -> None:
        # Its action id is never journaled as its own: a resume would track that action
        # and report this cancel by the other's status. SENDING → UNCERTAIN instead
        # (the reason names the action and the other request); reconciliation may settle it.
        assert outcome.accepted is not None
        self.reached += 1
        self.progress.sends_over += 1
        ending = ending_of_duplicate(item.order_id, outcome.accepted.action_id,
                                     f"request {other}")
        await self.store.mark_uncertain(item.key, ending.texts())

    def _connect_failed(self, error: ConnectError) -> None:
        """Say why a connection failed, as it happens (once per reason); stop sending if
        nothing of this run ever reached the API: every other request would fail alike."""
        reason = str(error)
        if reason not in self._connect_failures:
            self._connect_failures.add(reason)
            self._note(f"error: {reason} (base URL {self.options.base_url})")
        if not self.reached:
            self.unreachable = True
            self.request_stop(
                f"stopping: no connection could be made to {self.options.base_url}, so no "
                "cancel was sent. Check the base URL (--base-url, MIRAKL_CONNECT_BASE_URL) "
                "and the network, then run again: the journal is not tied to a URL that "
                "nothing reached")

    # tracking ------------------------------------------------------------------------

    async def _read_starting(self, action_id: str) -> None:
        """The guard before each status read: its "started" mark, committed before the
        read leaves (see the module doc).

        The tracker already spaces reads of one action; the marks make that spacing
        survive a crash: the next process reads `last_polled_at` and waits the interval
        from there. The "ended" mark is lazy (a crash before it is written leaves the
        "started" one, which counts as a read at the moment of the resume: the safe side).
        """
        key = self.keys.get(action_id)
        if key is not None:
            await self.store.mark_poll_started(key)

    def _read_ended(self, action_id: str, status: ActionStatus | None) -> None:
        # A final read needs no "polled" mark: its `mark_done` (in `tracked`) follows and
        # records the status, one journal write less per request.
        final = status is not None and status.is_terminal
        key = self.keys.get(action_id)
        if key is not None and not final:
            self.store.note_polled(key, status=status.raw_status if status else None)
        # Told when the action's next read is due, so a quiet wait can say until when.
        self.progress.read_done(
            action_id, None if final else time.time() + self.options.policy.interval)

    def tracking(self, item: JournalRequest, action_id: str, last_read: float | None,
                 accepted_at: float | None = None) -> None:
        self.keys[action_id] = item.key
        # When the tracker will read it first (its rule), for the progress line.
        due = first_read_due(self._policy, time.time(), accepted_at=accepted_at,
                             last_read=last_read)
        self.progress.tracking += 1
        self.progress.read_due(action_id, due)

    async def tracked(self, item: JournalRequest, result: TrackedResult) -> None:
        self.keys.pop(result.action_id, None)
        self.progress.forget(result.action_id)
        ending = ending_of_tracking(result)
        status = result.status.raw_status if result.status else None
        if result.status is not None or isinstance(result.error, NotFoundError):
            marked = self.store.mark_done(item.key, ending.outcome.value, status=status,
                                          errors=ending.texts())
        else:
            # Timed out, or reading failed for good (auth...): the action still exists,
            # so it stays ACCEPTED and a re-run tracks it on.
            marked = self.store.mark_tracking_stopped(item.key, ending.outcome.value,
                                                      ending.texts())
        try:
            await marked
        except JournalError as exc:
            if self._left_fleet() is None:
                raise
            # Another worker took the request over (and records its end): expected.
            logger.warning("%s: its end is recorded by the worker that took it over (%s)",
                           item.key, exc)

    async def untracked(self, item: JournalRequest, action_id: str) -> None:
        # The request stays ACCEPTED: a re-run tracks it on.
        self.keys.pop(action_id, None)
        self.progress.forget(action_id)

    def resolved(self, item: JournalRequest, *, tracked: bool) -> None:
        self.progress.resolved += 1
        if tracked:
            self.progress.tracking -= 1

    # the whole run ---------------------------------------------------------------------

    def _choice(self, request: JournalRequest, resume: bool) -> Choice | None:
        """What this run does with `request`: send, resend, track, or nothing.

        `resume` (run): everything unfinished. Otherwise (reconcile): only the requests
        proven NOT_APPLIED, when --resend-unapplied asks for them.
        """
        opts = self.options
        state = request.state
        if state is RequestState.DONE and request.outcome == Outcome.NOT_APPLIED:
            resend = opts.reconcile is not None and opts.reconcile.resend
            return Choice.RESEND if resend else None
        if not resume:
            return None
        if state is RequestState.PENDING:
            return Choice.SEND
        if (state is RequestState.UNCERTAIN and opts.resend_uncertain) or (
                state is RequestState.DONE and request.resendable):
            return Choice.RESEND
        if state is RequestState.ACCEPTED and request.action_id:
            return Choice.TRACK
        return None

    async def work(self, resume: bool = True,
                   requests: AsyncIterator[JournalRequest] | None = None
                   ) -> AsyncGenerator[tuple[JournalRequest, Choice], None]:
        """This run's work: each unfinished request of `requests` (default: all the
        store's, in plan order; a fleet worker: the ones it claimed) and what to do with it."""
        store = self.store
        fleet = isinstance(store, FleetJobStore)
        if requests is None:
            requests = store.claims() if isinstance(store, FleetJobStore) else store.requests()
        try:
            async for request in requests:
                if fleet and self.stop.is_set():
                    break  # claim nothing more: the rest of the fleet sends it
                choice = self._choice(request, resume)
                if choice is not None:
                    if request.outcome == Outcome.NOT_APPLIED and choice is Choice.RESEND:
                        self.resent_unapplied += 1
                    if choice is not Choice.TRACK:
                        self.progress.to_send += 1
                    self.progress.resolved -= 1
                    yield request, choice
        finally:
            # Closed now, not when collected: a fleet's claims are a database stream.
            close = getattr(requests, "aclose", None)
            if close is not None:
                await close()

    async def execute(self, *, resume: bool = True, work: WorkSource | None = None) -> bool:
        """Send and track until everything is final or a stop; True when interrupted.

        `work`: where the work comes from (default: `self.work(resume)`, the store's)."""
        opts = self.options
        interrupted = await self.store.mark_interrupted_sends(
            "the previous run stopped while this cancel was being sent: it may have been "
            "processed, so it was not sent again (see --reconcile)")
        if interrupted:
            later = (", to be reconciled" if opts.reconcile is not None else
                     ", sending again (--resend-uncertain)" if opts.resend_uncertain
                     else ", not sent again")
            logger.warning("%d request(s) were being sent when the previous run stopped: "
                           "reported UNCERTAIN%s", len(interrupted), later)
        # Everything starts as done; each request found to send or track is taken off
        # as the store streams it (no counting pass first: the first POST leaves at once).
        self.progress.resolved = self.progress.total
        if work is not None:
            return await self._pass(work)
        # Closed here, not whenever it is collected (it closes the store's stream).
        async with contextlib.aclosing(self.work(resume)) as source:
            if not self.options.mark_ahead or isinstance(self.store, FleetJobStore):
                # (A fleet's marks are checked against the worker's lease when they are
                # made: made ahead, a lease lost meanwhile would strand them.)
                return await self._pass(source)
            try:
                async with contextlib.aclosing(self._ahead(source)) as ahead:
                    return await self._pass(ahead)
            finally:
                await self._undo_ahead()

    async def _ahead(self, source: WorkSource
                     ) -> AsyncGenerator[tuple[JournalRequest, Choice], None]:
        """`source`, with the SENDING mark of each fresh request made `concurrency`
        requests before a sender takes it (``--mark-ahead``).

        A sender that makes its own mark waits for its flush before every POST (10 ms on a
        slow disk: about 40 % more time per request at 20 ms answers); made ahead, it is
        flushed while the POSTs before it are in flight, and the sender finds it durable.
        No POST leaves before its mark is durable all the same (`before_attempt` awaits
        it). What it gives up: a crash now leaves the requests marked and not yet sent
        UNCERTAIN too (reconciliation proves them not applied), so it is not the default.
        Only fresh (PENDING) requests: a resend's mark could not be undone to its row.
        """
        depth = self.engine.concurrency
        held: collections.deque[tuple[JournalRequest, Choice]] = collections.deque()
        store, marked = self.store, self._marked_ahead
        async for request, choice in source:
            if choice is Choice.SEND and not self.stop.is_set():
                marked[request.key] = (store.mark_sending(request.key), time.monotonic())
            held.append((request, choice))
            if len(held) > depth:
                yield held.popleft()
        while held:
            yield held.popleft()

    async def _undo_ahead(self) -> None:
        """Put the requests marked ahead that no sender took (sending stopped, the pass
        ended early, the source failed) back to PENDING: they never left.

        The undoing marks are made at once, before any wait (the store applies marks in
        the order they are made, so each after its mark ahead): even if this is
        cancelled (a second signal), closing the store writes them."""
        if not self._marked_ahead:
            return
        waits: list[Awaitable[None]] = []
        for key, (marked, _) in self._marked_ahead.items():
            if not (isinstance(marked, asyncio.Future) and marked.done()):
                waits.append(marked)
            elif not marked.cancelled() and marked.exception() is not None:
                continue  # refused, or its batch failed: never made, nothing to undo
            # Made, being made, or its waiter cancelled (the mark stands): undone after it.
            waits.append(self.store.mark_not_sent(key))
        self._marked_ahead.clear()
        for result in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(result, BaseException):  # the journal failed: stays SENDING
                logger.warning("a request marked SENDING ahead of its POST could not be "
                               "put back to PENDING: %s", result)

    async def _pass(self, work: WorkSource) -> bool:
        self.progress.to_send = self.progress.sends_over
        return await self.engine.run_pass(work)

    async def main(self, *, resume: bool = True, work: WorkSource | None = None) -> bool:
        """The run, then (with `options.reconcile`) reconciliation; True when interrupted."""
        try:
            interrupted = await self.execute(resume=resume, work=work)
        finally:
            await self.progress.stop()
        if interrupted or self.options.reconcile is None:
            return interrupted
        if self.stop.is_set():
            self._note("not reconciling: sending stopped early")
            return False
        fleet = self.store if isinstance(self.store, FleetJobStore) else None
        if fleet is None:
            return await self.reconcile_all()
        # One worker of a fleet reconciles at a time; the others wait for it, then
        # have nothing left to do.
        if not await fleet.reconcile_turn():
            self._note("not reconciling: another worker of the fleet reconciled the job")
            return False
        interrupted = True
        try:
            interrupted = await self.reconcile_all()
        finally:
            await fleet.end_reconcile_turn(complete=not interrupted)
        return interrupted

    # reconciliation: the engine's settling steps ---------------------------------------

    async def reconcile_all(self) -> bool:
        """Reconcile every UNCERTAIN request (the engine's rounds); True when interrupted
        (the rows not yet judged stay UNCERTAIN)."""
        self.reconciled = Counter()
        interrupted = await self.engine.reconcile_rounds()
        self.reconcile_interrupted = self.engine.settling_interrupted
        return interrupted

    async def uncertain(self, only: set[str] | None,
                        ) -> AsyncIterator[tuple[JournalRequest, SentCancel | None]]:
        rows = [r async for r in self.store.requests(RequestState.UNCERTAIN)
                if only is None or r.key in only]
        for row in rows:
            yield row, self._sent(row)

    def _sent(self, row: JournalRequest) -> SentCancel | None:
        if row.sent_at is None:  # never written by mark_sending; only a damaged journal
            return None
        return SentCancel(self._structured(row),
                          datetime.fromtimestamp(row.sent_at, timezone.utc))

    async def rivals(self, orders: set[str], exclude: set[str],
                     ) -> AsyncIterator[tuple[Standing, Callable[[], SentCancel]]]:
        async for row in self.store.requests(orders=orders):
            if row.key in exclude or row.sent_at is None:
                continue
            verdict = row.reconcile_verdict if row.state is RequestState.DONE else None
            yield (Standing(row.action_id is not None, row.outcome, verdict),
                   functools.partial(self._rival, row))

    def _rival(self, row: JournalRequest) -> SentCancel:
        sent = self._sent(row)
        assert sent is not None
        return sent

    def settling(self, count: int, wait: float, deadline: datetime) -> None:
        if wait > 0:
            until = deadline.astimezone().strftime("%H:%M:%S")
            self._note(f"reconciling {count} uncertain cancel(s): waiting {wait:.0f}s, "
                       f"until {until}, for the settling window "
                       f"({self.options.reconcile.settle if self.options.reconcile else 0:g}s"
                       " after the last send) to pass; Ctrl-C leaves them UNCERTAIN")
            self.progress.waiting = (f"{count:,} uncertain: settling until {until}; "
                                     "Ctrl-C leaves them UNCERTAIN")
            self.progress.restart()
        else:
            self._note(f"reconciling {count} uncertain cancel(s)")

    def reading(self, count: int) -> None:
        self.progress.waiting = f"reading the orders of {count:,} uncertain cancel(s)"
        self.progress.restart()

    async def read_over(self, failed: MiraklError | None = None) -> None:
        await self.progress.stop()
        if failed is not None:
            self._note(f"reconciliation failed: {failed}; the cancels stay UNCERTAIN")

    async def judged(self, item: JournalRequest, verdict: Reconciliation, *,
                     resend: bool) -> None:
        await self._record(await self.store.request(item.key), verdict.verdict,
                           verdict.reason, [a.id for a in verdict.adjustments])

    async def unjudged(self, item: JournalRequest, reason: str,
                       error: MiraklError | None) -> None:
        await self._record(await self.store.request(item.key), Verdict.UNCERTAIN, reason)

    def resending(self, items: Sequence[JournalRequest]) -> None:
        self._note(f"sending again {len(items)} cancel(s) proven not applied "
                   "(--resend-unapplied)")
        self.resent_unapplied += len(items)
        self.progress.to_send = self.progress.sends_over + len(items)

    async def _record(self, row: JournalRequest, verdict: Verdict, reason: str,
                      adjustments: Sequence[str] = ()) -> None:
        """Journal one verdict; the row's errors keep what made it uncertain, plus why
        (without the note of an earlier verdict: it is replaced)."""
        assert self.reconciled is not None
        self.reconciled[verdict.value] += 1
        note = reconcile_note(reason)
        if verdict is Verdict.UNCERTAIN:
            earlier = (None if row.reconcile_reason is None
                       else reconcile_note(row.reconcile_reason))
            errors = [e for e in row.errors if e != earlier] + [note]
        else:
            errors = [note]
        await self.store.mark_reconciled(row.key, verdict.value, reason, adjustments,
                                         errors=errors)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _SignalStop:
    """SIGINT/SIGTERM: the first stops sending cleanly, the second aborts."""

    def __init__(self, run: _Run, err: TextIO) -> None:
        self.run = run
        self.err = err
        self.count = 0
        self.main: asyncio.Task[Any] | None = None
        self._installed: list[int] = []

    def __call__(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        self.run.progress.clear()
        if self.count == 1:
            print(f"\n{name}: stopping; waiting for the cancels in flight to be answered and "
                  "journaled (send the signal again to abort them)", file=self.err, flush=True)
            self.run.interrupt.set()
            self.run.request_stop(f"interrupted by {name}")
        elif self.main is not None:
            print(f"\n{name}: aborting; cancels in flight will be reported UNCERTAIN",
                  file=self.err, flush=True)
            self.main.cancel()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self, signum)
                self._installed.append(signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_writable(path: Path, what: str) -> None:
    """ValueError unless `path` can be created (or replaced), found without touching it.

    A probe file is created beside it and removed: the only sure test of a directory's
    permissions, and the way the report and journal are written (a file in the same
    directory), so nothing that exists is opened, truncated or replaced.
    """
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory: give a file path")
    directory = path.parent
    if not directory.is_dir():
        raise ValueError(f"{what} {path}: the directory {directory} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=directory)
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_job_paths(options: JobOptions, *, journal_file: bool = True) -> None:
    """Every file check `run`/`reconcile` can fail, done before anything is sent.

    The input must be a readable file; the report and the journal must be writable, and
    no two of the three may be the same file (a report written over its input, or over
    the journal, would destroy it). Raises ValueError with the reason. `journal_file`
    False: the job is kept elsewhere (a fleet's database), no journal file is checked.
    """
    path = options.input_path
    if path is not None:
        if path.is_dir():
            raise ValueError(f"{path} is a directory: give the CSV or JSONL file to read")
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{path} is not readable")
    journal = options.journal_path
    if journal is None and path is not None and journal_file:
        journal = default_journal_path(path)
    report = options.report_path
    named = [("the input", path), ("the journal", journal), ("--report", report)]
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if a is not None and b is not None and _same_file(a, b):
                raise ValueError(f"{name_b} {b} is the same file as {name_a}: it would be "
                                 "overwritten; give it another path")
    if journal is not None and not (options.dry_run and not journal.exists()):
        if path is None and not journal.is_file():
            raise ValueError(f"{journal}: no such journal")
        _check_writable(journal, "journal")
    if report is not None:
        check_report_path(report)
        _check_writable(report, "report")


def _open_job(options: JobOptions, err: TextIO,
              out: TextIO) -> tuple[Journal | None, bool, int]:
    """Open (or create) the job's journal, with its whole plan; returns (journal, resumed,
    exit code if not). (`run_job` sends while the plan is journaled: `_start_job`.)"""
    journal, resumed, code, plan = _start_job(options, err, out)
    if plan is not None:
        try:
            assert journal is not None
            journal.finish_plan(plan)
        finally:
            plan.staging.close()
    return journal, resumed, code


def _start_job(options: JobOptions, err: TextIO,
               out: TextIO) -> tuple[Journal | None, bool, int, JobPlan | None]:
    """Open (or create) the job's journal; returns (journal, resumed, exit code if not,
    the rest of its plan if it is not all journaled yet: the caller journals it, then
    closes its staging file)."""
    path = options.input_path
    try:
        check_job_paths(options)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return None, False, EXIT_BAD_INPUT, None
    assert path is not None
    journal_path = options.journal_path or default_journal_path(path)
    existing = journal_path.exists() and not options.dry_run
    journal: Journal | None = None
    if existing:
        try:
            journal = Journal.open(journal_path)
        except (JournalBusyError, JournalError) as exc:
            print(f"error: {exc}", file=err)
            return None, False, EXIT_BAD_INPUT, None
        job = journal.job()
        if job is not None:
            digest = _sha256(path)
            problems = []
            if job.input_sha256 != digest:
                problems.append(f"{path} changed since the journal was created "
                                f"({job.created_at})")
            if job.base_url.rstrip("/") != options.base_url.rstrip("/"):
                if journal.ever_sent():
                    problems.append(f"the journal's actions were sent to {job.base_url}, "
                                    f"not {options.base_url}")
                else:
                    # Nothing ever reached the old URL (every connection was refused): the
                    # job is free to go where the operator now points it.
                    journal.set_base_url(options.base_url)
                    print(f"note: nothing of this job ever reached {job.base_url}; it now "
                          f"goes to {options.base_url}", file=err)
            if problems and not options.force:
                journal.close()
                for problem in problems:
                    print(f"error: {problem}", file=err)
                print(f"error: refusing to resume {journal_path}: use --force to resume its "
                      "plan anyway, or --journal NEW_PATH to start a new job", file=err)
                return None, False, EXIT_BAD_INPUT, None
            for problem in problems:
                print(f"warning: {problem} (--force: resuming the journal's plan)", file=err)
            if not options.quiet:
                counts = journal.counts()
                summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
                print(f"resuming {journal_path} ({summary})", file=err)
            plan = None
            if not job.plan_complete:
                plan = _plan_on(journal, job, options, digest, err)
                if plan is None:
                    journal.close()
                    return None, False, EXIT_BAD_INPUT, None
            return journal, True, EXIT_OK, plan
    # A new job: check the input first, streaming it into a staging file (bounded memory);
    # nothing is sent, and no journal created, unless it is clean.
    staging = PlanStaging()
    plan = None
    try:
        try:
            kind = _stage_input(path, options, staging, err)
        except InputError as exc:
            kind = None
            print(f"error: {exc}", file=err)
        if kind is None:
            if journal is not None:
                journal.close()
            return None, False, EXIT_BAD_INPUT, None
        if options.dry_run:
            print_dry_run(staging, options.max_lines_per_request, out)
            return None, False, EXIT_OK, None
        if journal is None:
            try:
                journal = Journal.open(journal_path)
            except (JournalBusyError, JournalError) as exc:
                print(f"error: {exc}", file=err)
                return None, False, EXIT_BAD_INPUT, None
        # The reading options too: a job stopped before its plan is complete is planned
        # on from its input read the same way (`_plan_on`).
        plan = journal.start_plan(
            staging, input_path=str(path.resolve()), input_sha256=_sha256(path),
            input_format=kind.value, base_url=options.base_url,
            max_lines=options.max_lines_per_request,
            options={"max_lines_per_request": options.max_lines_per_request,
                     "skip_invalid": options.skip_invalid, "encoding": options.encoding,
                     "decimal_comma": options.decimal_comma})
    finally:
        if plan is None or plan.complete:
            staging.close()
    assert plan is not None
    if not options.quiet:
        print(f"journal: {journal_path} ({plan.total} request(s) for {staging.valid_rows} "
              "row(s))", file=err)
    return journal, False, EXIT_OK, None if plan.complete else plan


def _plan_on(journal: Journal, job: JobInfo, options: JobOptions, digest: str,
             err: TextIO) -> JobPlan | None:
    """The rest of the plan of a job stopped before its plan was complete (None, having
    said why, if it cannot be made): its input checked again with the options the job
    was created with, so the same file (by its digest) plans the same requests; those
    already journaled are skipped (`Journal.continue_plan` checks they match)."""
    path = options.input_path
    assert path is not None
    if job.input_sha256 != digest:
        print(f"error: the journal's plan is not complete and {path} changed: the rest of "
              "it cannot be planned; use --journal NEW_PATH to start a new job", file=err)
        return None
    saved = job.options
    again = attrs.evolve(options, input_format=job.input_format,
                         encoding=saved.get("encoding"),
                         decimal_comma=saved.get("decimal_comma"),
                         skip_invalid=bool(saved.get("skip_invalid")))
    if not options.quiet:
        print(f"checking {path} again to journal the rest of the job's plan", file=err)
    staging = PlanStaging()
    try:
        if _stage_input(path, again, staging, err) is not None:
            return journal.continue_plan(staging, saved.get("max_lines_per_request"))
    except (InputError, JournalError) as exc:
        print(f"error: {exc}", file=err)
    staging.close()
    return None


def _stage_input(path: Path, options: JobOptions, staging: PlanStaging,
                 err: TextIO) -> InputFormat | None:
    """Check every row of `path` into `staging`, printing each issue as it is found.

    Returns the format, or None when nothing may be sent (errors without --skip-invalid,
    header errors, no valid row). One pass, any size: rows are checked and written in
    order; identical rows are found afterwards by the staging file.
    """
    stream = open_input(path, options.input_format, encoding=options.encoding,
                        decimal_comma=options.decimal_comma, lines=True)
    printed = 0
    errors = 0
    bad_rows = 0
    for result in stream:
        for issue in stream.issues[printed:]:  # the header's, before the first row
            print(str(issue), file=err)
        printed = len(stream.issues)
        if isinstance(result, InvalidRow):
            for issue in result.issues:
                print(str(issue), file=err)
            found = sum(1 for issue in result.issues if not issue.warning)
            errors += found
            bad_rows += bool(found)
            staging.add_invalid(PlannedRow(
                result.row, result.line, result.order_id, result.order_line_id,
                result.product_id, result.quantity,
                tuple(f"{i.field}: {i.message}" if i.field else i.message
                      for i in result.issues)))
        elif isinstance(result, CheckedLine):  # the fast first check vouched for it
            staging.add_record(result)
        else:
            cancelation = result.cancelation
            staging.add_valid(result.row, result.line, result.order_id,
                              cancelation_json(cancelation), cancelation.quantity,
                              _cancelation_total(cancelation), cancelation.price.currency)
    for issue in stream.issues[printed:]:
        print(str(issue), file=err)
    for row, line, first, first_line in staging.duplicates():
        print(str(InputIssue(
            f"identical to row {first} (line {first_line}); both will be sent, which "
            "cancels the line twice: remove one unless that is intended",
            row, line, None, warning=True)), file=err)
    file_errors = [issue for issue in stream.issues if not issue.warning]
    errors += len(file_errors)
    if file_errors or (errors and not options.skip_invalid):
        print(f"{errors} error(s) in {bad_rows} row(s) of {path}: nothing was sent. "
              "Row numbers count data rows (the CSV header is not a row); line numbers are "
              "lines of the file."
              + ("" if file_errors else
                 " Fix them, or use --skip-invalid to send the valid rows only."), file=err)
        return None
    if not staging.valid_rows:
        print(f"error: {path} has no valid data rows: nothing to send", file=err)
        return None
    if staging.invalid_rows:
        print(f"warning: skipping {staging.invalid_rows} invalid row(s) (--skip-invalid); "
              "they are reported as INVALID", file=err)
    return stream.format


async def tally(store: JobStore, report_path: Path | None, counts: JobCounts,
                err: TextIO) -> tuple[int, bool]:
    """Count the job's rows and requests per outcome into `counts`, writing each row to
    the report at `report_path` (streamed from the store, row by row; the requests, and
    without a report the rows too, are counted by the store: `outcome_counts`). Returns
    (rows, whether the report could not be written, which is said on `err`)."""
    writer: ReportWriter | None = None
    report_failed = False
    if report_path is not None:
        try:
            writer = ReportWriter(report_path)
        except (OSError, ValueError) as exc:
            report_failed = True
            print(f"error: cannot write the report {report_path}: {exc}", file=err)
    if writer is None:
        # No report to write: the rows' counts come from the store's count of the
        # requests (each knows its rows, and a row's outcome is its request's,
        # `request_outcome`) and the rows no request covers, without reading every row
        # and decoding its request's body (the compact journal keeps a row's fields there).
        lines = skipped = await store.skipped_rows()
        if skipped:
            counts.rows_by_outcome[row_outcome(None)[0]] += skipped  # INVALID
    else:
        lines = 0
        try:
            async for row in store.rows():
                line = report_line(row)
                lines += 1
                counts.rows_by_outcome[line.outcome] += 1
                writer.add(line)
            writer.commit()
        except OSError as exc:
            report_failed = True
            print(f"error: cannot write the report {report_path}: {exc}", file=err)
            writer.discard()
        except BaseException:
            writer.discard()
            raise
    for state, recorded, requests, rows in await store.outcome_counts():
        outcome = request_outcome(state, recorded)
        counts.requests_by_outcome[outcome] += requests
        if writer is None:
            counts.rows_by_outcome[outcome] += rows
            lines += rows
    return lines, report_failed


async def _finish(store: JobStore, options: JobOptions, counts: JobCounts, out: TextIO,
                  err: TextIO, notes: Sequence[str] = ()) -> int:
    """Report (streamed from the store, row by row) and summary; the exit code."""
    lines, report_failed = await tally(store, options.report_path, counts, err)
    print(summary_table(counts), file=out, flush=True)
    if options.report_path is not None and not report_failed:
        print(f"report: {options.report_path}", file=out)
    for note in notes:
        print(note, file=out)
    out.flush()
    if counts.interrupted:
        return EXIT_INTERRUPTED
    if report_failed:  # checked writable before the run, yet lost: the operator must know
        return EXIT_SOME_FAILED
    return EXIT_OK if lines and counts.rows_by_outcome[Outcome.SUCCEEDED.value] == lines \
        else EXIT_SOME_FAILED


async def _run_async(options: JobOptions, auth: Auth, journal: Journal, resumed: bool,
                     out: TextIO, err: TextIO, log_handler: ProgressLogHandler | None,
                     *, resume: bool = True, plan: JobPlan | None = None) -> int:
    """The job over `journal`; `plan`: the rest of its plan, journaled while it sends."""
    store = SqliteStore(journal)
    planning = store.plan_rest(plan) if plan is not None and not plan.complete else None
    try:
        return await _run_with_store(options, auth, store, resumed, out, err, log_handler,
                                     resume=resume, planning=planning,
                                     total=None if plan is None else plan.total)
    finally:
        if planning is not None and not planning.done():
            planning.cancel()
            await asyncio.gather(planning, return_exceptions=True)
        await store.aclose()


async def _run_with_store(options: JobOptions, auth: Auth, store: JobStore, resumed: bool,
                          out: TextIO, err: TextIO, log_handler: ProgressLogHandler | None,
                          *, resume: bool = True, shared: SharedStore | None = None,
                          planning: asyncio.Task[None] | None = None,
                          total: int | None = None) -> int:
    """The job over `store`. `planning`: the task journaling the rest of its plan (of
    `total` requests in all), awaited before the report."""
    started = time.monotonic()
    if total is None:
        total = sum((await store.counts()).values())
    progress = Progress(total, err, enabled=not options.quiet, tty=options.progress_tty,
                        interval=options.progress_interval)
    if log_handler is not None:
        log_handler.progress = progress
    # The transport makes its own session: one connection per request in flight at most,
    # and aiohttp's hidden resend of idempotent requests turned off. Its limit is the sum
    # of the engine's `concurrency` senders and the tracker's `concurrency` readers, so
    # neither kind waits for the other's slots: a cancel holds its slot while its SENDING
    # mark is flushed (the mark comes after every wait), and that flush must not hold up
    # a status read, nor reads due together hold up the sends.
    client = MiraklConnectClient(
        auth=auth, base_url=options.base_url, max_concurrency=2 * options.concurrency,
        rate_limit=options.rate_limit, retry=options.retry, timeout=options.http_timeout,
        min_poll_interval=options.policy.min_interval,
        # v2-listOrders (reconciliation) has the same once-a-minute ceiling as a status read.
        min_list_interval=options.policy.min_interval,
        hooks=options.hooks, store=shared, **network_options_from_env(os.environ))
    run = _Run(options, store, client, progress, err)
    stopper = _SignalStop(run, err)
    interrupted = False
    try:
        async with client:
            stopper.install()
            progress.start()
            task = asyncio.ensure_future(run.main(resume=resume))
            stopper.main = task
            try:
                interrupted = await task
            except asyncio.CancelledError:
                interrupted = True
            finally:
                await progress.stop()  # a no-op if the run already stopped it
            if planning is not None and not await _planned(planning, stopper, options, err):
                interrupted = True
    finally:
        stopper.remove()
        if log_handler is not None:
            log_handler.progress = None
    if run.stop_reason and not run.interrupt.is_set():
        print(run.stop_reason, file=err)
    stats = client.stats
    counts = JobCounts(elapsed=time.monotonic() - started, posts_sent=run.posts_sent,
                       http_requests=stats.requests, retries=stats.retries,
                       rate_limited=stats.rate_limited, resumed=resumed,
                       interrupted=interrupted, reconciled=run.reconciled,
                       resent_unapplied=run.resent_unapplied)
    await store.flush()  # what this run saw is on disk before it is reported
    return await _finish(store, options, counts, out, err,
                         await _closing_notes(run, store, interrupted, counts))


async def _planned(planning: asyncio.Task[None], stopper: _SignalStop, options: JobOptions,
                   err: TextIO) -> bool:
    """Wait for the rest of the plan to be journaled (the report lists every row); after
    a stop, the signal again aborts it. False if it is not complete (a resume plans on)."""
    if not planning.done():
        if not options.quiet:
            print("journaling the rest of the plan before the report (send the signal "
                  "again to skip it: a resume plans it)", file=err, flush=True)
        stopper.main = planning
    try:
        await planning
    except asyncio.CancelledError:
        return False
    except JournalError as exc:
        print(f"error: the rest of the plan could not be journaled: {exc}", file=err)
        return False
    return True


async def _closing_notes(run: _Run, store: JobStore, interrupted: bool,
                         counts: JobCounts) -> list[str]:
    """What an operator must be told after the summary of a run that did not finish:
    what stays UNCERTAIN after an interrupted reconciliation, and the exact command
    that takes the job on from where it stopped."""
    options = run.options
    notes: list[str] = []
    if run.reconcile_interrupted:
        if not counts.reconciled:
            counts.reconciled = None  # not "no uncertain cancel": there were, unjudged
        states = await store.counts()
        left = states[RequestState.UNCERTAIN] + states[RequestState.SENDING]
        later = f": {options.reconcile_command}" if options.reconcile_command else ""
        notes.append(f"reconciliation interrupted: {left} cancel(s) stay UNCERTAIN (not "
                     "sent again); settle them later, once their settling window has "
                     f"passed, with{later or ' mirakl-cancel reconcile'}")
    stopped = run._left_fleet()
    if stopped is not None:
        # Its summary counts the whole job, but this worker is no longer part of it: say
        # that the job is not over, rather than let rows still PENDING look final.
        states = await store.counts()
        left = sum(states[s] for s in (RequestState.PENDING, RequestState.SENDING,
                                       RequestState.ACCEPTED))
        notes.append(f"the job is not finished: {left} request(s) are not final yet. "
                     f"This worker stopped ({stopped}); the other workers, or the same "
                     "command run again, finish them (mirakl-cancel report --job ... "
                     "shows the whole job at any time)")
    if (interrupted or run.stop_reason) and options.resume_command:
        fixed = " (with the base URL corrected)" if run.unreachable else ""
        notes.append(f"to resume this job, run{fixed}: {options.resume_command}")
    return notes


def _missing_credentials(err: TextIO) -> int:
    print("error: missing credentials: set MIRAKL_CONNECT_TOKEN, or MIRAKL_CLIENT_ID "
          "and MIRAKL_CLIENT_SECRET", file=err)
    return EXIT_BAD_INPUT


def run_job(options: JobOptions, auth: Auth | None, *, out: TextIO | None = None,
            err: TextIO | None = None, log_handler: ProgressLogHandler | None = None) -> int:
    """Check, plan, journal, send, track and report; returns the process exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    journal, resumed, code, plan = _start_job(options, err, out)
    if journal is None:
        return code
    try:
        if auth is None:
            return _missing_credentials(err)
        return asyncio.run(_run_async(options, auth, journal, resumed, out, err, log_handler,
                                      plan=plan))
    finally:
        journal.close()
        if plan is not None:
            plan.staging.close()


def reconcile_job(options: JobOptions, auth: Auth | None, *, out: TextIO | None = None,
                  err: TextIO | None = None,
                  log_handler: ProgressLogHandler | None = None) -> int:
    """`mirakl-cancel reconcile`: settle the UNCERTAIN requests of an existing journal.

    Works from the journal alone (it holds every request's exact body and send time), so
    the input file is not needed. Nothing else is sent, except, with --resend-unapplied,
    the requests proven NOT_APPLIED (now or by an earlier reconciliation).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    path = options.journal_path
    assert path is not None and options.reconcile is not None
    try:
        check_job_paths(options)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        journal = Journal.open(path)
    except (JournalBusyError, JournalError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_BAD_INPUT
    try:
        job = journal.job()
        if job is None:
            print(f"error: {path} holds no job (its creation never finished)", file=err)
            return EXIT_BAD_INPUT
        if job.base_url.rstrip("/") != options.base_url.rstrip("/"):
            problem = (f"the journal's actions were sent to {job.base_url}, not "
                       f"{options.base_url}")
            if not options.force:
                print(f"error: {problem}", file=err)
                print(f"error: refusing to reconcile {path}: the orders must be read where "
                      "the cancels went; use --force to reconcile anyway", file=err)
                return EXIT_BAD_INPUT
            print(f"warning: {problem} (--force: reconciling anyway)", file=err)
        if auth is None:
            return _missing_credentials(err)
        return asyncio.run(_run_async(options, auth, journal, True, out, err, log_handler,
                                      resume=False))
    finally:
        journal.close()
