"""`PostgresJobStore`: one bulk job worked by a fleet of processes, in PostgreSQL.

The plan (requests, exact bodies, rows) is staged once, by the first worker, in one
transaction; every other worker started with the same file joins it (same sha256, or
it is refused). Then each worker *claims* requests in batches (`FOR UPDATE SKIP
LOCKED`: no request is handed to two workers) and sends or tracks only those.

Leases: each worker has a row in ``mirakl_cancel_job_workers`` whose `lease_until` its
heartbeat pushes forward. The guarding marks (SENDING, another attempt) are committed
only while the worker's lease holds *on the database's clock* and the request is still
its own; so once a lease has lapsed, nothing more of that worker can leave unrecorded,
and the others may safely take its work over: its SENDING requests become UNCERTAIN (it
may have died mid-POST; reconciliation settles them), its other claims go back to the
pool (PENDING ones are sent by someone else, ACCEPTED ones tracked on: the last-read
times are in the table, and the client's shared read reservations hold the ceiling on
the database clock whoever reads).

Marks are queued and written in call order by one writer task, each batch in one
transaction (group commit); reads wait for the marks made before them. No secret is
stored: bodies, keys, states, outcomes and error texts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._constants import DEFAULT_CLAIM_BATCH, DEFAULT_JOB_IDLE, DEFAULT_LEASE
from ..errors import StoreError
from .base import (
    FleetJobStore,
    JobInfo,
    JournalError,
    JournalRequest,
    JournalRow,
    PlannedRequest,
    RequestState,
    now,
    reconciled_end,
)
from .postgres import PostgresStore
from .sqlite import _REQUEST_COLUMNS as _COLUMNS
from .sqlite import _ROW_COUNT, PlanStaging, _errors, _request, _row_numbers, _texts

if TYPE_CHECKING:
    import psycopg

__all__ = ["DIED_WHILE_SENDING", "JobMismatchError", "PostgresJobStore"]

logger = logging.getLogger("mirakl_cancel")

#: Why a lapsed worker's SENDING requests are UNCERTAIN (in the report, for the operator).
DIED_WHILE_SENDING = (
    "the worker that was sending this cancel died (its lease lapsed) before the answer "
    "was recorded: it may have been processed, so it was not sent again (see --reconcile)")
_STOPPED_WHILE_SENDING = (
    "the worker sending this cancel was stopped before the answer was recorded: it may "
    "have been processed, so it was not sent again (see --reconcile)")

_REQUESTS = "mirakl_cancel_job_requests"
_ROWS = "mirakl_cancel_job_rows"
_WORKERS = "mirakl_cancel_job_workers"
_JOBS = "mirakl_cancel_jobs"

#: What a claim may hand out: unsent, accepted and still tracked, or to send again.
_CLAIMABLE = ("(state = 'PENDING' OR (state = 'ACCEPTED' AND NOT tracking_stopped) "
              "OR (state = 'DONE' AND retry))")
#: This worker's lease holds now, on the database clock (`%(job)s`, `%(me)s`).
_LEASE_HOLDS = (f"EXISTS (SELECT 1 FROM {_WORKERS} w WHERE w.job = %(job)s AND "
                "w.worker = %(me)s AND w.lease_until > clock_timestamp())")
#: Read per round trip, staged per COPY chunk, marks per transaction.
_CHUNK = 1000
_MAX_BATCH = 500


class JobMismatchError(JournalError):
    """A job of that name exists, made from another file: joining it would mix plans."""


def _line_fields(body: str, count: int) -> list[tuple[str | None, str | None, int | None]]:
    """(order_line_id, product_id, quantity) of each line of a request body, for the
    rows table (so the report needs no body parsing)."""
    lines = json.loads(body).get("cancelations", [])
    fields: list[tuple[str | None, str | None, int | None]] = []
    for n in range(count):
        line = lines[n] if n < len(lines) else {}
        quantity = line.get("quantity")
        fields.append((line.get("order_line_id"), line.get("product_id"),
                       quantity if isinstance(quantity, int) else None))
    return fields


class _Op:
    """One queued mark: its statement, who waits for it, and what a refusal means."""

    __slots__ = ("expected", "future", "guards", "key", "params", "sql")

    def __init__(self, sql: str, params: dict[str, Any], future: asyncio.Future[Any] | None,
                 *, key: str | None, expected: str | None, guards: bool) -> None:
        self.sql = sql
        self.params = params
        self.future = future
        self.key = key
        self.expected = expected
        self.guards = guards


class PostgresJobStore(FleetJobStore):
    """The job `name` in the PostgreSQL database of `store`, as one worker of its fleet.

    Use: `await open()`, then `job()`; `create(...)` from a staged plan when there is
    none (False: another worker created it meanwhile, join it), `join()` to take part
    (registers the worker and starts its heartbeat); then the `JobStore` operations;
    `aclose()` hands back whatever the worker still holds and ends its lease.

    `lease` (seconds): how long the fleet waits for a silent worker before taking its
    work over; the heartbeat renews it every third of that. `idle`: how often a worker
    with nothing to claim looks again (for lapsed leases, requests released).
    """

    def __init__(self, store: PostgresStore, name: str, *, lease: float = DEFAULT_LEASE,
                 claim_batch: int = DEFAULT_CLAIM_BATCH, idle: float | None = None) -> None:
        if not name or len(name) > 200 or not name.isprintable():
            raise ValueError("the job name must be 1 to 200 printable characters")
        if not lease > 0 or claim_batch < 1:
            raise ValueError("lease and claim_batch must be positive")
        self.store = store
        self.name = name
        self.lease = float(lease)
        self.claim_batch = claim_batch
        self.idle = min(DEFAULT_JOB_IDLE, self.lease / 4) if idle is None else idle
        self.worker_id = store.worker_id
        self._reader: psycopg.AsyncConnection[Any] | None = None
        self._writer_conn: psycopg.AsyncConnection[Any] | None = None
        self._read_lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._failed: str | None = None
        self._joined = False
        self._closed = False
        #: Loop time until which the lease surely holds (renewal start + lease, less a
        #: margin): past it, guarding marks are refused without asking the database.
        self._lease_ok_until = 0.0
        self._reconcile_conn: psycopg.AsyncConnection[Any] | None = None
        #: Round trips made by claims, and transactions committed by the writer.
        self.claim_calls = 0
        self.commits = 0

    def __repr__(self) -> str:
        return f"PostgresJobStore({self.store!r}, job={self.name!r})"

    def _params(self, **more: Any) -> dict[str, Any]:
        return {"job": self.name, "me": self.worker_id, **more}

    def _error(self, doing: str, exc: BaseException) -> JournalError:
        return JournalError(str(self.store.error(doing, exc)))

    # --- connections ------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (creating or migrating the schema) and start the writer."""
        if self._reader is None:
            try:
                self._reader = await self.store.connect()
                self._writer_conn = await self.store.connect()
            except StoreError as exc:
                raise JournalError(str(exc)) from None
            self._writer = asyncio.ensure_future(self._write())

    async def _fetch(self, doing: str, sql: str, params: dict[str, Any], *,
                     many: bool = False, bound: float | None = None) -> list[tuple[Any, ...]]:
        """One statement on the reader connection (autocommit), bounded by the timeout."""
        import psycopg

        assert self._reader is not None, "open() first"
        async with self._read_lock:
            if self._reader.closed or self._reader.broken:
                self._reader = await self._connect()
            try:
                cursor = await asyncio.wait_for(self._reader.execute(sql, params),
                                                bound or self.store.timeout)
                if cursor.description is None:
                    return []
                return await cursor.fetchall() if many else [
                    row for row in [await cursor.fetchone()] if row is not None]
            except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    with contextlib.suppress(Exception):
                        await self._reader.close()  # half-done: start afresh next time
                raise self._error(doing, exc) from None

    # --- the job: create or join ------------------------------------------------------

    async def job(self) -> JobInfo | None:
        rows = await self._fetch(
            "reading the job",
            f"SELECT input_path, input_sha256, input_format, base_url, created_at, options "
            f"FROM {_JOBS} WHERE name = %(job)s", self._params())
        if not rows:
            return None
        path, digest, kind, base_url, created, options = rows[0]
        return JobInfo(input_path=path, input_sha256=digest, input_format=kind,
                       base_url=base_url, created_at=created, options=json.loads(options))

    def check_same_input(self, job: JobInfo, sha256: str) -> None:
        """JobMismatchError unless `job` was made from a file with this digest."""
        if job.input_sha256 != sha256:
            raise JobMismatchError(
                f"the fleet job {self.name!r} was created on {job.created_at} from another "
                f"file ({job.input_path}, sha256 {job.input_sha256[:12]}...): give the same "
                "file to every worker, or another --job name for a new job")

    async def create(self, staging: PlanStaging, *, input_path: str, input_sha256: str,
                     input_format: str, base_url: str, max_lines: int | None,
                     options: dict[str, Any]) -> bool:
        """Stage the plan as job `name`, all or nothing; False if the job already exists
        (another worker created it first: check its input and join it).

        Workers starting together serialise on an advisory lock on the name, so one
        creates and the others wait for it to commit; the plan streams in by COPY."""
        import psycopg

        assert self._writer_conn is not None, "open() first"
        conn = await self.store.connect()  # its own: a long transaction, off the others
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))",
                                   (f"mirakl-cancel job {self.name}",))
                cursor = await conn.execute(f"SELECT 1 FROM {_JOBS} WHERE name = %s",
                                            (self.name,))
                if await cursor.fetchone() is not None:
                    return False
                created = datetime.now(timezone.utc).isoformat(timespec="seconds")
                await conn.execute(
                    f"INSERT INTO {_JOBS} (name, input_path, input_sha256, input_format, "
                    "base_url, created_at, options) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (self.name, input_path, input_sha256, input_format, base_url, created,
                     json.dumps(options, sort_keys=True)))
                await self._copy_plan(conn, staging, max_lines)
            return True
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            raise self._error("creating the job", exc) from None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _copy_plan(self, conn: psycopg.AsyncConnection[Any], staging: PlanStaging,
                         max_lines: int | None) -> None:
        cursor = conn.cursor()
        async with cursor.copy(f"COPY {_REQUESTS} (job, seq, key, order_id, rows, body) "
                               "FROM STDIN") as copy:
            rows: list[tuple[Any, ...]] = []
            for seq, planned in enumerate(staging.plan(max_lines)):
                await copy.write_row((self.name, seq, planned.key, planned.order_id,
                                      ",".join(map(str, planned.rows)), planned.body))
                for number, line, (line_id, product, quantity) in zip(
                        planned.rows, planned.lines,
                        _line_fields(planned.body, len(planned.rows)), strict=True):
                    rows.append((self.name, number, line, seq, planned.order_id, line_id,
                                 product, quantity, None))
        async with cursor.copy(f"COPY {_ROWS} (job, row_number, line_number, request, "
                               "order_id, order_line_id, product_id, quantity, errors) "
                               "FROM STDIN") as copy:
            for row in rows:
                await copy.write_row(row)
            rows.clear()
            for invalid in staging.invalid():
                number, line, _, order_id, line_id, product, quantity, errors = invalid
                await copy.write_row((self.name, number, line, None, order_id, line_id,
                                      product, quantity, errors))

    async def join(self, *, resend_unapplied: bool = False) -> None:
        """Register this worker (its lease starts) and start its heartbeat.

        The first worker of a fleet run (no other lease holds) also starts the run
        afresh: accepted requests whose tracking gave up are tracked again, resendable
        ones sent again, and the job reconciled again. `resend_unapplied`
        (`--resend-unapplied`): the requests an earlier reconciliation proved NOT_APPLIED
        are handed out again too, whichever worker asks (the job's choice then resends
        them, as a single process does)."""
        async with self._read_lock:
            await self._join(resend_unapplied)
        self._joined = True
        self._heartbeat = asyncio.ensure_future(self._beat())

    async def _join(self, resend_unapplied: bool) -> None:
        import psycopg

        assert self._reader is not None
        params = self._params(lease=self.lease)
        started = asyncio.get_running_loop().time()
        try:
            async with self._reader.transaction():
                await asyncio.wait_for(self._reader.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%(lock)s, 7))",
                    {"lock": f"mirakl-cancel job {self.name}"}), self.store.timeout)
                cursor = await self._reader.execute(
                    f"SELECT count(*) FROM {_WORKERS} WHERE job = %(job)s "
                    "AND lease_until > clock_timestamp()", params)
                row = await cursor.fetchone()
                if row is not None and row[0] == 0:
                    await self._reader.execute(
                        f"UPDATE {_REQUESTS} SET tracking_stopped = false, retry = "
                        "(state = 'DONE' AND resendable) WHERE job = %(job)s AND "
                        "(tracking_stopped OR retry OR (state = 'DONE' AND resendable))",
                        params)
                    await self._reader.execute(
                        f"UPDATE {_JOBS} SET reconciled = false WHERE name = %(job)s", params)
                if resend_unapplied:
                    # Not a row a live worker holds: that one is being resent already.
                    await self._reader.execute(
                        f"UPDATE {_REQUESTS} AS q SET retry = true WHERE q.job = %(job)s "
                        "AND q.state = 'DONE' AND q.outcome = 'NOT_APPLIED' AND NOT EXISTS "
                        f"(SELECT 1 FROM {_WORKERS} w WHERE w.job = q.job AND w.worker = "
                        "q.owner AND w.lease_until > clock_timestamp())", params)
                await self._reader.execute(
                    f"INSERT INTO {_WORKERS} (job, worker, lease_until) VALUES (%(job)s, "
                    "%(me)s, clock_timestamp() + make_interval(secs => %(lease)s))", params)
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            raise self._error("joining the job", exc) from None
        self._lease_ok_until = started + self.lease * 0.9

    async def _beat(self) -> None:
        """Renew the lease every third of it; a lease found lost stops guarding marks."""
        loop = asyncio.get_running_loop()
        # `_closed` ends the loop, not only a cancel: on Python < 3.12 a cancel that
        # lands as `wait_for`'s statement completes is swallowed (it returns the result),
        # and a heartbeat that beats on for ever kept a finished worker from exiting.
        while not self._closed:
            await asyncio.sleep(self.lease / 3)
            if self._closed:
                return
            started = loop.time()
            try:
                rows = await self._fetch(
                    "renewing the lease",
                    f"UPDATE {_WORKERS} SET lease_until = clock_timestamp() + "
                    "make_interval(secs => %(lease)s) WHERE job = %(job)s AND worker = "
                    "%(me)s AND lease_until > clock_timestamp() RETURNING 1",
                    self._params(lease=self.lease), bound=self.lease / 3)
            except JournalError as exc:
                logger.warning("the fleet lease was not renewed: %s", exc)
                continue  # the guard in mark_sending refuses once it may have lapsed
            if self._closed:
                return
            if not rows:
                self._failed = ("this worker's lease lapsed (it was silent too long): the "
                                "fleet took its work over, so it sends nothing more")
                logger.error("%s", self._failed)
                return
            self._lease_ok_until = started + self.lease * 0.9

    @property
    def stopped_because(self) -> str | None:
        return self._failed

    # --- claims -----------------------------------------------------------------------

    async def claims(self) -> AsyncIterator[JournalRequest]:
        """Batches of requests claimed for this worker, until the fleet's job is done."""
        while True:
            batch = await self._claim()
            for request in batch:
                yield request
            if batch:
                continue
            if self._failed is not None:
                # This worker lost its lease: what it held went to the others, and it can
                # claim nothing more. (Waiting for the job to end could be for ever.)
                logger.error("claiming stopped: %s", self._failed)
                return
            if await self._finished():
                return
            await asyncio.sleep(self.idle)
            await self.mark_interrupted_sends(DIED_WHILE_SENDING)

    async def _claim(self) -> list[JournalRequest]:
        if self._failed is not None:
            return []
        self.claim_calls += 1
        rows = await self._fetch(
            "claiming requests",
            # MATERIALIZED: the LIMIT must bind once (a subquery the planner re-runs per
            # row would claim more than asked).
            f"""WITH c AS MATERIALIZED (
                SELECT seq FROM {_REQUESTS} WHERE job = %(job)s AND owner IS NULL
                AND {_CLAIMABLE} AND {_LEASE_HOLDS} ORDER BY seq LIMIT %(n)s
                FOR UPDATE SKIP LOCKED)
            UPDATE {_REQUESTS} AS q SET owner = %(me)s, retry = false FROM c
            WHERE q.job = %(job)s AND q.seq = c.seq
            RETURNING {', '.join('q.' + c for c in _COLUMNS.split(', '))}""",
            self._params(n=self.claim_batch), many=True)
        return sorted((_request(row) for row in rows), key=lambda r: r.seq)

    async def _finished(self) -> bool:
        """Whether nothing is left to send or track but what this worker holds."""
        rows = await self._fetch(
            "checking whether the job is done",
            f"SELECT 1 FROM {_REQUESTS} WHERE job = %(job)s AND owner IS DISTINCT FROM "
            f"%(me)s AND (state = 'SENDING' OR {_CLAIMABLE}) LIMIT 1", self._params())
        return not rows

    async def mark_interrupted_sends(self, message: str) -> list[str]:
        """Take the work of every worker whose lease lapsed: its SENDING requests become
        UNCERTAIN (with DIED_WHILE_SENDING, whatever `message`: the reason differs from
        a single process's), its other claims go back to the pool."""
        del message
        rows = await self._fetch(
            "taking over lapsed workers",
            f"""WITH live AS (SELECT worker FROM {_WORKERS} WHERE job = %(job)s
                              AND lease_until > clock_timestamp()),
            gone AS (DELETE FROM {_WORKERS} WHERE job = %(job)s
                     AND lease_until <= clock_timestamp()),
            released AS (UPDATE {_REQUESTS} SET owner = NULL WHERE job = %(job)s
                         AND owner IS NOT NULL AND state <> 'SENDING'
                         AND owner NOT IN (SELECT worker FROM live))
            UPDATE {_REQUESTS} SET state = 'UNCERTAIN', outcome = 'UNCERTAIN', owner = NULL,
                finished_at = %(at)s, errors = %(errors)s
            WHERE job = %(job)s AND state = 'SENDING' AND owner IS NOT NULL
              AND owner NOT IN (SELECT worker FROM live)
            RETURNING order_id, rows""",
            self._params(at=time.time(), errors=_texts([DIED_WHILE_SENDING])), many=True)
        keys = [PlannedRequest.make_key(order_id, _row_numbers(numbers))
                for order_id, numbers in rows]
        if keys:
            logger.warning("%d cancel(s) were being sent by a worker whose lease lapsed: "
                           "reported UNCERTAIN, not sent again", len(keys))
        return keys

    # --- reconciliation: one worker at a time -----------------------------------------

    async def reconcile_turn(self) -> bool:
        await self.flush()
        conn = await self._connect()
        try:
            while True:
                cursor = await asyncio.wait_for(conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 8))",
                    (f"mirakl-cancel reconcile {self.name}",)), self.store.timeout)
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
                await asyncio.sleep(self.idle)
            cursor = await asyncio.wait_for(conn.execute(
                f"SELECT reconciled FROM {_JOBS} WHERE name = %s", (self.name,)),
                self.store.timeout)
            row = await cursor.fetchone()
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, Exception) and not isinstance(exc, JournalError):
                raise self._error("waiting to reconcile", exc) from None
            raise
        self._reconcile_conn = conn
        if row is not None and row[0]:
            await self.end_reconcile_turn(complete=False)
            return False
        return True

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self.store.connect()
        except StoreError as exc:
            raise JournalError(str(exc)) from None

    async def end_reconcile_turn(self, *, complete: bool) -> None:
        conn, self._reconcile_conn = self._reconcile_conn, None
        if conn is None:
            return
        try:
            if complete:
                await self.flush()
                await asyncio.wait_for(conn.execute(
                    f"UPDATE {_JOBS} SET reconciled = true WHERE name = %s", (self.name,)),
                    self.store.timeout)
        except Exception as exc:
            logger.warning("recording the end of reconciliation failed: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await conn.close()  # releases the advisory lock

    # --- reading ----------------------------------------------------------------------

    async def counts(self) -> dict[RequestState, int]:
        await self.flush()
        rows = await self._fetch("counting requests", f"SELECT state, count(*) FROM {_REQUESTS} "
                                 "WHERE job = %(job)s GROUP BY state", self._params(), many=True)
        counts = dict.fromkeys(RequestState, 0)
        for state, count in rows:
            counts[RequestState(state)] = int(count)
        return counts

    async def request(self, key: str) -> JournalRequest:
        await self.flush()
        rows = await self._fetch("reading a request", f"SELECT {_COLUMNS} FROM {_REQUESTS} "
                                 "WHERE job = %(job)s AND key = %(key)s", self._params(key=key))
        if not rows:
            raise KeyError(key)
        return _request(rows[0])

    async def requests(self, *states: RequestState, orders: Collection[str] | None = None,
                       bodies: bool = True) -> AsyncIterator[JournalRequest]:
        await self.flush()
        columns = _COLUMNS if bodies else _COLUMNS.replace("body", "''")
        where = ""
        if states:
            where += " AND state = ANY(%(states)s)"
        if orders is not None:
            where += " AND order_id = ANY(%(orders)s)"
        after = -1
        while True:
            batch = await self._fetch(
                "reading requests",
                f"SELECT {columns} FROM {_REQUESTS} WHERE job = %(job)s AND seq > %(after)s"
                f"{where} ORDER BY seq LIMIT %(n)s",
                self._params(after=after, n=_CHUNK, states=[s.value for s in states],
                             orders=sorted(orders or ())), many=True)
            for row in batch:
                yield _request(row)
            if len(batch) < _CHUNK:
                return
            after = batch[-1][0]

    async def skipped_rows(self) -> int:
        await self.flush()
        rows = await self._fetch("counting rows", f"SELECT count(*) FROM {_ROWS} WHERE job = "
                                 "%(job)s AND request IS NULL", self._params())
        return int(rows[0][0])

    async def outcome_counts(self) -> list[tuple[RequestState, str | None, int, int]]:
        await self.flush()
        rows = await self._fetch(
            "counting outcomes",
            f"SELECT state, outcome, count(*), sum({_ROW_COUNT}) FROM {_REQUESTS} "
            "WHERE job = %(job)s GROUP BY state, outcome", self._params(), many=True)
        return [(RequestState(state), outcome, int(requests), int(count))
                for state, outcome, requests, count in rows]

    async def rows(self) -> AsyncIterator[JournalRow]:
        await self.flush()
        columns = ", ".join("q." + c for c in _COLUMNS.split(", "))
        after = 0
        while True:
            batch = await self._fetch(
                "reading rows",
                f"SELECT r.row_number, r.line_number, r.order_id, r.order_line_id, "
                f"r.product_id, r.quantity, r.errors, {columns} FROM {_ROWS} r LEFT JOIN "
                f"{_REQUESTS} q ON q.job = r.job AND q.seq = r.request WHERE r.job = %(job)s "
                "AND r.row_number > %(after)s ORDER BY r.row_number LIMIT %(n)s",
                self._params(after=after, n=_CHUNK), many=True)
            for row in batch:
                request = None if row[7] is None else _request(row[7:])
                yield JournalRow(row_number=row[0], line_number=row[1], order_id=row[2],
                                 order_line_id=row[3], product_id=row[4], quantity=row[5],
                                 errors=_errors(row[6]), request=request)
            if len(batch) < _CHUNK:
                return
            after = batch[-1][0]

    # --- marks: queued in call order, one transaction per batch ------------------------

    def _mark(self, sql: str, key: str | None, expected: str | None, *, guards: bool = False,
              wait: bool = True, **params: Any) -> asyncio.Future[Any]:
        if self._closed:
            raise JournalError(f"the fleet job {self.name!r} is closed")
        if self._writer is not None and self._writer.done():
            raise JournalError(f"the fleet job {self.name!r}: its marks can no longer be "
                               "written (the writer stopped)")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if guards and self._failed is None and loop.time() >= self._lease_ok_until:
            future.set_exception(JournalError(
                "this worker's lease may have lapsed (the heartbeat could not renew it): "
                "nothing more is sent"))
            return future
        self._queue.put_nowait(_Op(sql, self._params(key=key, **params),
                                   future if wait else None, key=key, expected=expected,
                                   guards=guards))
        return future

    def _update(self, key: str, states: Sequence[str], assignments: str, *,
                guards: bool = False, mine: bool = False, **params: Any) -> Awaitable[None]:
        condition = "state = ANY(%(allowed)s)"
        if mine:
            condition += f" AND owner = %(me)s AND {_LEASE_HOLDS}"
        sql = (f"UPDATE {_REQUESTS} SET {assignments} WHERE job = %(job)s AND key = %(key)s "
               f"AND {condition} RETURNING 1")
        return self._mark(sql, key, "/".join(states), guards=guards, allowed=list(states),
                          **params)

    async def _write(self) -> None:
        try:
            await self._write_batches()
        finally:
            # What is still queued will never be written: its waiters must not wait.
            while not self._queue.empty():
                op = self._queue.get_nowait()
                if op is not None and op.future is not None and not op.future.done():
                    op.future.set_exception(JournalError(
                        f"the fleet job {self.name!r}: the writer stopped before this mark"))

    async def _write_batches(self) -> None:
        while True:
            op = await self._queue.get()
            if op is None:
                return
            batch = [op]
            stop = False
            while len(batch) < _MAX_BATCH and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            results = await self._run(batch)
            for op, result in zip(batch, results, strict=True):
                if op.future is not None and not op.future.done():
                    if isinstance(result, BaseException):
                        op.future.set_exception(result)
                    else:
                        op.future.set_result(None)
                elif isinstance(result, BaseException) and op.future is None:
                    logger.warning("a lazy mark of the fleet job was not written: %s", result)
            if stop:
                return

    async def _run(self, batch: list[_Op]) -> list[BaseException | None]:
        import psycopg

        conn = self._writer_conn
        if conn is None or conn.closed:
            conn = self._writer_conn = await self._reconnect()
        if conn is None:
            return [JournalError(f"the fleet job {self.name!r}: no connection to record "
                                 "marks")] * len(batch)
        results: list[BaseException | None] = []
        try:
            async with conn.transaction():
                for op in batch:
                    if op.guards and self._failed is not None:
                        results.append(JournalError(f"{self._failed}: nothing more is sent"))
                        continue
                    if not op.sql:  # a barrier (flush)
                        results.append(None)
                        continue
                    cursor = await asyncio.wait_for(conn.execute(op.sql, op.params),
                                                    self.store.timeout)
                    if op.expected is None or await cursor.fetchone() is not None:
                        results.append(None)
                        continue
                    cursor = await conn.execute(
                        f"SELECT state, owner FROM {_REQUESTS} WHERE job = %(job)s AND "
                        "key = %(key)s", op.params)
                    found = await cursor.fetchone()
                    if found is None:
                        why = "no such request"
                    elif found[1] not in (None, self.worker_id) and op.guards:
                        why = f"it is {found[0]} and claimed by another worker"
                    else:
                        why = f"it is {found[0]}" + (
                            "" if not op.guards else " (or this worker's lease lapsed)")
                    results.append(JournalError(
                        f"request {op.key}: expected state {op.expected}, but {why}"))
            self.commits += 1
            return results
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            error = self._error("recording marks", exc)
            self._failed = str(error)
            with contextlib.suppress(Exception):
                await conn.close()
            self._writer_conn = await self._reconnect()
            return [error] * len(batch)

    async def _reconnect(self) -> psycopg.AsyncConnection[Any] | None:
        """A fresh writer connection for the non-guarding marks after a failure (guarding
        ones stay refused: `_failed`)."""
        try:
            return await self.store.connect()
        except StoreError:
            return None

    def mark_sending(self, key: str, at: float | None = None, *,
                     resend: bool = False) -> Awaitable[None]:
        if resend:
            return self._resend(key, ["PENDING", "SENDING", "UNCERTAIN", "DONE"], now(at))
        return self._update(
            key, ["PENDING"],
            "state = 'SENDING', attempts = attempts + 1, sent_at = %(at)s, action_id = NULL, "
            "accepted_at = NULL, poll_started_at = NULL, last_polled_at = NULL, "
            "finished_at = NULL, outcome = NULL, status = NULL, errors = NULL, "
            "resendable = false", guards=True, mine=True, at=now(at))

    def _resend(self, key: str, states: Sequence[str], at: float) -> Awaitable[None]:
        # A resend (reconciliation's NOT_APPLIED, a resendable DONE claimed in a fresh
        # run): the row may be in the pool (no owner) or ours; it becomes ours.
        sql = (f"UPDATE {_REQUESTS} SET state = 'SENDING', attempts = attempts + 1, "
               "sent_at = %(at)s, action_id = NULL, accepted_at = NULL, poll_started_at = "
               "NULL, last_polled_at = NULL, finished_at = NULL, outcome = NULL, status = "
               "NULL, errors = NULL, resendable = false, owner = %(me)s WHERE job = %(job)s "
               "AND key = %(key)s AND state = ANY(%(allowed)s) AND (owner IS NULL OR owner "
               f"= %(me)s) AND {_LEASE_HOLDS} RETURNING 1")
        return self._mark(sql, key, "/".join(states), guards=True, allowed=list(states),
                          at=at)

    def mark_send_attempt(self, key: str, at: float | None = None) -> Awaitable[None]:
        return self._update(key, ["SENDING"], "sent_at = %(at)s", guards=True, mine=True,
                            at=now(at))

    def mark_accepted(self, key: str, action_id: str, at: float | None = None) -> Awaitable[None]:
        # From UNCERTAIN too: a lease that lapsed mid-POST made the row UNCERTAIN, but the
        # 202 is the truth, and its action id must not be lost.
        return self._update(
            key, ["SENDING", "UNCERTAIN"],
            "state = 'ACCEPTED', action_id = %(action)s, accepted_at = %(at)s, outcome = "
            "NULL, errors = NULL, finished_at = NULL, owner = %(me)s",
            action=action_id, at=now(at))

    def mark_unsent(self, key: str, outcome: str, errors: Sequence[str],
                    at: float | None = None) -> Awaitable[None]:
        return self._update(
            key, ["PENDING"], "state = 'DONE', outcome = %(outcome)s, errors = %(errors)s, "
            "finished_at = %(at)s, resendable = true", outcome=outcome, errors=_texts(errors),
            at=now(at))

    def mark_uncertain(self, key: str, errors: Sequence[str],
                       at: float | None = None) -> Awaitable[None]:
        return self._update(
            key, ["SENDING", "UNCERTAIN"], "state = 'UNCERTAIN', outcome = 'UNCERTAIN', "
            "finished_at = %(at)s, errors = %(errors)s", errors=_texts(errors), at=now(at))

    def mark_done(self, key: str, outcome: str, *, status: str | None = None,
                  errors: Sequence[str] = (), resendable: bool = False,
                  at: float | None = None) -> Awaitable[None]:
        return self._update(
            key, ["SENDING", "ACCEPTED", "UNCERTAIN"],
            "state = 'DONE', outcome = %(outcome)s, status = COALESCE(%(status)s, status), "
            "errors = %(errors)s, finished_at = %(at)s, resendable = %(resendable)s",
            outcome=outcome, status=status, errors=_texts(errors), at=now(at),
            resendable=resendable)

    def mark_not_sent(self, key: str) -> Awaitable[None]:
        return self._update(key, ["SENDING"], "state = 'PENDING', attempts = attempts - 1, "
                            "sent_at = NULL")

    def mark_tracking_stopped(self, key: str, outcome: str,
                              errors: Sequence[str]) -> Awaitable[None]:
        return self._update(key, ["ACCEPTED"], "outcome = %(outcome)s, errors = %(errors)s, "
                            "tracking_stopped = true", outcome=outcome, errors=_texts(errors))

    def mark_reconciled(self, key: str, verdict: str, reason: str,
                        adjustments: Sequence[str] = (), *, errors: Sequence[str],
                        at: float | None = None) -> Awaitable[None]:
        state, outcome = reconciled_end(verdict)
        return self._update(
            key, ["UNCERTAIN"],
            "state = %(state)s, outcome = %(outcome)s, errors = %(errors)s, finished_at = "
            "%(at)s, resendable = false, reconcile_verdict = %(verdict)s, reconcile_reason = "
            "%(reason)s, reconcile_adjustments = %(adjustments)s, reconciled_at = %(at)s",
            state=state, outcome=outcome, errors=_texts(errors), at=now(at), verdict=verdict,
            reason=reason, adjustments=json.dumps(list(adjustments)))

    def mark_poll_started(self, action_id: str, at: float | None = None) -> Awaitable[None]:
        # By key, as the job calls it (the parameter name is the interface's).
        return self._mark(f"UPDATE {_REQUESTS} SET poll_started_at = %(at)s WHERE job = "
                          "%(job)s AND key = %(key)s AND state = 'ACCEPTED'", action_id, None,
                          at=now(at))

    def note_polled(self, action_id: str, at: float | None = None,
                    status: str | None = None) -> None:
        self._mark(f"UPDATE {_REQUESTS} SET last_polled_at = %(at)s, status = "
                   "COALESCE(%(status)s, status) WHERE job = %(job)s AND key = %(key)s AND "
                   "state = 'ACCEPTED'", action_id, None, wait=False, at=now(at), status=status)

    # --- lifetime ---------------------------------------------------------------------

    async def flush(self) -> None:
        if self._writer is None or self._closed:
            return
        await self._mark("", None, None)

    async def aclose(self) -> None:
        """Flush, hand back what this worker still holds, end its lease, disconnect.

        Every step is bounded (a worker must exit once its summary is printed): a step
        that takes too long is given up with a WARNING, and the fleet takes over what
        it left when the lease lapses, as for a worker that died."""
        if self._closed:
            return
        bound = self.store.timeout
        if self._writer is not None and not self._writer.done():
            await _within("flushing the marks", self.flush(), bound)
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await _within("stopping the heartbeat", self._heartbeat, bound)
        if self._writer is not None:
            self._queue.put_nowait(None)
            await _within("stopping the writer", self._writer, bound)
        await _within("ending the reconciliation turn",
                      self.end_reconcile_turn(complete=False), bound)
        if self._joined and self._reader is not None:
            await _within("leaving the job", self._leave(), bound * 1.5)
        for conn in (self._reader, self._writer_conn):
            if conn is not None:
                await _within("disconnecting", conn.close(), bound)
        self._reader = self._writer_conn = None

    async def _leave(self) -> None:
        try:
            await self._fetch(
                "leaving the job",
                f"""WITH gone AS (DELETE FROM {_WORKERS} WHERE job = %(job)s
                                  AND worker = %(me)s),
                released AS (UPDATE {_REQUESTS} SET owner = NULL WHERE job = %(job)s
                             AND owner = %(me)s AND state <> 'SENDING')
                UPDATE {_REQUESTS} SET state = 'UNCERTAIN', outcome = 'UNCERTAIN',
                    owner = NULL, finished_at = %(at)s, errors = %(errors)s
                WHERE job = %(job)s AND owner = %(me)s AND state = 'SENDING'""",
                self._params(at=time.time(), errors=_texts([_STOPPED_WHILE_SENDING])))
        except JournalError as exc:  # the lease lapses by itself: the fleet takes over
            logger.warning("leaving the fleet job cleanly failed: %s", exc)


async def _within(what: str, step: Awaitable[Any], seconds: float) -> None:
    """Await one shutdown `step` for at most `seconds`, then go on without it (WARNING).

    `asyncio.wait`, not `wait_for`: it never swallows a cancel, and a step that ignores
    its own cancel (see `_beat`) is left behind rather than waited for."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        logger.warning("closing the fleet job: %s took more than %gs; going on without it",
                       what, seconds)
        return
    if not task.cancelled() and task.exception() is not None:
        logger.warning("closing the fleet job: %s failed: %s", what, task.exception())
