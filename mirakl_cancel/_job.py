"""The resumable bulk job behind `mirakl-cancel run` (and `mirakl-cancel demo`).

Order of events for one request, each step committed to the journal before the next:

1. ``SENDING`` is committed (fsync'd) right before the POST leaves: from the client's
   `on_send` hook, after any wait for a concurrency slot, the rate limit or a token, so
   that a cancel still queued when the process dies is not mistaken for one in flight;
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
import hashlib
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import TextIO, TypeVar

import attrs

from ._constants import DEFAULT_JOB_CONCURRENCY, DEFAULT_PROGRESS_INTERVAL
from ._hooks import Hooks, with_request_key
from ._input import InputError, InputFormat, InputIssue, InvalidRow, ParsedInput, open_input
from ._net import network_options_from_env
from ._progress import Progress, ProgressLogHandler
from ._report import (
    JobCounts,
    ReportWriter,
    check_report_path,
    report_line,
    row_outcome,
    summary_table,
)
from ._sending import CancelOutcome
from ._serde import cancelation_json, loads, request_body, structure_request
from ._store import (
    JobStore,
    JournalBusyError,
    JournalError,
    JournalRequest,
    PlannedRequest,
    PlannedRow,
    RequestState,
)
from ._text import printable
from ._transport import RetryPolicy
from .auth import Auth
from .batching import group_by_order
from .bulk import result_from_outcome, result_from_tracking
from .client import MiraklConnectClient
from .errors import (
    ApiError,
    AuthenticationError,
    ConnectError,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    UncertainDeliveryError,
)
from .journal import Journal, PlanStaging, SqliteStore
from .models import (
    ActionAccepted,
    ActionStatus,
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
)
from .reconcile import ReconcilePolicy, SentCancel, Verdict, reconcile
from .tracker import ActionTracker, PollPolicy, TrackedResult

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "JobOptions",
           "check_job_paths", "default_journal_path", "reconcile_job", "run_job"]

_T = TypeVar("_T")

logger = logging.getLogger("mirakl_cancel")

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

#: Status codes that prove the API refused a cancel before processing it.
_REFUSED_UNPROCESSED = (401, 403, 429, 503)


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


# --- the client that journals its status reads -----------------------------------------

class _JournalingClient(MiraklConnectClient):
    """A client that brackets every status read with store marks (see module doc).

    The tracker already spaces reads of one action; this makes that spacing survive a
    crash: the next process reads `last_polled_at` and waits the interval from there.
    The "started" mark is committed before the read leaves; the "ended" one is lazy (a
    crash before it is written leaves the "started" one, which counts as a read at the
    moment of the resume: the safe side).
    """

    #: The job's store (not `store`: that is the client's shared fleet store).
    job_store: JobStore | None = None
    #: The request key of each tracked action id (the store is keyed by request).
    keys: dict[str, str] | None = None
    #: Told when each action's next read is due, so a quiet wait can say until when.
    progress: Progress | None = None
    #: The tracker's interval between reads of a pending action.
    read_interval: float = 0.0

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        store = self.job_store
        key = self.keys.get(action_id) if self.keys is not None else None
        if store is not None and key is not None:
            await store.mark_poll_started(key)
        status: ActionStatus | None = None
        try:
            status = await super().get_action_status(action_id, retry=retry)
            return status
        finally:
            if store is not None and key is not None:
                store.note_polled(key, status=status.raw_status if status else None)
            if self.progress is not None:
                final = status is not None and status.is_terminal
                self.progress.read_done(
                    action_id, None if final else time.time() + self.read_interval)


# --- result mapping: bulk.py owns the outcome rules ----------------------------------------

def outcome_for_send_error(request: CancelRequest, error: MiraklError) -> tuple[str, list[str]]:
    """Outcome of a cancel whose POST failed (bulk's rules: UNCERTAIN, REJECTED or ERROR)."""
    result = result_from_outcome(CancelOutcome(request, error=error))
    return result.outcome.value, result.error_texts()


#: The request an accepted cancel's tracking result is judged with in the job. bulk's
#: rules decide from the tracking result alone (the request is only carried into the
#: CancelResult), so the job need not read back and parse each request's body for it.
_CARRIED = CancelRequest("-", [Cancelation(quantity=0, reason=CancelReason.OUT_OF_STOCK,
                                           price=Money(Decimal(0), "EUR"),
                                           shipping_price=Money(Decimal(0), "EUR"),
                                           order_line_id="-")])


def outcome_for_tracking(request: CancelRequest, action_id: str,
                         tracked: TrackedResult) -> tuple[str, list[str]]:
    """Outcome of an accepted cancel once tracking ended (bulk's rules)."""
    accepted = CancelOutcome(request, accepted=ActionAccepted(action_id, request.order_id))
    result = result_from_tracking(accepted, tracked)
    return result.outcome.value, result.error_texts()


def _refused_unprocessed(error: MiraklError | None) -> bool:
    """Whether `error` proves the cancel was not processed, so sending it again is safe."""
    if error is None or isinstance(error, UncertainDeliveryError):
        return False
    if isinstance(error, ApiError):
        return error.status in _REFUSED_UNPROCESSED
    # No connection could be made: the request never left.
    return isinstance(error, ConnectError)


# --- the run --------------------------------------------------------------------------

class _Run:
    """One execution of a job against the journal: send, track, record, reconcile."""

    def __init__(self, options: JobOptions, store: JobStore, client: _JournalingClient,
                 progress: Progress, err: TextIO | None = None) -> None:
        self.options = options
        self.store = store
        self.client = client
        self.progress = progress
        self.err = err or sys.stderr
        #: Stop sending new requests.
        self.stop = asyncio.Event()
        #: Stop everything (a signal): also stop waiting for actions.
        self.interrupt = asyncio.Event()
        self.all_done = asyncio.Event()
        self.outstanding = 0
        self.posts_sent = 0
        self.by_action: dict[str, str] = {}
        client.keys = self.by_action
        #: Marks being journaled on their own (action ids, results of tracking).
        self._recording: set[asyncio.Future[None]] = set()
        self._sends_left = 0
        self.stop_reason: str | None = None
        self.tracker: ActionTracker | None = None
        #: Verdicts given this run, when reconciliation ran.
        self.reconciled: Counter[str] | None = None
        self.resent_unapplied = 0
        #: The tracking policy of the current pass (see `_pass`).
        self._policy = options.policy
        #: A signal stopped reconciliation (its settling wait or its reads).
        self.reconcile_interrupted = False
        #: Requests of this run whose POST reached the API (answered, or maybe processed).
        self.reached = 0
        #: Sending stopped because no connection could be made at all.
        self.unreachable = False
        self._connect_failures: set[str] = set()

    def _resolved(self, *, tracked: bool = False) -> None:
        self.outstanding -= 1
        self.progress.resolved += 1
        if tracked:
            self.progress.tracking -= 1
        if self.outstanding <= 0:
            self.all_done.set()

    def request_stop(self, reason: str) -> None:
        """Stop sending new requests (signal, or a failure every request would share)."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    def _note(self, text: str) -> None:
        if not self.options.quiet:
            self.progress.clear()
            print(text, file=self.err, flush=True)

    # tracking ------------------------------------------------------------------------

    def _on_tracked(self, result: TrackedResult) -> None:
        key = self.by_action.pop(result.action_id, None)
        if key is None:
            return
        self.progress.forget(result.action_id)
        self._background(self._record_tracked(key, result))

    async def _record_tracked(self, key: str, result: TrackedResult) -> None:
        try:
            outcome, errors = outcome_for_tracking(_CARRIED, result.action_id, result)
            status = result.status.raw_status if result.status else None
            if result.status is not None or isinstance(result.error, NotFoundError):
                await self.store.mark_done(key, outcome, status=status, errors=errors)
            else:
                # Timed out, or reading failed for good (auth...): the action still exists,
                # so it stays ACCEPTED and a re-run tracks it on.
                await self.store.mark_tracking_stopped(key, outcome, errors)
        except Exception:
            logger.exception("recording the result of action %s (%s) failed",
                             result.action_id, key)
        finally:
            self._resolved(tracked=True)  # even if journaling failed: never wait forever

    def _track(self, request: JournalRequest | str, action_id: str, order_id: str,
               last_polled_at: float | None) -> None:
        key = request if isinstance(request, str) else request.key
        self.by_action[action_id] = key
        assert self.tracker is not None
        self.tracker.add(action_id, order_id=order_id, last_polled_at=last_polled_at)
        # When the tracker will read it first (its rule: the first delay from now, and
        # never within the ceiling of the last read), for the progress line.
        policy = self._policy
        due = time.time() + policy.first_delay
        if last_polled_at is not None:
            due = max(due, last_polled_at + policy.min_interval)
        self.progress.tracking += 1
        self.progress.read_due(action_id, due)

    @staticmethod
    def _cancel_request(request: JournalRequest) -> CancelRequest:
        body = loads(request.body)
        return structure_request(request.order_id, body["cancelations"])

    # sending -------------------------------------------------------------------------

    async def _send(self, request: JournalRequest, resend: bool) -> None:
        cancel = self._cancel_request(request)
        marked = False

        async def on_send() -> None:
            # Awaited by the transport right before each attempt leaves. The first call
            # moves the request to SENDING (durably: the guarantee that a cancel is on
            # record before it can reach the API); a retry (after a refusal the API did
            # not process) only moves `sent_at` to the new attempt. Both share their
            # flush with the marks of the other requests leaving at the same time.
            nonlocal marked
            if marked:
                await self.store.mark_send_attempt(request.key)
                return
            await self.store.mark_sending(request.key, resend=resend)
            marked = True
            self.posts_sent += 1
            self.progress.sent += 1

        try:
            accepted = await with_request_key(  # the journal key, on the cancel's span
                request.key, self.client.cancel(cancel, on_send=on_send))
        except MiraklError as exc:
            outcome, errors = outcome_for_send_error(cancel, exc)
            if isinstance(exc, ConnectError):
                self._connect_failed(exc)
                if marked and request.state is RequestState.PENDING:
                    # No connection was ever made: the cancel never left. Undo the send
                    # mark (and the count), so the journal says nothing reached a server
                    # and a re-run may go to a corrected base URL.
                    await self.store.mark_not_sent(request.key)
                    marked = False
                    self.posts_sent -= 1
                    self.progress.sent -= 1
            else:
                self.reached += marked
            if not marked:
                # No attempt left (no token, a long 429 pause...): the API never saw it. A
                # fresh request is final for this run but resendable; a resend keeps its
                # row as it was (an UNCERTAIN one may still have been applied before).
                if request.state is RequestState.PENDING:
                    await self.store.mark_unsent(request.key, outcome, errors)
            elif outcome == "UNCERTAIN":
                await self.store.mark_uncertain(request.key, errors)
            else:
                await self.store.mark_done(request.key, outcome, errors=errors,
                                           resendable=_refused_unprocessed(exc))
            if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
                self.request_stop(f"stopping: the API refused our credentials ({exc}); "
                                  "the remaining requests were not sent")
            self._resolved()
            return
        except (JournalError, sqlite3.Error) as exc:
            # The journal cannot record sends any more: sending on would be unguarded.
            self.request_stop(f"stopping: the journal failed ({exc})")
            self._resolved()
            return
        # The sender goes on to the next request while the action id is being flushed:
        # the store writes marks in order, so the next SENDING mark cannot be durable
        # before this ACCEPTED one, and if this one fails the next is refused.
        self.reached += 1
        recorded = self.store.mark_accepted(request.key, accepted.action_id)  # in order, now
        self._background(self._accepted(request, accepted.action_id, recorded))

    async def _accepted(self, request: JournalRequest, action_id: str,
                        marked: Awaitable[None]) -> None:
        """Wait for the action id of an accepted cancel to be journaled, then track it."""
        try:
            await marked
        except (JournalError, sqlite3.Error) as exc:
            # The cancel *was* accepted: its action id must not vanish with the journal.
            # The row stays SENDING, so a re-run reports it UNCERTAIN and never resends it.
            logger.error("cancel of order %s (%s) was accepted as action %s, but the journal "
                         "could not record it: %s", request.order_id, request.key,
                         action_id, exc)
            self.request_stop(f"stopping: the journal failed ({exc}); the cancel of order "
                              f"{request.order_id} was accepted as action {action_id}")
            self._resolved()
            return
        except Exception as exc:
            logger.exception("recording the action of %s failed unexpectedly", request.key)
            self.request_stop(f"stopping: sending {request.key} failed unexpectedly "
                              f"({type(exc).__name__}: {exc})")
            self._resolved()
            return
        self.progress.accepted += 1
        if self.interrupt.is_set():
            self._resolved()  # journaled; tracking has stopped (a re-run tracks it on)
            return
        self._track(request, action_id, request.order_id, None)

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

    def _background(self, work: Awaitable[None]) -> None:
        """Run `work` on its own; the pass waits for it before it ends."""
        task = asyncio.ensure_future(work)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _sender(self, queue: asyncio.Queue[tuple[JournalRequest, bool] | None],
                      room: asyncio.Semaphore) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            room.release()
            if self.stop.is_set():
                continue  # drain: the producer must never wait on a full queue
            self._sends_left -= 1
            request, resend = item
            try:
                await self._send(request, resend)
                self.progress.sends_over += 1
            except Exception as exc:
                # Whatever failed (journaling an error outcome, a bug), the request must
                # count as resolved, or the run would wait for it forever; and sending on
                # past an unexplained failure is not worth the risk.
                logger.exception("sending %s failed unexpectedly", request.key)
                self.request_stop(f"stopping: sending {request.key} failed unexpectedly "
                                  f"({type(exc).__name__}: {exc})")
                self._resolved()

    # the whole run ---------------------------------------------------------------------

    def _choice(self, request: JournalRequest, resume: bool) -> str | None:
        """What this run does with `request`: "send", "resend", "track" or nothing.

        `resume` (run): everything unfinished. Otherwise (reconcile): only the requests
        proven NOT_APPLIED, when --resend-unapplied asks for them.
        """
        opts = self.options
        state = request.state
        if state is RequestState.DONE and request.outcome == "NOT_APPLIED":
            return "resend" if opts.reconcile is not None and opts.reconcile.resend else None
        if not resume:
            return None
        if state is RequestState.PENDING:
            return "send"
        if (state is RequestState.UNCERTAIN and opts.resend_uncertain) or (
                state is RequestState.DONE and request.resendable):
            return "resend"
        if state is RequestState.ACCEPTED and request.action_id:
            return "track"
        return None

    async def execute(self, *, resume: bool = True) -> bool:
        """Send and track until everything is final or a stop; True when interrupted."""
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

        async def work() -> AsyncIterator[tuple[JournalRequest, str]]:
            async for request in self.store.requests():
                choice = self._choice(request, resume)
                if choice is not None:
                    if request.outcome == "NOT_APPLIED" and choice == "resend":
                        self.resent_unapplied += 1
                    self.progress.resolved -= 1
                    yield request, choice

        return await self._pass(work())

    async def _pass(self, work: AsyncIterator[tuple[JournalRequest, str]]) -> bool:
        """Send and track `work` to the end; True when interrupted. The work streams from
        the store through a bounded queue; `outstanding` counts what was handed out,
        plus one for the producer until it has read everything."""
        opts = self.options
        self.outstanding = 1
        self.progress.to_send = self.progress.sends_over
        self._sends_left = 0
        self.all_done.clear()
        self._policy = opts.policy
        tracker = ActionTracker(self.client, self._policy, concurrency=opts.concurrency)
        self.tracker = tracker
        unsubscribe = tracker.subscribe(self._on_tracked)
        count = opts.concurrency
        # Bounded by `room` (requests read ahead of the senders), not by the queue itself,
        # so that the end-of-work marks always fit, even during a cancellation.
        queue: asyncio.Queue[tuple[JournalRequest, bool] | None] = asyncio.Queue()
        room = asyncio.Semaphore(4 * opts.concurrency)
        senders = [asyncio.create_task(self._sender(queue, room)) for _ in range(count)]

        async def produce() -> None:
            try:
                async for request, choice in work:
                    if self.interrupt.is_set():
                        break
                    self.outstanding += 1
                    if choice != "track":
                        self._sends_left += 1  # taken off by a sender, or after a stop
                        self.progress.to_send += 1
                    if choice == "track":
                        assert request.action_id is not None
                        self._track(request, request.action_id, request.order_id,
                                    request.last_contact())
                    elif not self.stop.is_set():
                        await room.acquire()
                        queue.put_nowait((request, choice == "resend"))
            finally:
                for _ in senders:
                    queue.put_nowait(None)
            self.outstanding -= 1  # everything is handed out
            if self.outstanding <= 0:
                self.all_done.set()

        producer = asyncio.create_task(produce())
        try:
            await _first(self.stop, self.all_done)
            if not self.stop.is_set():
                return False
            # Let the POSTs in flight finish and be journaled; send nothing new.
            await asyncio.gather(*senders)
            if self.interrupt.is_set():
                return True
            await producer  # it still hands over what is to be tracked
            # Sending stopped for a reason shared by every request (credentials refused):
            # the unsent stay PENDING for a re-run; the accepted ones are still tracked.
            self.outstanding -= self._sends_left
            if self.outstanding > 0:
                self.all_done.clear()
                await _first(self.interrupt, self.all_done)
            return self.interrupt.is_set()
        finally:
            for task in (*senders, producer):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*senders, producer, return_exceptions=True)
            # Action ids and results already seen are journaled before the pass ends.
            while self._recording:
                await asyncio.gather(*self._recording, return_exceptions=True)
            unsubscribe()
            await tracker.close(drain=False)

    async def main(self, *, resume: bool = True) -> bool:
        """The run, then (with `options.reconcile`) reconciliation; True when interrupted."""
        try:
            interrupted = await self.execute(resume=resume)
        finally:
            await self.progress.stop()
        policy = self.options.reconcile
        if interrupted or policy is None:
            return interrupted
        if self.stop.is_set():
            self._note("not reconciling: sending stopped early")
            return False
        return await self.reconcile_all(policy)

    # reconciliation --------------------------------------------------------------------

    async def reconcile_all(self, policy: ReconcilePolicy) -> bool:
        """Reconcile every UNCERTAIN request; resend the NOT_APPLIED ones if asked, and
        reconcile those resends again if they too end UNCERTAIN, `max_rounds` at most.
        True when interrupted (the rows not yet judged stay UNCERTAIN)."""
        self.reconciled = Counter()
        only: set[str] | None = None  # later rounds: just the resends that came back uncertain
        for round_number in range(1, policy.max_rounds + 2):
            rows = [r async for r in self.store.requests(RequestState.UNCERTAIN)
                    if only is None or r.key in only]
            if not rows:
                return False
            unapplied, interrupted = await self._reconcile_round(rows, policy)
            if interrupted:
                self.reconcile_interrupted = True
                return True
            if not (policy.resend and unapplied) or round_number > policy.max_rounds:
                return False
            self._note(f"sending again {len(unapplied)} cancel(s) proven not applied "
                       "(--resend-unapplied)")
            self.resent_unapplied += len(unapplied)
            if await self._pass(self._resends(unapplied)):
                return True
            if self.stop.is_set():
                return False
            only = set(unapplied)
        return False

    async def _reconcile_round(self, rows: Sequence[JournalRequest],
                               policy: ReconcilePolicy) -> tuple[list[str], bool]:
        """Wait out the settling window, judge `rows`, journal each verdict.

        Returns the keys proven NOT_APPLIED, and whether a signal interrupted the round.
        """
        assert self.reconciled is not None
        keys: list[str] = []
        sent: list[SentCancel] = []
        for row in rows:
            if row.sent_at is None:  # never written by mark_sending; only a damaged journal
                await self._record(row, Verdict.UNCERTAIN, "the journal has no send time for this "
                             "cancel, so its adjustments cannot be dated: check the order")
                continue
            keys.append(row.key)
            sent.append(SentCancel(self._cancel_request(row),
                                   datetime.fromtimestamp(row.sent_at, timezone.utc)))
        if not sent:
            return [], False
        deadline = max(s.sent_at for s in sent) + timedelta(seconds=policy.settle)
        wait = (deadline - datetime.now(timezone.utc)).total_seconds()
        if wait > 0:
            until = deadline.astimezone().strftime("%H:%M:%S")
            self._note(f"reconciling {len(sent)} uncertain cancel(s): waiting {wait:.0f}s, "
                       f"until {until}, for the settling window ({policy.settle:g}s after the "
                       "last send) to pass; Ctrl-C leaves them UNCERTAIN")
            self.progress.waiting = (f"{len(sent):,} uncertain: settling until {until}; "
                                     "Ctrl-C leaves them UNCERTAIN")
            self.progress.restart()
            if await _unless(self.interrupt, asyncio.sleep(wait)) is _INTERRUPTED:
                await self.progress.stop()
                return [], True
        else:
            self._note(f"reconciling {len(sent)} uncertain cancel(s)")
        self.progress.waiting = f"reading the orders of {len(sent):,} uncertain cancel(s)"
        self.progress.restart()
        others = await self._rivals({s.request.order_id for s in sent}, set(keys))
        try:
            verdicts = await _unless(self.interrupt,
                                     reconcile(self.client, sent, others=others, policy=policy))
        except MiraklError as exc:
            await self.progress.stop()
            for key in keys:
                await self._record(await self.store.request(key), Verdict.UNCERTAIN,
                             f"reconciliation failed: {exc}")
            self._note(f"reconciliation failed: {exc}; the cancels stay UNCERTAIN")
            return [], False
        await self.progress.stop()
        if verdicts is _INTERRUPTED:
            return [], True
        assert isinstance(verdicts, list)
        unapplied: list[str] = []
        for key, verdict in zip(keys, verdicts, strict=True):
            await self._record(await self.store.request(key), verdict.verdict, verdict.reason,
                         [a.id for a in verdict.adjustments])
            if verdict.verdict is Verdict.NOT_APPLIED:
                unapplied.append(key)
        return unapplied, False

    async def _record(self, row: JournalRequest, verdict: Verdict, reason: str,
                adjustments: Sequence[str] = ()) -> None:
        """Journal one verdict; the row's errors keep what made it uncertain, plus why."""
        assert self.reconciled is not None
        self.reconciled[verdict.value] += 1
        note = f"reconciled: {reason}"
        if verdict is Verdict.UNCERTAIN:
            errors = [e for e in row.errors if not e.startswith("reconciled: ")] + [note]
        else:
            errors = [note]
        await self.store.mark_reconciled(row.key, verdict.value, reason, adjustments,
                                         errors=errors)

    async def _resends(self, keys: Sequence[str]) -> AsyncIterator[tuple[JournalRequest, str]]:
        for key in keys:
            yield await self.store.request(key), "resend"

    async def _rivals(self, orders: set[str], exclude: set[str]) -> list[SentCancel]:
        """This job's other cancels on `orders` that were, or may yet be, applied.

        They compete with the uncertain ones for the same adjustments, so each must
        claim its share: accepted requests (except those whose action FAILED, which
        cancelled nothing) and requests an earlier reconciliation found APPLIED.
        """
        rivals: list[SentCancel] = []
        async for row in self.store.requests(orders=orders):
            if row.key in exclude or row.sent_at is None:
                continue
            accepted = row.action_id is not None and row.outcome != "FAILED"
            if accepted or (row.state is RequestState.DONE
                            and row.reconcile_verdict == Verdict.APPLIED.value):
                rivals.append(SentCancel(self._cancel_request(row),
                                         datetime.fromtimestamp(row.sent_at, timezone.utc)))
        return rivals


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


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of `events` is set."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


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
        self.main: asyncio.Task[bool] | None = None
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


def check_job_paths(options: JobOptions) -> None:
    """Every file check `run`/`reconcile` can fail, done before anything is sent.

    The input must be a readable file; the report and the journal must be writable, and
    no two of the three may be the same file (a report written over its input, or over
    the journal, would destroy it). Raises ValueError with the reason.
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
    if journal is None and path is not None:
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
    """Open (or create) the job's journal; returns (journal, resumed, exit code if not)."""
    path = options.input_path
    try:
        check_job_paths(options)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return None, False, EXIT_BAD_INPUT
    assert path is not None
    journal_path = options.journal_path or default_journal_path(path)
    existing = journal_path.exists() and not options.dry_run
    journal: Journal | None = None
    if existing:
        try:
            journal = Journal.open(journal_path)
        except (JournalBusyError, JournalError) as exc:
            print(f"error: {exc}", file=err)
            return None, False, EXIT_BAD_INPUT
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
                return None, False, EXIT_BAD_INPUT
            for problem in problems:
                print(f"warning: {problem} (--force: resuming the journal's plan)", file=err)
            if not options.quiet:
                counts = journal.counts()
                summary = ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
                print(f"resuming {journal_path} ({summary})", file=err)
            return journal, True, EXIT_OK
    # A new job: check the input first, streaming it into a staging file (bounded memory);
    # nothing is sent, and no journal created, unless it is clean.
    with PlanStaging() as staging:
        try:
            kind = _stage_input(path, options, staging, err)
        except InputError as exc:
            kind = None
            print(f"error: {exc}", file=err)
        if kind is None:
            if journal is not None:
                journal.close()
            return None, False, EXIT_BAD_INPUT
        if options.dry_run:
            print_dry_run(staging, options.max_lines_per_request, out)
            return None, False, EXIT_OK
        if journal is None:
            try:
                journal = Journal.open(journal_path)
            except (JournalBusyError, JournalError) as exc:
                print(f"error: {exc}", file=err)
                return None, False, EXIT_BAD_INPUT
        requests = journal.create_job_from_staging(
            staging, input_path=str(path.resolve()), input_sha256=_sha256(path),
            input_format=kind.value, base_url=options.base_url,
            max_lines=options.max_lines_per_request,
            options={"max_lines_per_request": options.max_lines_per_request,
                     "skip_invalid": options.skip_invalid})
        rows = staging.valid_rows
    if not options.quiet:
        print(f"journal: {journal_path} ({requests} request(s) for {rows} row(s))", file=err)
    return journal, False, EXIT_OK


def _stage_input(path: Path, options: JobOptions, staging: PlanStaging,
                 err: TextIO) -> InputFormat | None:
    """Check every row of `path` into `staging`, printing each issue as it is found.

    Returns the format, or None when nothing may be sent (errors without --skip-invalid,
    header errors, no valid row). One pass, any size: rows are checked and written in
    order; identical rows are found afterwards by the staging file.
    """
    stream = open_input(path, options.input_format, encoding=options.encoding,
                        decimal_comma=options.decimal_comma)
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


async def _finish(store: JobStore, options: JobOptions, counts: JobCounts, out: TextIO,
                  err: TextIO, notes: Sequence[str] = ()) -> int:
    """Report (streamed from the store, row by row) and summary; the exit code."""
    writer: ReportWriter | None = None
    report_failed = False
    if options.report_path is not None:
        try:
            writer = ReportWriter(options.report_path)
        except (OSError, ValueError) as exc:
            report_failed = True
            print(f"error: cannot write the report {options.report_path}: {exc}", file=err)
    lines = 0
    try:
        async for row in store.rows():
            line = report_line(row)
            lines += 1
            counts.rows_by_outcome[line.outcome] += 1
            if writer is not None:
                writer.add(line)
        if writer is not None:
            writer.commit()
    except OSError as exc:
        report_failed = True
        print(f"error: cannot write the report {options.report_path}: {exc}", file=err)
        if writer is not None:
            writer.discard()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    async for request in store.requests(bodies=False):
        counts.requests_by_outcome[row_outcome(request)[0]] += 1
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
    return EXIT_OK if lines and counts.rows_by_outcome["SUCCEEDED"] == lines \
        else EXIT_SOME_FAILED


async def _run_async(options: JobOptions, auth: Auth, journal: Journal, resumed: bool,
                     out: TextIO, err: TextIO, log_handler: ProgressLogHandler | None,
                     *, resume: bool = True) -> int:
    store = SqliteStore(journal)
    try:
        return await _run_with_store(options, auth, store, resumed, out, err, log_handler,
                                     resume=resume)
    finally:
        await store.aclose()


async def _run_with_store(options: JobOptions, auth: Auth, store: JobStore, resumed: bool,
                          out: TextIO, err: TextIO, log_handler: ProgressLogHandler | None,
                          *, resume: bool = True) -> int:
    started = time.monotonic()
    total = sum((await store.counts()).values())
    progress = Progress(total, err, enabled=not options.quiet, tty=options.progress_tty,
                        interval=options.progress_interval)
    if log_handler is not None:
        log_handler.progress = progress
    # The transport makes its own session: one connection per request in flight at most,
    # and aiohttp's hidden resend of idempotent requests turned off.
    client = _JournalingClient(
        auth=auth, base_url=options.base_url, max_concurrency=options.concurrency,
        rate_limit=options.rate_limit, retry=options.retry, timeout=options.http_timeout,
        min_poll_interval=options.policy.min_interval,
        # v2-listOrders (reconciliation) has the same once-a-minute ceiling as a status read.
        min_list_interval=options.policy.min_interval,
        hooks=options.hooks, **network_options_from_env(os.environ))
    client.job_store = store
    client.progress = progress
    client.read_interval = options.policy.interval
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
    journal, resumed, code = _open_job(options, err, out)
    if journal is None:
        return code
    try:
        if auth is None:
            return _missing_credentials(err)
        return asyncio.run(_run_async(options, auth, journal, resumed, out, err, log_handler))
    finally:
        journal.close()


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
