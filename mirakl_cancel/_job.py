"""The resumable bulk job behind `mirakl-cancel run` (and `mirakl-cancel demo`).

Order of events for one request, each step committed to the journal before the next:

1. ``SENDING`` is committed (fsync'd) *before* the POST leaves;
2. the ``action_id`` is committed (``ACCEPTED``) as soon as the 202 arrives;
3. every status read is bracketed by "poll started" / "polled at" marks, so that a
   resumed job knows when the server last saw a read of the action;
4. the final result is committed (``DONE``).

A resumed job therefore sends only requests that certainly never left (``PENDING``),
tracks accepted actions on from their last read, and reports requests caught
mid-POST as UNCERTAIN without sending them again (unless ``--resend-uncertain``).

On SIGINT/SIGTERM it stops taking new requests, lets the POSTs in flight finish and
be journaled (never losing an action_id), stops tracking, writes the report and the
summary so far, and exits 130. A second signal aborts the POSTs in flight too; those
stay ``SENDING`` and are reported UNCERTAIN on the next run: safe, never resent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import signal
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import aiohttp
import attrs

from ._input import InputError, ParsedInput, read_input
from ._progress import Progress, ProgressLogHandler
from ._report import JobCounts, report_lines, row_outcome, summary_table, write_report
from ._serde import loads, request_body, structure_request
from ._transport import USER_AGENT, RetryPolicy
from .auth import Auth
from .batching import CancelOutcome, group_by_order
from .bulk import CancelResult, Outcome, result_from_outcome, result_from_tracking
from .client import MiraklConnectClient
from .errors import (
    ApiError,
    AuthenticationError,
    ErrorItem,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    TransportError,
    UncertainDeliveryError,
)
from .journal import (
    Journal,
    JournalBusyError,
    JournalError,
    JournalRequest,
    PlannedRequest,
    PlannedRow,
    RequestState,
)
from .models import ActionAccepted, ActionError, ActionStatus, CancelRequest
from .tracker import ActionTracker, PollPolicy, TrackedResult

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SOME_FAILED", "JobOptions",
           "default_journal_path", "run_job"]

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
    """Everything `run` needs, already resolved from flags and environment."""

    input_path: Path
    base_url: str
    input_format: str | None = None
    journal_path: Path | None = None
    report_path: Path | None = None
    concurrency: int = 8
    rate_limit: float | None = None
    max_lines_per_request: int | None = None
    policy: PollPolicy = attrs.field(factory=PollPolicy)
    resend_uncertain: bool = False
    skip_invalid: bool = False
    dry_run: bool = False
    force: bool = False
    quiet: bool = False
    progress_interval: float = 10.0
    #: None: a bar if stderr is a terminal. Tests and the demo may force it.
    progress_tty: bool | None = None
    retry: RetryPolicy | None = None
    http_timeout: float | None = None


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


def planned_rows(parsed: ParsedInput) -> list[PlannedRow]:
    """Every input row (valid or skipped) as the journal keeps it, in file order."""
    rows = [PlannedRow(r.row, r.line, r.order_id, r.cancelation.order_line_id,
                       r.cancelation.product_id, r.cancelation.quantity) for r in parsed.rows]
    rows += [PlannedRow(r.row, r.line, r.order_id, r.order_line_id, r.product_id, r.quantity,
                        tuple(f"{i.field}: {i.message}" if i.field else i.message
                              for i in r.issues))
             for r in parsed.invalid]
    return sorted(rows, key=lambda r: r.row_number)


def _totals(requests: Sequence[CancelRequest]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = collections.defaultdict(Decimal)
    for request in requests:
        for c in request.cancelations:
            totals[c.price.currency] += c.price.amount + c.shipping_price.amount + sum(
                (t.amount.amount for t in (*c.taxes, *c.shipping_taxes)), Decimal(0))
    return dict(totals)


def print_dry_run(planned: Sequence[PlannedRequest], requests: Sequence[CancelRequest],
                  parsed: ParsedInput, out: TextIO) -> None:
    """What `run` would send: one line per request, then totals. Nothing is sent."""
    print(f"dry run: {len(requests)} request(s) for {len({r.order_id for r in requests})} "
          f"order(s), {len(parsed.rows)} line(s); nothing sent", file=out)
    for plan, request in zip(planned, requests, strict=True):
        amounts = ", ".join(f"{amount} {currency}"
                            for currency, amount in sorted(_totals([request]).items()))
        rows = ",".join(str(n) for n in plan.rows)
        print(f"  {request.order_id}: {len(request.cancelations)} line(s), "
              f"{request.total_quantity} unit(s), {amounts} (rows {rows})", file=out)
    units = sum(r.total_quantity for r in requests)
    amounts = ", ".join(f"{amount} {currency}"
                        for currency, amount in sorted(_totals(requests).items()))
    print(f"total: {len(requests)} request(s), {len(parsed.rows)} line(s), {units} unit(s), "
          f"{amounts or 'no amount'} (price + shipping + taxes)", file=out)
    if parsed.invalid:
        print(f"{len(parsed.invalid)} invalid row(s) would be skipped", file=out)


# --- the client that journals its status reads -----------------------------------------

class _JournalingClient(MiraklConnectClient):
    """A client that brackets every status read with journal marks (see module doc).

    The tracker already spaces reads of one action; this makes that spacing survive a
    crash: the next process reads `last_polled_at` and waits the interval from there.
    """

    journal: Journal | None = None

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        journal = self.journal
        if journal is not None:
            journal.mark_poll_started(action_id)
        status: ActionStatus | None = None
        try:
            status = await super().get_action_status(action_id, retry=retry)
            return status
        finally:
            if journal is not None:
                journal.mark_polled(action_id, status=status.raw_status if status else None)


def _session(concurrency: int) -> aiohttp.ClientSession:
    """The HTTP session for a job, with aiohttp's hidden retry turned off.

    aiohttp re-sends an idempotent request (a status GET) once, by itself, when a reused
    keep-alive connection drops after the server read the request: the server then sees
    two reads of one action milliseconds apart, breaking the once-a-minute ceiling the
    tracker and poll guard keep. The transport's own retries are the only ones we want.
    """
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT})
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


# --- result mapping: bulk.py owns the outcome rules ----------------------------------------

def _texts(result: CancelResult) -> list[str]:
    """The report's error texts: the API's whole refusal for REJECTED, else each reason."""
    if result.outcome is Outcome.REJECTED and result.exception is not None:
        return [str(result.exception)]
    texts = []
    for detail in result.errors:
        if isinstance(detail, ActionError):
            texts.append(f"{detail.code}: {detail.message}" if detail.message else detail.code)
        elif isinstance(detail, ErrorItem):
            texts.append(f"{detail.field}: {detail.message}" if detail.field else detail.message)
        else:
            texts.append(str(detail) or type(detail).__name__)
    return texts


def outcome_for_send_error(request: CancelRequest, error: MiraklError) -> tuple[str, list[str]]:
    """Outcome of a cancel whose POST failed (bulk's rules: UNCERTAIN, REJECTED or ERROR)."""
    result = result_from_outcome(CancelOutcome(request, error=error))
    return result.outcome.value, _texts(result)


def outcome_for_tracking(request: CancelRequest, action_id: str,
                         tracked: TrackedResult) -> tuple[str, list[str]]:
    """Outcome of an accepted cancel once tracking ended (bulk's rules)."""
    accepted = CancelOutcome(request, accepted=ActionAccepted(action_id, request.order_id))
    result = result_from_tracking(accepted, tracked)
    return result.outcome.value, _texts(result)


def _refused_unprocessed(error: MiraklError | None) -> bool:
    """Whether `error` proves the cancel was not processed, so sending it again is safe."""
    if error is None or isinstance(error, UncertainDeliveryError):
        return False
    if isinstance(error, ApiError):
        return error.status in _REFUSED_UNPROCESSED
    # The transport raises a plain TransportError for a POST only when the connection
    # could not be established ("cannot connect"): nothing was sent.
    return isinstance(error, TransportError) and str(error).startswith("cannot connect")


# --- the run --------------------------------------------------------------------------

class _Run:
    """One execution of a job against the journal: send, track, record."""

    def __init__(self, options: JobOptions, journal: Journal, client: _JournalingClient,
                 progress: Progress) -> None:
        self.options = options
        self.journal = journal
        self.client = client
        self.progress = progress
        #: Stop sending new requests.
        self.stop = asyncio.Event()
        #: Stop everything (a signal): also stop waiting for actions.
        self.interrupt = asyncio.Event()
        self.all_done = asyncio.Event()
        self.outstanding = 0
        self.posts_sent = 0
        self.by_action: dict[str, str] = {}
        self.stop_reason: str | None = None
        self.tracker: ActionTracker | None = None

    def _resolved(self) -> None:
        self.outstanding -= 1
        self.progress.resolved += 1
        if self.outstanding <= 0:
            self.all_done.set()

    def request_stop(self, reason: str) -> None:
        """Stop sending new requests (signal, or a failure every request would share)."""
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    # tracking ------------------------------------------------------------------------

    def _on_tracked(self, result: TrackedResult) -> None:
        key = self.by_action.pop(result.action_id, None)
        if key is None:
            return
        try:
            request = self._cancel_request(self.journal.request(key))
            outcome, errors = outcome_for_tracking(request, result.action_id, result)
            status = result.status.raw_status if result.status else None
            if result.status is not None or isinstance(result.error, NotFoundError):
                self.journal.mark_done(key, outcome, status=status, errors=errors)
            else:
                # Timed out, or reading failed for good (auth...): the action still exists,
                # so it stays ACCEPTED and a re-run tracks it on.
                self.journal.mark_tracking_stopped(key, outcome, errors)
        finally:
            self._resolved()  # even if journaling failed: the job must not wait forever

    def _track(self, request: JournalRequest | str, action_id: str, order_id: str,
               last_polled_at: float | None) -> None:
        key = request if isinstance(request, str) else request.key
        self.by_action[action_id] = key
        assert self.tracker is not None
        self.tracker.add(action_id, order_id=order_id, last_polled_at=last_polled_at)

    @staticmethod
    def _cancel_request(request: JournalRequest) -> CancelRequest:
        body = loads(request.body)
        return structure_request(request.order_id, body["cancelations"])

    # sending -------------------------------------------------------------------------

    async def _send(self, request: JournalRequest, resend: bool) -> None:
        cancel = self._cancel_request(request)
        self.journal.mark_sending(request.key, resend=resend)  # durable before the POST
        self.posts_sent += 1
        self.progress.sent += 1
        try:
            accepted = await self.client.cancel(cancel)
        except MiraklError as exc:
            outcome, errors = outcome_for_send_error(cancel, exc)
            if outcome == "UNCERTAIN":
                self.journal.mark_uncertain(request.key, errors)
            else:
                self.journal.mark_done(request.key, outcome, errors=errors,
                                       resendable=_refused_unprocessed(exc))
            if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
                self.request_stop(f"stopping: the API refused our credentials ({exc}); "
                                  "the remaining requests were not sent")
            self._resolved()
            return
        self.journal.mark_accepted(request.key, accepted.action_id)
        self.progress.accepted += 1
        self._track(request, accepted.action_id, request.order_id, None)

    async def _sender(self, queue: collections.deque[tuple[JournalRequest, bool]]) -> None:
        while queue and not self.stop.is_set():
            request, resend = queue.popleft()
            await self._send(request, resend)

    # the whole run ---------------------------------------------------------------------

    async def execute(self) -> bool:
        """Send and track until everything is final or a stop; True when interrupted."""
        opts = self.options
        journal = self.journal
        interrupted = journal.mark_interrupted_sends(
            "the previous run stopped while this cancel was being sent: it may have been "
            "processed, so it was not sent again (see --resend-uncertain)")
        if interrupted:
            logger.warning("%d request(s) were being sent when the previous run stopped: "
                           "reported UNCERTAIN%s", len(interrupted),
                           ", sending again (--resend-uncertain)" if opts.resend_uncertain
                           else ", not sent again")
        to_send: collections.deque[tuple[JournalRequest, bool]] = collections.deque()
        to_track: list[JournalRequest] = []
        for request in journal.requests():
            if request.state is RequestState.PENDING:
                to_send.append((request, False))
            elif (request.state is RequestState.UNCERTAIN and opts.resend_uncertain) or (
                    request.state is RequestState.DONE and request.resendable):
                to_send.append((request, True))
            elif request.state is RequestState.ACCEPTED and request.action_id:
                to_track.append(request)
        self.outstanding = len(to_send) + len(to_track)
        self.progress.accepted = len(to_track)
        self.progress.resolved = self.progress.total - self.outstanding
        if self.outstanding == 0:
            return False
        tracker = ActionTracker(self.client, opts.policy, concurrency=opts.concurrency)
        self.tracker = tracker
        unsubscribe = tracker.subscribe(self._on_tracked)
        senders: list[asyncio.Task[None]] = []
        try:
            for request in to_track:
                assert request.action_id is not None
                self._track(request, request.action_id, request.order_id,
                            request.last_contact())
            senders = [asyncio.create_task(self._sender(to_send))
                       for _ in range(min(opts.concurrency, len(to_send)))]
            await _first(self.stop, self.all_done)
            if not self.stop.is_set():
                return False
            # Let the POSTs in flight finish and be journaled; send nothing new.
            await asyncio.gather(*senders)
            if self.interrupt.is_set():
                return True
            # Sending stopped for a reason shared by every request (credentials refused):
            # the unsent stay PENDING for a re-run; the accepted ones are still tracked.
            self.outstanding -= len(to_send)
            if self.outstanding > 0:
                self.all_done.clear()
                await _first(self.interrupt, self.all_done)
            return self.interrupt.is_set()
        finally:
            for task in senders:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*senders, return_exceptions=True)
            unsubscribe()
            await tracker.close(drain=False)


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


def _print_issues(parsed: ParsedInput, err: TextIO) -> None:
    for issue in parsed.issues:
        print(str(issue), file=err)


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


def _open_job(options: JobOptions, err: TextIO,
              out: TextIO) -> tuple[Journal | None, bool, int]:
    """Open (or create) the job's journal; returns (journal, resumed, exit code if not)."""
    path = options.input_path
    if not path.is_file():
        print(f"error: {path}: no such file", file=err)
        return None, False, EXIT_BAD_INPUT
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
                problems.append(f"the journal's actions were sent to {job.base_url}, not "
                                f"{options.base_url}")
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
    # A new job: check the input first; nothing is sent unless it is clean.
    try:
        parsed = read_input(path, options.input_format)
    except InputError as exc:
        if journal is not None:
            journal.close()
        print(f"error: {exc}", file=err)
        return None, False, EXIT_BAD_INPUT
    _print_issues(parsed, err)
    if parsed.file_errors or (parsed.errors and not options.skip_invalid):
        if journal is not None:
            journal.close()
        bad_rows = len({i.row for i in parsed.errors if i.row is not None})
        print(f"{len(parsed.errors)} error(s) in {bad_rows} row(s) of {path}: nothing was sent. "
              "Row numbers count data rows (the CSV header is not a row); line numbers are "
              "lines of the file."
              + ("" if parsed.file_errors else
                 " Fix them, or use --skip-invalid to send the valid rows only."), file=err)
        return None, False, EXIT_BAD_INPUT
    if not parsed.rows:
        if journal is not None:
            journal.close()
        print(f"error: {path} has no valid data rows: nothing to send", file=err)
        return None, False, EXIT_BAD_INPUT
    if parsed.invalid:
        print(f"warning: skipping {len(parsed.invalid)} invalid row(s) (--skip-invalid); they "
              "are reported as INVALID", file=err)
    planned, requests = plan_requests(parsed, options.max_lines_per_request)
    if options.dry_run:
        print_dry_run(planned, requests, parsed, out)
        return None, False, EXIT_OK
    if journal is None:
        try:
            journal = Journal.open(journal_path)
        except (JournalBusyError, JournalError) as exc:
            print(f"error: {exc}", file=err)
            return None, False, EXIT_BAD_INPUT
    journal.create_job(
        input_path=str(path.resolve()), input_sha256=_sha256(path),
        input_format=parsed.format.value, base_url=options.base_url, requests=planned,
        rows=planned_rows(parsed),
        options={"max_lines_per_request": options.max_lines_per_request,
                 "skip_invalid": options.skip_invalid})
    if not options.quiet:
        print(f"journal: {journal_path} ({len(planned)} request(s) for {len(parsed.rows)} "
              "row(s))", file=err)
    return journal, False, EXIT_OK


def _finish(journal: Journal, options: JobOptions, counts: JobCounts, out: TextIO,
            err: TextIO) -> int:
    lines = report_lines(journal.rows())
    for line in lines:
        counts.rows_by_outcome[line.outcome] += 1
    for request in journal.requests():
        counts.requests_by_outcome[row_outcome(request)[0]] += 1
    if options.report_path is not None:
        try:
            write_report(options.report_path, lines)
        except OSError as exc:
            print(f"error: cannot write the report {options.report_path}: {exc}", file=err)
    print(summary_table(counts), file=out, flush=True)
    if options.report_path is not None:
        print(f"report: {options.report_path}", file=out)
    if counts.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if lines and all(line.outcome == "SUCCEEDED" for line in lines) \
        else EXIT_SOME_FAILED


async def _run_async(options: JobOptions, auth: Auth, journal: Journal, resumed: bool,
                     out: TextIO, err: TextIO, log_handler: ProgressLogHandler | None) -> int:
    started = time.monotonic()
    total = len(journal.requests())
    progress = Progress(total, err, enabled=not options.quiet, tty=options.progress_tty,
                        interval=options.progress_interval)
    if log_handler is not None:
        log_handler.progress = progress
    session = _session(options.concurrency)
    client = _JournalingClient(
        auth=auth, base_url=options.base_url, max_concurrency=options.concurrency,
        rate_limit=options.rate_limit, retry=options.retry, timeout=options.http_timeout,
        min_poll_interval=options.policy.min_interval, session=session)
    client.journal = journal
    run = _Run(options, journal, client, progress)
    stopper = _SignalStop(run, err)
    interrupted = False
    try:
        async with session, client:
            stopper.install()
            progress.start()
            task = asyncio.ensure_future(run.execute())
            stopper.main = task
            try:
                interrupted = await task
            except asyncio.CancelledError:
                interrupted = True
            finally:
                await progress.stop()
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
                       interrupted=interrupted)
    return _finish(journal, options, counts, out, err)


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
            print("error: missing credentials: set MIRAKL_CONNECT_TOKEN, or MIRAKL_CLIENT_ID "
                  "and MIRAKL_CLIENT_SECRET", file=err)
            return EXIT_BAD_INPUT
        return asyncio.run(_run_async(options, auth, journal, resumed, out, err, log_handler))
    finally:
        journal.close()
