"""The SQLite journal that makes a bulk job resumable without ever cancelling twice.

Mirakl Connect has no idempotency key, so the only defence against a duplicate cancel
after a crash is to know, for every request, whether it *may* have been sent. The
journal records that fact durably **before** the POST leaves (state ``SENDING``,
committed), then the ``action_id`` as soon as the 202 arrives (``ACCEPTED``), then the
final result. Whatever instant the process dies at, including SIGKILL, a re-run can
tell apart:

- ``PENDING``: never sent, safe to send;
- ``SENDING``: may have reached the server: reported UNCERTAIN, not re-sent unless
  the user says so (``--resend-uncertain``);
- ``ACCEPTED``: has an action to keep tracking (from the last recorded poll, so that
  the once-a-minute ceiling holds across processes);
- ``UNCERTAIN``: the POST's answer was lost (same treatment as ``SENDING``);
- ``DONE``: final; reported from the journal, never sent or polled again (except a
  cancel the API refused before processing it, and, on request, one that reconciliation
  proved was not applied: outcome ``NOT_APPLIED``).

An UNCERTAIN request can be *reconciled* (``mark_reconciled``): the order's adjustments
prove it applied (DONE, SUCCEEDED, without an action id), prove it did not (DONE,
NOT_APPLIED), or do not decide (it stays UNCERTAIN). The verdict, its reason and the
adjustment ids it rests on are kept in the request's ``reconcile_*`` columns.

Durability: WAL mode, and ``synchronous=FULL`` for the commits that carry a guarding
mark (``SENDING``, ``ACCEPTED``): those survive even a power cut. The connection holds
an exclusive lock for its lifetime, so two processes can never run the same job at once
(which would double-send every pending request).

`Journal` is the synchronous SQLite journal (one commit per call; tests and tools use
it directly). `SqliteStore` puts it behind the job's store interface (``_stores/base.py``):
one writer thread owns the connection and runs whatever marks are queued as **one
transaction** (group commit: the SENDING marks of all requests leaving together share
one fsync), so a slow disk flush never runs on the event loop.

Schema 3 is compact: a request's body is stored once, deflated against a fixed
dictionary (about 30 bytes for a one-line cancel instead of 175); an input row is
integers only (its order line, product and quantity are read back from its request's
body), except for a skipped invalid row, which keeps what the report shows. A request's
key (``ORDER#ROW,ROW``) is not stored: it is its order id and row numbers.

Schema 4 journals a plan in chunks: a new job's record and its first requests are
committed first, so sending starts while the rest of the file's requests are still being
written (`JobPlan`); ``job.plan_complete`` says whether the last chunk is in. A job
stopped before it is planned on when resumed, from the same input. Journals of versions
1 to 3 are migrated in place on open (their plans are complete).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import queue
import re
import sqlite3
import tempfile
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from .base import (
    JobInfo,
    JobStore,
    JournalBusyError,
    JournalError,
    JournalRequest,
    JournalRow,
    PlannedRequest,
    PlannedRow,
    RequestState,
    now,
    reconciled_end,
)

__all__ = [
    "SCHEMA_VERSION",
    "JobInfo",
    "JobPlan",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "JournalRequest",
    "JournalRow",
    "PlanStaging",
    "PlannedRequest",
    "PlannedRow",
    "RequestState",
    "SqliteStore",
    "StagedRequest",
]

logger = logging.getLogger("mirakl_cancel")

SCHEMA_VERSION = 4
#: Versions this one opens, migrating them in place.
_MIGRATABLE = (1, 2, 3)
#: Columns version 2 added to version 1: (name, SQL type). Nullable, so old rows stay valid.
_V2_REQUEST_COLUMNS = (
    ("reconcile_verdict", "TEXT"),
    ("reconcile_reason", "TEXT"),
    ("reconcile_adjustments", "TEXT"),
    ("reconciled_at", "REAL"),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    schema_version  INTEGER NOT NULL,
    input_path      TEXT NOT NULL,
    input_sha256    TEXT NOT NULL,
    input_format    TEXT NOT NULL,
    base_url        TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    options         TEXT NOT NULL DEFAULT '{}',
    plan_complete   INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS requests (
    seq             INTEGER PRIMARY KEY,
    order_id        TEXT NOT NULL,
    rows            TEXT NOT NULL,
    body            BLOB NOT NULL,
    state           TEXT NOT NULL DEFAULT 'PENDING'
                    CHECK (state IN ('PENDING','SENDING','ACCEPTED','UNCERTAIN','DONE')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    action_id       TEXT,
    sent_at         REAL,
    accepted_at     REAL,
    poll_started_at REAL,
    last_polled_at  REAL,
    finished_at     REAL,
    outcome         TEXT,
    status          TEXT,
    errors          TEXT,
    resendable      INTEGER NOT NULL DEFAULT 0,
    reconcile_verdict     TEXT,
    reconcile_reason      TEXT,
    reconcile_adjustments TEXT,
    reconciled_at         REAL
);
CREATE TABLE IF NOT EXISTS rows (
    row_number      INTEGER PRIMARY KEY,
    line_number     INTEGER NOT NULL,
    request         INTEGER REFERENCES requests (seq),
    order_id        TEXT,
    order_line_id   TEXT,
    product_id      TEXT,
    quantity        INTEGER,
    errors          TEXT
);
"""

# --- bodies: stored once, deflated against a fixed dictionary ---------------------------

#: Typical body text that deflate may refer back to. NEVER change it (nor the window and
#: memory sizes below): journals store bodies compressed against it (tag byte 1); a new
#: dictionary needs a new tag. A 1 KiB window (the dictionary fits in it) keeps the
#: compressor cheap to set up: a body is compressed on its own, once.
_BODY_DICTIONARY = (
    b'"reason":"CUSTOMER_CANCELATION","reason":"ITEM_NOT_RECEIVED","reason":"DEFECT",'
    b'"reason":"UNABLE_TO_DELIVER","reason":"RETURN","reason":"AGREEMENT",'
    b'"taxes":[{"code":"VAT","amount":{"amount":0.00,"currency":"EUR"}}],'
    b'"shipping_taxes":[{"code":"TVA","amount":{"amount":0,"currency":"EUR"}}],'
    b'"product_id":"","order_line_id":"'
    b'{"cancelations":[{"quantity":1,"reason":"OUT_OF_STOCK","price":{"amount":10.00,'
    b'"currency":"EUR"},"shipping_price":{"amount":0,"currency":"EUR"},"order_line_id":"'
)
_BODY_DEFLATED = 1
_WINDOW = -10  # raw deflate, 1 KiB window: the whole dictionary within reach
_MEMORY = 2


#: A compressor primed with the dictionary: each body is packed by a copy of it (the same
#: bytes as a fresh one, without setting the dictionary up again).
_PACKER = zlib.compressobj(6, zlib.DEFLATED, _WINDOW, _MEMORY, zlib.Z_DEFAULT_STRATEGY,
                           _BODY_DICTIONARY)
_TAG = bytes((_BODY_DEFLATED,))


def encode_body(body: str) -> bytes:
    """A body as stored: tag byte, then raw deflate against `_BODY_DICTIONARY`."""
    packer = _PACKER.copy()
    return _TAG + packer.compress(body.encode()) + packer.flush()


def decode_body(stored: str | bytes) -> str:
    """The exact body text from its stored form (plain text in migrated journals)."""
    if isinstance(stored, str):
        return stored
    if not stored or stored[0] != _BODY_DEFLATED:
        raise JournalError("a request body in the journal is in an unknown format")
    unpacker = zlib.decompressobj(_WINDOW, _BODY_DICTIONARY)
    return (unpacker.decompress(stored[1:]) + unpacker.flush()).decode()


def _errors(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    data = json.loads(text)
    return tuple(str(item) for item in data) if isinstance(data, list) else (str(data),)


def _texts(items: Sequence[str]) -> str | None:
    """Error texts as stored: NULL when there are none."""
    return json.dumps(list(items)) if items else None


def _row_numbers(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in text.split(",")) if text else ()


#: SQL: how many rows a request covers, from its `rows` text (as `_row_numbers` reads it).
_ROW_COUNT = ("CASE WHEN rows = '' THEN 0 "
              "ELSE LENGTH(rows) - LENGTH(REPLACE(rows, ',', '')) + 1 END")

_REQUEST_COLUMNS = ("seq, order_id, rows, body, state, attempts, action_id, sent_at, "
                    "accepted_at, poll_started_at, last_polled_at, finished_at, outcome, "
                    "status, errors, resendable, reconcile_verdict, reconcile_reason, "
                    "reconcile_adjustments, reconciled_at")


def _request(row: Sequence[Any]) -> JournalRequest:
    (seq, order_id, rows, body, state, attempts, action_id, sent_at, accepted_at,
     poll_started_at, last_polled_at, finished_at, outcome, status, errors, resendable,
     verdict, reason, adjustments, reconciled_at) = row
    numbers = _row_numbers(rows)
    return JournalRequest(
        key=PlannedRequest.make_key(order_id, numbers), seq=seq, order_id=order_id,
        rows=numbers, body=decode_body(body), state=RequestState(state), attempts=attempts,
        action_id=action_id, sent_at=sent_at, accepted_at=accepted_at,
        poll_started_at=poll_started_at, last_polled_at=last_polled_at,
        finished_at=finished_at, outcome=outcome, status=status, errors=_errors(errors),
        resendable=bool(resendable), reconcile_verdict=verdict, reconcile_reason=reason,
        reconcile_adjustments=_errors(adjustments), reconciled_at=reconciled_at)


def _line_fields(request: JournalRequest, row_number: int,
                 cache: dict[int, list[Any]]) -> tuple[str | None, str | None, int | None]:
    """(order_line_id, product_id, quantity) of `row_number` from its request's body."""
    cancelations = cache.get(request.seq)
    if cancelations is None:
        if len(cache) >= 256:  # rows of one request are usually close together
            cache.clear()
        cancelations = json.loads(request.body).get("cancelations", [])
        cache[request.seq] = cancelations
    try:
        line = cancelations[request.rows.index(row_number)]
    except (ValueError, IndexError):
        return None, None, None
    quantity = line.get("quantity")
    return (line.get("order_line_id"), line.get("product_id"),
            quantity if isinstance(quantity, int) else None)


# --- marks: one UPDATE each, found by the key's first row ----------------------------

@attrs.frozen(eq=False)
class _Mark:
    """A state change as one statement (hashed by identity: the marks are module
    constants, looked up per operation, and hashing four strings each time showed in the
    writer's profile): `sql` takes the mark's own parameters, then the
    request's first row, order id and rows (`_key_target`). `expected`: the states it
    may start from (empty: a no-op on a request in another state, never an error).
    `assignments` and `states` are its parts, for the statement that applies it to many
    requests at once (`_grouped_sql`)."""

    sql: str
    expected: tuple[RequestState, ...]
    assignments: str
    states: str


def _mark(assignments: str, *expected: RequestState, only: str | None = None) -> _Mark:
    states = ",".join(f"'{s.value}'" for s in expected) if expected else f"'{only}'"
    return _Mark(f"UPDATE requests SET {assignments} WHERE seq = (SELECT request FROM rows "
                 f"WHERE row_number = ?) AND order_id = ? AND rows = ? AND state IN ({states})",
                 expected, assignments, states)


#: Most requests one grouped statement names (a power of two; bounds its parameters).
_GROUP_ROWS = 256


@functools.lru_cache(maxsize=256)
def _grouped_sql(mark: _Mark, size: int) -> str:
    """`mark` applied to `size` requests by one statement: each row of the VALUES list is
    one request's parameters (the mark's own, then its `_key_target`), in the same order
    as `mark.sql` takes them. Sizes are powers of two (padded with rows that match
    nothing), so that few texts are ever prepared."""
    count = mark.assignments.count("?")
    columns = iter(range(1, count + 1))
    assignments = re.sub(r"\?", lambda _: f"m.column{next(columns)}", mark.assignments)
    row = "(" + ",".join("?" * (count + 3)) + ")"
    return (f"UPDATE requests SET {assignments} FROM (VALUES {','.join([row] * size)}) AS m "
            f"WHERE requests.seq = (SELECT request FROM rows WHERE row_number = "
            f"m.column{count + 1}) AND requests.order_id = m.column{count + 2} "
            f"AND requests.rows = m.column{count + 3} AND requests.state IN ({mark.states})")


class _Regroup(Exception):
    """A grouped mark matched fewer requests than it names: one of them is refused, and
    only the marks run one by one can tell which (the batch is run again that way)."""


def _key_target(key: str) -> tuple[int, str, str]:
    """(first row, order id, rows) that `_Mark.sql` finds the request keyed `key` by: its
    key is its order id and row numbers (`PlannedRequest.make_key`), so the first row
    leads to it and the rest checks it; a malformed key matches nothing."""
    order_id, _, numbers = key.rpartition("#")
    first = numbers.split(",", 1)[0]
    return (int(first) if order_id and first.isdigit() else -1), order_id, numbers


_S = RequestState
_SENDING_SET = ("state = 'SENDING', attempts = attempts + 1, sent_at = ?, action_id = NULL, "
                "accepted_at = NULL, poll_started_at = NULL, last_polled_at = NULL, "
                "finished_at = NULL, outcome = NULL, status = NULL, errors = NULL, "
                "resendable = 0")
_SENDING = _mark(_SENDING_SET, _S.PENDING)
_RESEND = _mark(_SENDING_SET, _S.PENDING, _S.SENDING, _S.UNCERTAIN, _S.DONE)
_SEND_ATTEMPT = _mark("sent_at = ?", _S.SENDING)
_UNSENT = _mark("state = 'DONE', outcome = ?, errors = ?, finished_at = ?, resendable = 1",
                _S.PENDING)
_RECONCILED = _mark("state = ?, outcome = ?, errors = ?, finished_at = ?, resendable = 0, "
                    "reconcile_verdict = ?, reconcile_reason = ?, reconcile_adjustments = ?, "
                    "reconciled_at = ?", _S.UNCERTAIN)
_ACCEPTED = _mark("state = 'ACCEPTED', action_id = ?, accepted_at = ?", _S.SENDING)
_UNCERTAIN = _mark("state = 'UNCERTAIN', outcome = 'UNCERTAIN', finished_at = ?, errors = ?",
                   _S.SENDING, _S.UNCERTAIN)
_NOT_SENT = _mark("state = 'PENDING', attempts = attempts - 1, sent_at = NULL", _S.SENDING)
_TRACKING_STOPPED = _mark("outcome = ?, errors = ?", _S.ACCEPTED)
_DONE = _mark("state = 'DONE', outcome = ?, status = COALESCE(?, status), errors = ?, "
              "finished_at = ?, resendable = ?", _S.SENDING, _S.ACCEPTED, _S.UNCERTAIN)
#: Poll marks only touch an ACCEPTED request, and never fail (a late read of a request
#: that is already DONE changes nothing).
_POLL_STARTED = _mark("poll_started_at = ?", only=_S.ACCEPTED.value)
_POLLED = _mark("last_polled_at = ?, status = COALESCE(?, status)", only=_S.ACCEPTED.value)


# --- migrations -----------------------------------------------------------------------

def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a journal of a version in _MIGRATABLE up to SCHEMA_VERSION, in one transaction.

    1 → 2 added nullable reconciliation columns. 2 → 3 rebuilds the tables compactly:
    requests keyed by `seq` (the key is computed), rows pointing at their request by
    `seq`. Bodies and row fields are copied as they are (a text body reads as is; row
    fields present win over the body's), so every row, state and time survives: a job
    begun by an older mirakl-cancel is resumed, reconciled and reported by this one.
    3 → 4 adds `job.plan_complete`, 1 for them all: older versions journaled a whole
    plan in one transaction.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        if version < 3:
            _rebuild_compact(db, version)
        db.execute("ALTER TABLE job ADD COLUMN plan_complete INTEGER NOT NULL DEFAULT 1")
        db.execute("UPDATE job SET schema_version = ?", (SCHEMA_VERSION,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _rebuild_compact(db: sqlite3.Connection, version: int) -> None:
    """Versions 1 and 2 to 3's compact tables (`_migrate`), inside its transaction."""
    if version == 1:
        present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        for name, kind in _V2_REQUEST_COLUMNS:
            if name not in present:
                db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
    db.execute("ALTER TABLE requests RENAME TO requests_v2")
    db.execute("ALTER TABLE rows RENAME TO rows_v2")
    db.execute("DROP INDEX IF EXISTS requests_state")
    db.execute("DROP INDEX IF EXISTS requests_action")
    db.execute("DROP INDEX IF EXISTS rows_request")
    for statement in _SCHEMA.split(";"):
        if "CREATE TABLE IF NOT EXISTS job" not in statement and statement.strip():
            db.execute(statement)
    db.execute(
        "INSERT INTO requests (" + _REQUEST_COLUMNS + ") SELECT seq, order_id, "
        "replace(replace(replace(rows, '[', ''), ']', ''), ' ', ''), body, state, "
        "attempts, action_id, sent_at, accepted_at, poll_started_at, last_polled_at, "
        "finished_at, outcome, status, errors, resendable, reconcile_verdict, "
        "reconcile_reason, reconcile_adjustments, reconciled_at FROM requests_v2")
    db.execute(
        "INSERT INTO rows (row_number, line_number, request, order_id, order_line_id, "
        "product_id, quantity, errors) SELECT r.row_number, r.line_number, q.seq, "
        "r.order_id, r.order_line_id, r.product_id, r.quantity, r.errors "
        "FROM rows_v2 r LEFT JOIN requests_v2 q ON q.key = r.request_key")
    db.execute("DROP TABLE rows_v2")
    db.execute("DROP TABLE requests_v2")


class Journal:
    """A job's durable record; open with `Journal.open(path)`, close when done.

    Synchronous, one commit per call. While a `SqliteStore` runs over it, the store's
    writer thread owns the connection: use the store, not this, until it is closed.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path
        self._in_transaction = False
        #: Whether `synchronous=FULL` is set (`open` leaves it NORMAL).
        self._full_sync = False
        #: Marks held to be applied together (`grouping`), and the keys they name.
        self._held: dict[_Mark, list[Any]] | None = None
        #: The order in which the held kinds apply, and the kind of each request's last
        #: held mark.
        self._kinds: dict[_Mark, int] = {}
        self._held_keys: dict[str, int] = {}

    @classmethod
    def open(cls, path: Path | str) -> Journal:
        """Open (creating if needed) and lock the journal at `path`.

        Raises JournalBusyError if another process holds it, JournalError if the file
        is not a journal this version understands.
        """
        path = Path(path)
        try:
            # One thread at a time uses it (the caller, or a SqliteStore's writer).
            db = sqlite3.connect(str(path), timeout=0.2, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {path}: cannot switch to WAL mode ({mode})")
            db.execute("PRAGMA synchronous=NORMAL")
            # A write transaction takes the exclusive lock now, and holds it for our lifetime.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = db.execute("SELECT schema_version FROM job").fetchone() \
                if "job" in tables else None
            if row is not None and row[0] in _MIGRATABLE:
                _migrate(db, row[0])
                row = (SCHEMA_VERSION,)
            if row is None or row[0] == SCHEMA_VERSION:
                db.executescript(_SCHEMA)  # IF NOT EXISTS: a new (or empty) journal
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise JournalBusyError(
                    f"journal {path} is in use by another process: one job, one process "
                    "(running it twice would send pending cancels twice)") from None
            raise JournalError(f"journal {path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalError(f"{path} is not a mirakl-cancel journal: {exc}") from None
        except JournalError:
            db.close()
            raise
        if row is not None and row[0] != SCHEMA_VERSION:
            db.close()
            raise JournalError(f"journal {path} has schema version {row[0]}, this version of "
                               f"mirakl-cancel reads version {SCHEMA_VERSION}")
        return cls(db, path)

    def close(self) -> None:
        """Checkpoint and close; the file is consistent whether or not this runs."""
        with suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One committed transaction; `durable` also forces it to disk (fsync).

        Nested calls join the outer transaction: that is how a SqliteStore's writer runs
        a whole batch of marks (each a method of this class) as one commit. The
        `synchronous` pragma is switched only when the kind of commit changes (a run of
        durable batches costs no pragma statements).
        """
        db = self._db
        if self._in_transaction:
            yield db
            return
        durable = bool(durable)
        if durable is not self._full_sync:
            db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._full_sync = durable
        self._in_transaction = True
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            else:
                db.execute("COMMIT")
        finally:
            self._in_transaction = False

    _transaction = transaction

    # --- the job --------------------------------------------------------------------

    def job(self) -> JobInfo | None:
        """The job this journal records, or None if it is new (or creation never finished)."""
        row = self._db.execute(
            "SELECT input_path, input_sha256, input_format, base_url, created_at, options, "
            "plan_complete FROM job").fetchone()
        if row is None:
            return None
        return JobInfo(input_path=row[0], input_sha256=row[1], input_format=row[2],
                       base_url=row[3], created_at=row[4], options=json.loads(row[5]),
                       plan_complete=bool(row[6]))

    def _insert_job(self, db: sqlite3.Connection, *, input_path: str, input_sha256: str,
                    input_format: str, base_url: str, options: dict[str, Any] | None,
                    plan_complete: bool = True) -> None:
        if db.execute("SELECT 1 FROM job").fetchone() is not None:
            raise JournalError(f"journal {self.path} already holds a job")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        db.execute(
            "INSERT INTO job (id, schema_version, input_path, input_sha256, input_format, "
            "base_url, created_at, options, plan_complete) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
            (SCHEMA_VERSION, input_path, input_sha256, input_format, base_url, created,
             json.dumps(options or {}, sort_keys=True), int(plan_complete)))

    def set_base_url(self, base_url: str) -> None:
        """Point the job at another API root. Only for a job none of whose requests ever
        reached a server (the caller checks, see `ever_sent`): e.g. a first run against a
        mistyped URL, where every connection was refused."""
        with self._transaction(durable=True) as db:
            db.execute("UPDATE job SET base_url = ?", (base_url,))

    def ever_sent(self) -> bool:
        """Whether any request may ever have reached a server (it has a send time or an
        action id). A request whose every attempt failed to connect has neither."""
        row = self._db.execute("SELECT 1 FROM requests WHERE sent_at IS NOT NULL OR "
                               "action_id IS NOT NULL LIMIT 1").fetchone()
        return row is not None

    def create_job(self, *, input_path: str, input_sha256: str, input_format: str,
                   base_url: str, requests: Sequence[PlannedRequest],
                   rows: Iterable[PlannedRow], options: dict[str, Any] | None = None) -> None:
        """Record a whole plan in one transaction: a crash leaves either all or nothing.

        The rows keep the fields given. (The CLI plans a file through
        `create_job_from_staging` instead, streaming, and keeps valid rows' fields in
        their request's body only.)
        """
        with self.transaction(durable=True) as db:
            self._insert_job(db, input_path=input_path, input_sha256=input_sha256,
                             input_format=input_format, base_url=base_url, options=options)
            owner: dict[int, int] = {}
            for seq, r in enumerate(requests):
                if any(n in owner for n in r.rows):
                    raise sqlite3.IntegrityError(f"request {r.key}: a row in two requests")
                owner.update((n, seq) for n in r.rows)
            db.executemany(
                "INSERT INTO requests (seq, order_id, rows, body) VALUES (?, ?, ?, ?)",
                [(seq, r.order_id, ",".join(map(str, r.rows)), encode_body(r.body))
                 for seq, r in enumerate(requests)])
            db.executemany(
                "INSERT INTO rows (row_number, line_number, request, order_id, "
                "order_line_id, product_id, quantity, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.row_number, p.line_number, owner.get(p.row_number), p.order_id,
                  p.order_line_id, p.product_id, p.quantity, _texts(p.errors)) for p in rows])

    def create_job_from_staging(self, staging: PlanStaging, *, input_path: str,
                                input_sha256: str, input_format: str, base_url: str,
                                max_lines: int | None,
                                options: dict[str, Any] | None = None) -> int:
        """Record the whole plan `staging` makes, streamed in chunks, in one transaction
        (a crash leaves all or nothing). Returns the number of requests. (The CLI's job
        journals it chunk by chunk instead, sending as it goes: `start_plan`.)"""
        with self.transaction(durable=True):
            plan = self.start_plan(staging, input_path=input_path, input_sha256=input_sha256,
                                   input_format=input_format, base_url=base_url,
                                   max_lines=max_lines, options=options)
            self.finish_plan(plan)
        return plan.total

    def start_plan(self, staging: PlanStaging, *, input_path: str, input_sha256: str,
                   input_format: str, base_url: str, max_lines: int | None,
                   options: dict[str, Any] | None = None, first: int | None = None,
                   ) -> JobPlan:
        """Record a new job, its invalid rows and the first `first` requests of the plan
        `staging` makes, in one durable transaction; the rest is journaled by `plan_chunk`
        (the plan is marked complete with its last chunk).

        Why in chunks: the plan of a million-row file takes seconds to write, and its
        first requests can be sent meanwhile. Each chunk is committed before any of its
        requests can be read, so a request's plan row is on disk before its SENDING mark
        (which is durable: its flush carries every earlier commit)."""
        if max_lines is not None and max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        staging.finish()
        plan = JobPlan(staging, max_lines, staging.request_count(max_lines))
        with self.transaction(durable=True) as db:
            self._insert_job(db, input_path=input_path, input_sha256=input_sha256,
                             input_format=input_format, base_url=base_url, options=options,
                             plan_complete=False)
            self._insert_invalid(db, staging)
            self.plan_chunk(plan, _FIRST_PLAN_CHUNK if first is None else first)
        return plan

    def continue_plan(self, staging: PlanStaging, max_lines: int | None) -> JobPlan:
        """The rest of the plan of a job stopped before its plan was complete, from its
        input staged again (the same file, checked with the same options): the requests
        already journaled are skipped, after checking the last of them is the plan's
        request at that place. JournalError if the input does not plan the same way."""
        staging.finish()
        plan = JobPlan(staging, max_lines, staging.request_count(max_lines))
        planned, last_seq = self._db.execute(
            "SELECT COUNT(*), MAX(seq) FROM requests").fetchone()
        mismatch = JournalError(
            f"journal {self.path}: its input no longer makes the plan the journal began "
            "(the journal's requests differ from it): cannot plan the rest of the job")
        if (planned and last_seq != planned - 1) or planned > plan.total:
            raise mismatch
        skipped = collections.deque(itertools.islice(plan.groups, planned), maxlen=1)
        if skipped:
            last = skipped[0]
            [(order_id, rows)] = self._db.execute(
                "SELECT order_id, rows FROM requests WHERE seq = ?", (planned - 1,))
            if (order_id, rows) != (last[0][0], ",".join([str(r[1]) for r in last])):
                raise mismatch
        plan.planned = planned
        return plan

    def plan_chunk(self, plan: JobPlan, limit: int) -> bool:
        """Journal the next `limit` requests of `plan` and their rows in one transaction;
        the last chunk also marks the plan complete. Returns whether it is.

        If the transaction of the chunk before did not commit (a store's batch that was
        rolled back, then run again), that chunk is journaled again first: the plan has
        no gap, whatever happened to the transaction around it."""
        if plan.broken:  # its groups and its count no longer agree: never guess
            raise JournalError("the job's plan failed earlier: nothing more is planned")
        (top,) = self._db.execute("SELECT MAX(seq) FROM requests").fetchone()
        journaled = 0 if top is None else top + 1
        if journaled != plan.planned:
            if plan.last is None or plan.last[0] != journaled:
                plan.broken = True
                raise JournalError(f"journal {self.path}: the plan's requests are not the "
                                   "ones it journaled: nothing more is planned")
            _, requests, records, complete = plan.last
        else:
            plan.broken = True  # until the chunk is read whole
            seq = journaled
            requests, records = [], []
            for group in itertools.islice(plan.groups, min(limit, plan.total - seq)):
                requests.append((seq, group[0][0], ",".join([str(r[1]) for r in group]),
                                 encode_body('{"cancelations":['
                                             + ",".join([r[3] for r in group]) + "]}")))
                records.extend([(r[1], r[2], seq) for r in group])
                seq += 1
            complete = seq >= plan.total
            if (complete and next(plan.groups, None) is not None) or (
                    not complete and len(requests) < limit):
                raise JournalError("the staged plan does not have the requests it counted")
            plan.broken = False
            plan.last = (journaled, requests, records, complete)
        with self.transaction() as db:
            db.executemany("INSERT INTO requests (seq, order_id, rows, body) "
                           "VALUES (?, ?, ?, ?)", requests)
            db.executemany("INSERT INTO rows (row_number, line_number, request) "
                           "VALUES (?, ?, ?)", records)
            if complete:
                db.execute("UPDATE job SET plan_complete = 1")
        plan.planned = journaled + len(requests)
        plan.complete = complete
        return complete

    def finish_plan(self, plan: JobPlan) -> None:
        """Journal the rest of `plan` (a chunk per transaction, unless inside one)."""
        while not plan.complete:
            self.plan_chunk(plan, _PLAN_CHUNK)

    @staticmethod
    def _insert_invalid(db: sqlite3.Connection, staging: PlanStaging) -> None:
        invalid = staging.invalid()
        while chunk := list(itertools.islice(invalid, _STAGE_CHUNK)):
            db.executemany("INSERT INTO rows (row_number, line_number, request, order_id, "
                           "order_line_id, product_id, quantity, errors) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", chunk)

    # --- reading --------------------------------------------------------------------

    def _where(self, states: Sequence[RequestState],
               orders: Collection[str] | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if states:
            clauses.append(f"state IN ({','.join('?' for _ in states)})")
            params += [s.value for s in states]
        if orders is not None:  # one parameter, however many orders
            clauses.append("order_id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(sorted(orders)))
        return " AND ".join(clauses), params

    def requests_after(self, after: int, limit: int, states: Sequence[RequestState] = (),
                       orders: Collection[str] | None = None, *,
                       bodies: bool = True) -> list[JournalRequest]:
        """One chunk of `requests()`: up to `limit` requests with `seq > after` (with
        `bodies=False`, each body reads as "": cheaper, for counting)."""
        return [_request(row) for row in self.request_rows_after(
            after, limit, states, orders, bodies=bodies)]

    def request_rows_after(self, after: int, limit: int, states: Sequence[RequestState] = (),
                           orders: Collection[str] | None = None, *,
                           bodies: bool = True) -> list[tuple[Any, ...]]:
        """`requests_after` as the stored rows (`_request` makes each a JournalRequest):
        a SqliteStore's writer reads them, the event loop decodes them, so the writer's
        thread holds the GIL for as little as it can."""
        where, params = self._where(states, orders)
        columns = _REQUEST_COLUMNS if bodies else _REQUEST_COLUMNS.replace("body", "''")
        return self._db.execute(
            f"SELECT {columns} FROM requests WHERE seq > ?"
            + (f" AND {where}" if where else "") + " ORDER BY seq LIMIT ?",
            [after, *params, limit]).fetchall()

    def iter_requests(self, *states: RequestState, orders: Collection[str] | None = None,
                      chunk: int = 1000) -> Iterator[JournalRequest]:
        """Requests in plan order, read `chunk` at a time (bounded memory)."""
        after = -1
        while True:
            batch = self.requests_after(after, chunk, states, orders)
            yield from batch
            if len(batch) < chunk:
                return
            after = batch[-1].seq

    def requests(self, *states: RequestState) -> list[JournalRequest]:
        """Requests in plan order, optionally only those in `states`."""
        return list(self.iter_requests(*states))

    def _seq(self, key: str) -> int:
        """The `seq` of the request keyed `key` (KeyError if none): the key is its order id
        and row numbers, so its first row leads to it."""
        order_id, _, numbers = key.rpartition("#")
        first = numbers.split(",", 1)[0]
        if not order_id or not first.isdigit():
            raise KeyError(key)
        row = self._db.execute(
            "SELECT q.seq, q.order_id, q.rows FROM rows r JOIN requests q ON q.seq = r.request "
            "WHERE r.row_number = ?", (int(first),)).fetchone()
        if row is None or PlannedRequest.make_key(row[1], _row_numbers(row[2])) != key:
            raise KeyError(key)
        return int(row[0])

    def request(self, key: str) -> JournalRequest:
        """One request by key (KeyError if absent)."""
        row = self._db.execute(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE seq = ?",
                               (self._seq(key),)).fetchone()
        return _request(row)

    def counts(self) -> dict[RequestState, int]:
        """Requests per state (every state present, zero when none)."""
        counts = dict.fromkeys(RequestState, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"):
            counts[RequestState(state)] = n
        return counts

    def rows_after(self, after: int, limit: int) -> list[JournalRow]:
        """One chunk of `rows()`: up to `limit` rows with `row_number > after`."""
        cursor = self._db.execute(
            "SELECT r.row_number, r.line_number, r.order_id, r.order_line_id, r.product_id, "
            f"r.quantity, r.errors, q.{_REQUEST_COLUMNS.replace(', ', ', q.')} FROM rows r "
            "LEFT JOIN requests q ON q.seq = r.request WHERE r.row_number > ? "
            "ORDER BY r.row_number LIMIT ?", (after, limit))
        result: list[JournalRow] = []
        bodies: dict[int, list[Any]] = {}
        for row in cursor:
            number, line, order_id, line_id, product_id, quantity, errors = row[:7]
            request = _request(row[7:]) if row[7] is not None else None
            if request is not None and quantity is None:  # schema 3: from the body
                line_id, product_id, quantity = _line_fields(request, number, bodies)
                order_id = request.order_id
            result.append(JournalRow(
                row_number=number, line_number=line, order_id=order_id, order_line_id=line_id,
                product_id=product_id, quantity=quantity, errors=_errors(errors),
                request=request))
        return result

    def iter_rows(self, chunk: int = 1000) -> Iterator[JournalRow]:
        """Every input row, in file order, with its request, `chunk` at a time."""
        after = 0
        while True:
            batch = self.rows_after(after, chunk)
            yield from batch
            if len(batch) < chunk:
                return
            after = batch[-1].row_number

    def rows(self) -> list[JournalRow]:
        """Every input row, in file order, with its request."""
        return list(self.iter_rows())

    def skipped_rows(self) -> int:
        """How many rows no request covers (skipped invalid rows)."""
        count: int = self._db.execute(
            "SELECT COUNT(*) FROM rows WHERE request IS NULL").fetchone()[0]
        return count

    def outcome_counts(self) -> list[tuple[RequestState, str | None, int, int]]:
        """(state, outcome, requests, rows) per pair present; a request's rows are its
        comma-separated row numbers (`_row_numbers`)."""
        return [(RequestState(state), outcome, requests, rows) for state, outcome, requests, rows
                in self._db.execute(f"SELECT state, outcome, COUNT(*), SUM({_ROW_COUNT}) "
                                    "FROM requests GROUP BY state, outcome")]

    # --- state changes (one commit each, or one per batch under a SqliteStore) --------

    def _update(self, key: str, mark: _Mark, params: Sequence[Any], durable: bool) -> None:
        """Apply `mark` to the request keyed `key`: one statement, which finds the request
        by its first row and checks its key and state (no lookup round trip: this runs
        for every mark of a job). JournalError, nothing changed, if it is refused.
        Under `grouping`, the mark is held and applied with the others of its kind."""
        target = _key_target(key)
        held = self._held
        if held is not None:
            # The kinds apply in the order they were first held: a request's second mark
            # may be held if its kind applies after its first one's, else the held marks
            # go first (a request's marks keep their order).
            kind = self._kinds.get(mark)
            before = self._held_keys.get(key)
            if before is not None and kind is not None and kind <= before:
                self.apply_held()
                kind = None
            if kind is None:
                kind = self._kinds[mark] = len(self._kinds)
                held[mark] = []
            held[mark].extend((*params, *target))
            self._held_keys[key] = kind
            return
        if self._in_transaction:  # the writer's batch (the common case): no context manager
            changed = self._db.execute(mark.sql, (*params, *target)).rowcount
        else:
            with self.transaction(durable=durable) as db:
                changed = db.execute(mark.sql, (*params, *target)).rowcount
        if changed != 1 and mark.expected:
            self._refused(key, mark.expected)

    @contextmanager
    def grouping(self) -> Iterator[None]:
        """Inside a transaction: hold each mark, and apply those of one kind together
        (one statement per kind, `_grouped_sql`) when the block ends or `apply_held` is
        called (before anything that reads the journal). Marks of different requests
        commute, so only a request's own marks keep their order (the kinds apply in the
        order they were first held; a mark that would break it applies what is held
        first). Raises `_Regroup` (roll back, run the marks one by one)
        when a grouped mark matched fewer requests than it names."""
        assert self._in_transaction and self._held is None
        self._held = {}
        try:
            yield
            self.apply_held()
        finally:
            self._held = None
            self._kinds.clear()
            self._held_keys.clear()

    def apply_held(self) -> None:
        """Apply the marks `grouping` holds: one statement per kind of mark."""
        held = self._held
        if not held:
            return
        db = self._db
        for mark, params in held.items():
            width = mark.assignments.count("?") + 3
            step = _GROUP_ROWS * width
            for start in range(0, len(params), step):
                part = params[start:start + step]
                count = len(part) // width
                size = 1 << (count - 1).bit_length()
                changed = db.execute(_grouped_sql(mark, size),
                                     part + [None] * ((size - count) * width)).rowcount
                if changed != count and mark.expected:
                    raise _Regroup
        held.clear()
        self._kinds.clear()
        self._held_keys.clear()

    def _refused(self, key: str, expected: Sequence[RequestState]) -> None:
        try:
            seq = self._seq(key)
        except KeyError:
            seq = -1
        row = self._db.execute("SELECT state FROM requests WHERE seq = ?", (seq,)).fetchone()
        found = "no such request" if row is None else f"it is {row[0]}"
        raise JournalError(
            f"request {key}: expected state {'/'.join(s.value for s in expected)}, "
            f"but {found}")

    def mark_sending(self, key: str, at: float | None = None, *,
                     resend: bool = False) -> None:
        """Durably note that `key` is about to be POSTed: from here on it may be sent.

        Only PENDING requests (and, with `resend`, UNCERTAIN/SENDING ones or DONE ones
        marked resendable or NOT_APPLIED) may move to SENDING. The `reconcile_*` columns
        are kept: they tell why a request was sent again.
        """
        self._update(key, _RESEND if resend else _SENDING, (now(at),), True)

    def mark_send_attempt(self, key: str, at: float | None = None) -> None:
        """Another attempt of the send `key` is in (after a refusal the API did not process:
        429, 503, a new token, no connection). `sent_at` moves to it, because only the
        last attempt can have been processed: reconciliation waits its settling window
        from there. Durable, like the first mark."""
        self._update(key, _SEND_ATTEMPT, (now(at),), True)

    def mark_unsent(self, key: str, outcome: str, errors: Sequence[str],
                    at: float | None = None) -> None:
        """A PENDING request failed before any attempt left (no token, a long 429 pause):
        final for this run, and resendable, since the API never saw it."""
        self._update(key, _UNSENT, (outcome, _texts(errors), now(at)), False)

    def mark_reconciled(self, key: str, verdict: str, reason: str,
                        adjustments: Sequence[str] = (), *, errors: Sequence[str],
                        at: float | None = None) -> None:
        """Record what reconciliation decided about an UNCERTAIN request.

        ``APPLIED``: DONE, outcome SUCCEEDED (no action id: the adjustments are the
        proof). ``NOT_APPLIED``: DONE, outcome NOT_APPLIED, *not* flagged resendable, so
        only an explicit ``--resend-unapplied`` sends it again. ``UNCERTAIN``: stays as
        it is, with `errors` updated. The verdict, reason and adjustment ids are kept.
        """
        at = now(at)
        state, outcome = reconciled_end(verdict)
        self._update(key, _RECONCILED, (state, outcome, _texts(errors), at, verdict, reason,
                                        json.dumps(list(adjustments)), at), False)

    def mark_accepted(self, key: str, action_id: str, at: float | None = None) -> None:
        """Durably note the action the API created for `key` (never lose an action_id)."""
        self._update(key, _ACCEPTED, (action_id, now(at)), True)

    def mark_uncertain(self, key: str, errors: Sequence[str], at: float | None = None) -> None:
        """The POST's answer was lost: it may have been processed. Not re-sent by default."""
        self._update(key, _UNCERTAIN, (now(at), _texts(errors)), False)

    def mark_not_sent(self, key: str) -> None:
        """Back to PENDING: the request was marked SENDING but provably never left."""
        self._update(key, _NOT_SENT, (), False)

    def _key_of_action(self, action_id: str) -> str | None:
        row = self._db.execute("SELECT order_id, rows FROM requests WHERE action_id = ? AND "
                               "state = 'ACCEPTED'", (action_id,)).fetchone()
        return None if row is None else PlannedRequest.make_key(row[0], _row_numbers(row[1]))

    def poll_started(self, key: str, at: float | None = None) -> None:
        """A status read of `key`'s action is about to go out (see `last_contact`)."""
        self._update(key, _POLL_STARTED, (now(at),), False)

    def polled(self, key: str, at: float | None = None, status: str | None = None) -> None:
        """A status read of `key`'s action ended at `at` (wall clock)."""
        self._update(key, _POLLED, (now(at), status), False)

    def mark_poll_started(self, action_id: str, at: float | None = None) -> None:
        """`poll_started` by action id (a lookup: the job uses the key)."""
        key = self._key_of_action(action_id)
        if key is not None:
            self.poll_started(key, at)

    def mark_polled(self, action_id: str, at: float | None = None,
                    status: str | None = None) -> None:
        """`polled` by action id (a lookup: the job uses the key)."""
        key = self._key_of_action(action_id)
        if key is not None:
            self.polled(key, at, status)

    def mark_tracking_stopped(self, key: str, outcome: str, errors: Sequence[str]) -> None:
        """Tracking gave up for this run (timeout, reads failing): the action still exists,
        so the request stays ACCEPTED with `outcome` noted, and a re-run tracks it on."""
        self._update(key, _TRACKING_STOPPED, (outcome, _texts(errors)), False)

    def mark_done(self, key: str, outcome: str, *, status: str | None = None,
                  errors: Sequence[str] = (), resendable: bool = False,
                  at: float | None = None) -> None:
        """The final result of `key`. `resendable`: the API refused it before processing
        (401, 429, 503, no connection), so a re-run may safely send it again."""
        self._update(key, _DONE, (outcome, status, _texts(errors), now(at), int(resendable)),
                     False)

    def mark_interrupted_sends(self, message: str) -> list[str]:
        """On resume: SENDING requests (the process died mid-POST) become UNCERTAIN."""
        at = time.time()
        with self.transaction() as db:
            keys = [PlannedRequest.make_key(row[0], _row_numbers(row[1])) for row in db.execute(
                "SELECT order_id, rows FROM requests WHERE state = 'SENDING' ORDER BY seq")]
            db.execute("UPDATE requests SET state = 'UNCERTAIN', outcome = 'UNCERTAIN', "
                       "finished_at = ?, errors = ? WHERE state = 'SENDING'",
                       (at, json.dumps([message])))
        return keys


# --- planning a new job: rows staged as they are checked, grouped by SQL ----------------

#: Rows written to the staging file per `executemany`.
_STAGE_CHUNK = 5000
#: Requests a new job journals before its first is sent, then per chunk (one writer
#: transaction between the marks, ~20 µs a request: the marks wait at most ~50 ms).
_FIRST_PLAN_CHUNK = 1000
_PLAN_CHUNK = 2500
#: Most lines of one run (or duplicates in all) that staging keeps in memory to find
#: identical rows as they come.
_RUN_MEMORY = 10_000


@attrs.frozen
class StagedRequest:
    """One planned POST as the staging file groups it (see `PlanStaging.plan`)."""

    order_id: str
    rows: tuple[int, ...]
    lines: tuple[int, ...]
    body: str
    units: int
    #: Price + shipping + taxes per currency.
    totals: dict[str, Decimal]

    @property
    def key(self) -> str:
        return PlannedRequest.make_key(self.order_id, self.rows)


class PlanStaging:
    """The rows of a new job, written as they are checked, before any journal exists.

    A private SQLite file in a temporary directory (no durability needed: a crash just
    means checking again), so that a file of any size is checked, grouped per order and
    planned in bounded memory, and an input that turns out bad leaves no journal behind.
    Each valid row keeps its order id and its cancelation's exact JSON (`line`): a
    request's body is its rows' lines joined, which is what `request_body` writes.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mirakl-cancel-plan-")
        #: The staging file (a journal copies from it directly, see `create_job_from_staging`).
        self.file = str(Path(self._dir.name) / "plan.sqlite")
        # Checked on one thread, then read by the journal's writer thread (`JobPlan`).
        self._db = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                       "cache_size=-16384"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript("""
            CREATE TABLE valid (row_number INTEGER PRIMARY KEY, line_number INTEGER NOT NULL,
                order_id TEXT NOT NULL, line TEXT NOT NULL, units INTEGER NOT NULL,
                total TEXT NOT NULL, currency TEXT NOT NULL);
            CREATE TABLE invalid (row_number INTEGER PRIMARY KEY, line_number INTEGER NOT NULL,
                order_id TEXT, order_line_id TEXT, product_id TEXT, quantity INTEGER,
                errors TEXT);
            BEGIN;
        """)
        self._valid: list[tuple[Any, ...]] = []
        self._invalid: list[tuple[Any, ...]] = []
        self.valid_rows = 0
        self.invalid_rows = 0
        self._finished = False
        #: Runs of consecutive valid rows of one order, and the order of the last row.
        self._runs = 0
        self._last_order: str | None = None
        #: Every order's rows are one run (set by `finish`): most files list an order's
        #: lines together, and then the plan is the rows in file order, with no sorting.
        self.contiguous = False
        #: The current run's lines (JSON → its first row and line), and the identical
        #: rows found in runs: a contiguous file's duplicates without a sort. None once
        #: either grows past `_RUN_MEMORY` (the query finds them then).
        self._run_lines: dict[str, tuple[int, int]] | None = {}
        self._run_duplicates: list[tuple[int, int, int, int]] = []

    def add_valid(self, row: int, line: int, order_id: str, cancelation_json: str,
                  units: int, total: Decimal | str, currency: str) -> None:
        """A checked row: its cancelation's exact JSON, units and total (for a dry run)."""
        self.add_record((row, line, order_id, cancelation_json, units, str(total), currency))

    def add_record(self, record: tuple[int, int, str, str, int, str, str]) -> None:
        """`add_valid` of a record already in its columns' order and types (the input's
        `CheckedLine`): a million rows are staged without unpacking each."""
        self._valid.append(record)
        order_id = record[2]
        self.valid_rows += 1
        seen = self._run_lines
        if order_id != self._last_order:
            self._runs += 1
            self._last_order = order_id
            if seen is not None:
                seen.clear()
        if seen is not None:
            first = seen.setdefault(record[3], (record[0], record[1]))
            if first[0] != record[0]:
                self._run_duplicates.append((record[0], record[1], *first))
            if len(seen) > _RUN_MEMORY or len(self._run_duplicates) > _RUN_MEMORY:
                self._run_lines = None
        if len(self._valid) >= _STAGE_CHUNK:
            self._flush()

    def add_invalid(self, row: PlannedRow) -> None:
        """A row that failed checking (kept for the report when it is skipped)."""
        self._invalid.append((row.row_number, row.line_number, row.order_id,
                              row.order_line_id, row.product_id, row.quantity,
                              _texts(row.errors)))
        self.invalid_rows += 1
        if len(self._invalid) >= _STAGE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._valid:
            self._db.executemany("INSERT INTO valid VALUES (?, ?, ?, ?, ?, ?, ?)", self._valid)
            self._valid.clear()
        if self._invalid:
            self._db.executemany("INSERT INTO invalid VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 self._invalid)
            self._invalid.clear()

    def finish(self) -> None:
        """Every row is in: index for grouping, and see whether orders are contiguous
        (as many distinct orders as runs of rows)."""
        if not self._finished:
            self._flush()
            self._db.execute("CREATE INDEX valid_order ON valid (order_id, row_number)")
            self._db.execute("COMMIT")
            self._finished = True
            self.contiguous = self.orders() == self._runs

    def duplicates(self) -> Iterator[tuple[int, int, int, int]]:
        """(row, line, first row, its line) of every row identical to an earlier row of the
        same order (the same cancelation twice would cancel the line twice)."""
        self.finish()
        if self.contiguous and self._run_lines is not None:
            yield from self._run_duplicates  # every order was one run, and all of it seen
            return
        yield from self._db.execute(
            "SELECT v.row_number, v.line_number, f.row_number, f.line_number FROM "
            "(SELECT order_id, line, MIN(row_number) AS first FROM valid GROUP BY order_id, "
            "line HAVING COUNT(*) > 1) d JOIN valid v ON v.order_id = d.order_id AND "
            "v.line = d.line AND v.row_number > d.first JOIN valid f ON f.row_number = d.first "
            "ORDER BY v.row_number")

    def request_count(self, max_lines: int | None) -> int:
        """How many requests `plan(max_lines)` makes."""
        self.finish()
        step = max_lines or 0
        sql = ("SELECT COUNT(*) FROM (SELECT DISTINCT order_id FROM valid)" if not step else
               "SELECT COALESCE(SUM((n + ? - 1) / ?), 0) FROM "
               "(SELECT COUNT(*) AS n FROM valid GROUP BY order_id)")
        return int(self._db.execute(sql, (step, step) if step else ()).fetchone()[0])

    def orders(self) -> int:
        """Distinct orders among the valid rows."""
        self.finish()
        return int(self._db.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT order_id FROM valid)").fetchone()[0])

    def plan(self, max_lines: int | None) -> Iterator[StagedRequest]:
        """The requests, as `group_by_order` makes them: one per order, in the order the
        orders first appear, lines in file order, at most `max_lines` lines each."""
        if max_lines is not None and max_lines < 1:
            raise ValueError("max_lines must be at least 1")
        for rows in self.groups(max_lines):
            yield _staged(rows)

    def groups(self, max_lines: int | None) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of each request of `plan`, as (order, row, line, JSON, units, total,
        currency) records."""
        self.finish()
        if self.contiguous:  # the plan is the file order: a scan, no sort
            cursor = self._db.execute(
                "SELECT order_id, row_number, line_number, line, units, total, currency "
                "FROM valid ORDER BY row_number")
        else:
            cursor = self._db.execute(
                "SELECT v.order_id, v.row_number, v.line_number, v.line, v.units, v.total, "
                "v.currency FROM (SELECT order_id, MIN(row_number) AS first FROM valid "
                "GROUP BY order_id) f JOIN valid v ON v.order_id = f.order_id "
                "ORDER BY f.first, v.row_number")
        current: list[tuple[Any, ...]] = []
        for row in cursor:
            if current and (row[0] != current[0][0] or len(current) == max_lines):
                yield current
                current = []
            current.append(row)
        if current:
            yield current

    def invalid(self) -> Iterator[tuple[Any, ...]]:
        """The invalid rows as `rows` records (row, line, NULL request, fields, errors)."""
        self.finish()
        for row in self._db.execute("SELECT * FROM invalid ORDER BY row_number"):
            yield (row[0], row[1], None, *row[2:])

    def close(self) -> None:
        """Remove the staging file."""
        with suppress(sqlite3.Error):
            self._db.close()
        self._dir.cleanup()

    def __enter__(self) -> PlanStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobPlan:
    """A new job's plan while it is journaled chunk by chunk (`Journal.start_plan`): where
    its requests come from (the staging file, kept open until the plan is complete), how
    many it has, and how many of them the journal holds."""

    def __init__(self, staging: PlanStaging, max_lines: int | None, total: int) -> None:
        self.staging = staging
        #: Requests in the whole plan, and those journaled so far (seq 0 to planned - 1).
        self.total = total
        self.planned = 0
        self.complete = False
        #: A chunk failed after reading its groups: the plan cannot go on.
        self.broken = False
        #: The last chunk as written (first seq, request and row records, complete), to
        #: write again if its transaction did not commit (`Journal.plan_chunk`).
        self.last: tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]], bool] | None = None
        #: The plan's requests, as `PlanStaging.groups` makes them, read as journaled.
        self.groups = staging.groups(max_lines)


def _staged(rows: list[tuple[Any, ...]]) -> StagedRequest:
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row[6]] = totals.get(row[6], Decimal(0)) + Decimal(row[5])
    return StagedRequest(
        order_id=rows[0][0], rows=tuple(r[1] for r in rows), lines=tuple(r[2] for r in rows),
        body='{"cancelations":[' + ",".join(r[3] for r in rows) + "]}",
        units=sum(r[4] for r in rows), totals=totals)


# --- the store: the journal behind the job's store interface, off the event loop --------

class _Op:
    """One queued call of a Journal method, and who waits for its result."""

    __slots__ = ("args", "durable", "future", "guards", "kwargs", "name")

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 durable: bool, guards: bool, future: asyncio.Future[Any] | None) -> None:
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.durable = durable
        self.guards = guards
        self.future = future


_STOP = None
#: The Journal methods that only apply one mark (`Journal._update`): a batch holds them
#: and applies those of one kind together (`Journal.grouping`).
_GROUPABLE = frozenset({
    "mark_sending", "mark_send_attempt", "mark_unsent", "mark_accepted", "mark_uncertain",
    "mark_not_sent", "poll_started", "polled", "mark_tracking_stopped", "mark_done",
    "mark_reconciled"})
#: UPDATE ... FROM (SQLite 3.33): older libraries apply the marks one by one.
_GROUPED = sqlite3.sqlite_version_info >= (3, 33, 0)
#: Most marks in one transaction: bounds the time a batch holds the writer.
_MAX_BATCH = 2000
#: How long marks nobody waits for (the ends of status reads) are held on the loop's side,
#: to go to the writer together (`SqliteStore._submit`).
_LAZY_DELAY = 0.05
#: Requests or rows read per round trip to the writer.
_CHUNK = 1000


class SqliteStore(JobStore):
    """A `Journal` as a `JobStore`: one writer thread, group commit.

    Every call becomes an operation, queued on the event loop's side; what one turn of
    the loop queued is handed to the writer as one list (a mark nobody waits for is held
    apart, to go many at a time), so the writer's thread wakes once per hand-off, not
    once per mark: each wake-up is a handover of the GIL that the loop then waits to
    take back. The writer takes everything handed over (up to `_MAX_BATCH`), runs it in
    order as one transaction, and commits once, with fsync when any operation in it is a
    guarding mark; then it resolves the callers' futures on the event loop. So a disk
    whose flush takes 10 ms costs one flush per batch, not per mark, and it is the
    writer thread that waits for it, never the event loop.

    If a batch fails (the disk, a bug), none of it is written, every caller in it gets
    the error, and every later guarding mark is refused: nothing is sent unguarded.

    Create it inside the running event loop; `aclose()` (or `close()` from outside the
    loop) flushes, stops the writer and gives the journal back to synchronous use.
    `flush_delay` adds that many seconds to each durable commit (tests and benchmarks:
    a slow disk without touching the disk).
    """

    def __init__(self, journal: Journal, *, flush_delay: float = 0.0) -> None:
        self.journal = journal
        self.flush_delay = flush_delay
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        #: Operations queued on the loop's side since the last hand-off to the writer.
        self._pending: list[_Op] = []
        #: Marks nobody waits for, held apart to go together (`_submit`).
        self._lazy: list[_Op] = []
        self._handing_off = False
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._failed: BaseException | None = None
        self._closed = False
        #: Transactions committed, and how many of them were durable (fsync'd).
        self.commits = 0
        self.durable_commits = 0
        #: While a plan is journaled in the background (`plan_rest`): set, then replaced,
        #: as each chunk is in; None once it is complete (or failed).
        self._planned: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._work, name="mirakl-cancel-journal",
                                        daemon=True)
        self._thread.start()

    # --- the writer -------------------------------------------------------------------

    def _work(self) -> None:
        # Woken once per hand-off (a list of operations), not once per operation: every
        # wake-up of this thread is a handover of the GIL that the event loop waits for.
        # It starts on what is queued at once, without waiting for more to gather: while
        # senders wait for their SENDING marks the loop has nothing else to do, so any
        # wait here is the loop's idle time (a 1 ms gather cost ~0.5 s a 5,000-request
        # job), and what arrives meanwhile forms the next batch by itself.
        stop = False
        while not stop:
            handed = self._queue.get()
            if handed is _STOP:
                return
            batch = list(handed)
            while len(batch) < _MAX_BATCH:
                try:
                    handed = self._queue.get_nowait()
                except queue.Empty:
                    break
                if handed is _STOP:
                    stop = True
                    break
                batch.extend(handed)
            for start in range(0, len(batch), _MAX_BATCH):
                part = batch[start:start + _MAX_BATCH]
                results = self._run(part)
                try:
                    self._loop.call_soon_threadsafe(_settle, part, results)
                except RuntimeError:  # the loop is gone: nobody is waiting any more
                    return

    def _run(self, batch: list[_Op]) -> list[tuple[bool, Any]]:
        if _GROUPED:
            try:
                return self._run_batch(batch, grouped=True)
            except _Regroup:  # rolled back: one by one, each refused mark gets its error
                pass
        return self._run_batch(batch, grouped=False)

    def _run_batch(self, batch: list[_Op], *, grouped: bool) -> list[tuple[bool, Any]]:
        """`batch` as one transaction. `grouped`: the marks of one kind are applied by one
        statement (`Journal.grouping`): each statement is a release of the GIL that the
        event loop may take, and then this thread waits to get it back."""
        journal = self.journal
        durable = any(op.durable for op in batch)
        results: list[tuple[bool, Any]] = []
        try:
            with journal.transaction(durable=durable), \
                    journal.grouping() if grouped else contextlib.nullcontext():
                for op in batch:
                    if op.guards and self._failed is not None:
                        results.append((False, JournalError(
                            f"the journal failed earlier ({self._failed}): nothing more is "
                            "sent")))
                        continue
                    if grouped and op.name not in _GROUPABLE:
                        journal.apply_held()  # it may read what the marks before it wrote
                    try:
                        results.append((True, getattr(journal, op.name)(*op.args, **op.kwargs)))
                    except JournalError as exc:  # a refused transition: nothing was changed
                        results.append((False, exc))
            if durable and self.flush_delay:
                time.sleep(self.flush_delay)
        except _Regroup:
            raise
        except BaseException as exc:  # handed to every caller of the batch
            self._failed = exc
            return [(False, exc)] * len(batch)
        self.commits += 1
        self.durable_commits += durable
        return results

    # --- queueing ---------------------------------------------------------------------

    def _submit(self, name: str, *args: Any, durable: bool = False, guards: bool = False,
                wait: bool = True, **kwargs: Any) -> asyncio.Future[Any] | None:
        """Queue `name` on the event loop's side; the queued operations go to the writer
        together, once per turn of the loop (`_hand_off`).

        One that nobody waits for (`wait=False`: the end of a status read) is held apart
        for up to `_LAZY_DELAY`, so that many of them go as one statement instead of one
        more statement in each batch. It commutes with what is queued after it: it only
        notes a read's end on an ACCEPTED request, so, applied later, it either changes
        nothing (the request moved on) or is older than a later read's start, which a
        resume counts as a read just now (the safe side). Anything that is not a mark (a
        read, a flush) takes the held ones along first, so that it sees them."""
        if self._closed:
            raise JournalError(f"journal {self.journal.path} is closed")
        future = self._loop.create_future() if wait else None
        op = _Op(name, args, kwargs, durable=durable, guards=guards, future=future)
        if not wait:
            self._lazy.append(op)
            if self._lazy_timer is None:
                self._lazy_timer = self._loop.call_later(_LAZY_DELAY, self._release_lazy)
            return None
        if self._lazy and name not in _GROUPABLE:
            self._take_lazy()
        self._pending.append(op)
        if not self._handing_off:
            self._handing_off = True
            self._loop.call_soon(self._hand_off)
        return future

    def _take_lazy(self) -> None:
        """The held marks join the queue (see `_submit`: they commute with it)."""
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        self._pending += self._lazy
        self._lazy = []

    def _release_lazy(self) -> None:
        self._lazy_timer = None
        self._take_lazy()
        self._hand_off()

    def _hand_off(self) -> None:
        """Give the writer everything queued since the last hand-off, as one list."""
        self._handing_off = False
        if self._pending:
            handed, self._pending = self._pending, []
            self._queue.put(handed)

    def _call(self, name: str, *args: Any, durable: bool = False, guards: bool = False,
              **kwargs: Any) -> asyncio.Future[Any]:
        """Queue `name` now (its place in the order is taken here); await the result."""
        future = self._submit(name, *args, durable=durable, guards=guards, **kwargs)
        assert future is not None
        return future

    # --- reading ----------------------------------------------------------------------

    async def job(self) -> JobInfo | None:
        result: JobInfo | None = await self._call("job")
        return result

    async def counts(self) -> dict[RequestState, int]:
        result: dict[RequestState, int] = await self._call("counts")
        return result

    async def request(self, key: str) -> JournalRequest:
        result: JournalRequest = await self._call("request", key)
        return result

    async def requests(self, *states: RequestState, orders: Collection[str] | None = None,
                       bodies: bool = True) -> AsyncIterator[JournalRequest]:
        """(While a plan is being journaled, the end of what is planned is not the end:
        it waits for the next chunk, and ends only once the plan is complete.)"""
        after = -1
        while True:
            planning = self._planned  # taken before the read: a chunk after it wakes us
            # Decoded here, one at a time, not by the writer (see `request_rows_after`).
            batch: list[tuple[Any, ...]] = await self._call(
                "request_rows_after", after, _CHUNK, states, orders, bodies=bodies)
            for row in batch:
                yield _request(row)
            if batch:
                after = batch[-1][0]
            if len(batch) < _CHUNK:
                if planning is None:
                    return
                await planning.wait()

    async def skipped_rows(self) -> int:
        result: int = await self._call("skipped_rows")
        return result

    async def outcome_counts(self) -> list[tuple[RequestState, str | None, int, int]]:
        result: list[tuple[RequestState, str | None, int, int]] = await self._call(
            "outcome_counts")
        return result

    async def rows(self) -> AsyncIterator[JournalRow]:
        after = 0
        while True:
            batch: list[JournalRow] = await self._call("rows_after", after, _CHUNK)
            for row in batch:
                yield row
            if len(batch) < _CHUNK:
                return
            after = batch[-1].row_number

    # --- planning ---------------------------------------------------------------------

    def plan_rest(self, plan: JobPlan) -> asyncio.Task[None]:
        """Journal the rest of `plan` in the background, a chunk per writer transaction
        (marks run between them), while the first requests are sent: `requests()` waits
        for each chunk instead of ending at the last one planned. The task fails if a
        chunk does (then `requests()` ends where the plan stopped)."""
        self._planned = asyncio.Event()
        return asyncio.ensure_future(self._plan_rest(plan))

    async def _plan_rest(self, plan: JobPlan) -> None:
        try:
            while not plan.complete:
                await self._call("plan_chunk", plan, _PLAN_CHUNK)
                self._chunk_planned(more=not plan.complete)
        finally:
            self._chunk_planned(more=False)

    def _chunk_planned(self, *, more: bool) -> None:
        event = self._planned
        self._planned = asyncio.Event() if more and event is not None else None
        if event is not None:
            event.set()

    # --- marks ------------------------------------------------------------------------

    def mark_sending(self, key: str, at: float | None = None, *,
                     resend: bool = False) -> Awaitable[None]:
        return self._call("mark_sending", key, now(at), resend=resend, durable=True,
                          guards=True)

    def mark_send_attempt(self, key: str, at: float | None = None) -> Awaitable[None]:
        return self._call("mark_send_attempt", key, now(at), durable=True, guards=True)

    def mark_accepted(self, key: str, action_id: str,
                      at: float | None = None) -> Awaitable[None]:
        return self._call("mark_accepted", key, action_id, now(at), durable=True)

    def mark_unsent(self, key: str, outcome: str, errors: Sequence[str],
                    at: float | None = None) -> Awaitable[None]:
        return self._call("mark_unsent", key, outcome, list(errors), now(at))

    def mark_uncertain(self, key: str, errors: Sequence[str],
                       at: float | None = None) -> Awaitable[None]:
        return self._call("mark_uncertain", key, list(errors), now(at))

    def mark_done(self, key: str, outcome: str, *, status: str | None = None,
                  errors: Sequence[str] = (), resendable: bool = False,
                  at: float | None = None) -> Awaitable[None]:
        return self._call("mark_done", key, outcome, status=status, errors=list(errors),
                          resendable=resendable, at=now(at))

    def mark_not_sent(self, key: str) -> Awaitable[None]:
        return self._call("mark_not_sent", key)

    def mark_tracking_stopped(self, key: str, outcome: str,
                              errors: Sequence[str]) -> Awaitable[None]:
        return self._call("mark_tracking_stopped", key, outcome, list(errors))

    def mark_reconciled(self, key: str, verdict: str, reason: str,
                        adjustments: Sequence[str] = (), *, errors: Sequence[str],
                        at: float | None = None) -> Awaitable[None]:
        return self._call("mark_reconciled", key, verdict, reason, list(adjustments),
                          errors=list(errors), at=now(at))

    def mark_interrupted_sends(self, message: str) -> Awaitable[list[str]]:
        return self._call("mark_interrupted_sends", message)

    def mark_poll_started(self, key: str, at: float | None = None) -> Awaitable[None]:
        return self._call("poll_started", key, now(at))

    def note_polled(self, key: str, at: float | None = None, status: str | None = None) -> None:
        self._submit("polled", key, now(at), status, wait=False)

    # --- lifetime ---------------------------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        return self._failed

    async def flush(self) -> None:
        # An empty durable batch still commits with fsync, after everything before it.
        await self._call("counts", durable=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        self._closed = True
        self._take_lazy()
        self._hand_off()
        self._queue.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def close(self) -> None:
        """`aclose` for a caller outside the event loop (after it stopped)."""
        self._closed = True
        self._take_lazy()  # what the loop queued before it stopped
        self._hand_off()
        self._queue.put(_STOP)
        self._thread.join()


def _settle(batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
    """On the event loop: hand each caller its result (a lazy op's failure is logged)."""
    for op, (ok, value) in zip(batch, results, strict=True):
        future = op.future
        if future is None:
            if not ok:
                logger.warning("journal: could not record %s: %s", op.name, value)
        elif not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
