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

One commit per state change, WAL mode, and ``synchronous=FULL`` for the two commits
that guard against duplicates (``SENDING`` and ``ACCEPTED``): those survive even a
power cut. The connection holds an exclusive lock for its lifetime, so two processes
can never run the same job at once (which would double-send every pending request).
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "SCHEMA_VERSION",
    "JobInfo",
    "Journal",
    "JournalBusyError",
    "JournalError",
    "JournalRequest",
    "JournalRow",
    "PlannedRequest",
    "PlannedRow",
    "RequestState",
]

SCHEMA_VERSION = 2
#: Versions this one opens, migrating them in place (additive changes only).
_MIGRATABLE = (1,)
#: Columns added after version 1: (name, SQL type). Nullable, so old rows stay valid.
_ADDED_REQUEST_COLUMNS = (
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
    options         TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS requests (
    key             TEXT PRIMARY KEY,
    seq             INTEGER NOT NULL UNIQUE,
    order_id        TEXT NOT NULL,
    rows            TEXT NOT NULL,
    body            TEXT NOT NULL,
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
CREATE INDEX IF NOT EXISTS requests_state ON requests (state);
CREATE INDEX IF NOT EXISTS requests_action ON requests (action_id);
CREATE TABLE IF NOT EXISTS rows (
    row_number      INTEGER PRIMARY KEY,
    line_number     INTEGER NOT NULL,
    request_key     TEXT REFERENCES requests (key),
    order_id        TEXT,
    order_line_id   TEXT,
    product_id      TEXT,
    quantity        INTEGER,
    errors          TEXT
);
CREATE INDEX IF NOT EXISTS rows_request ON rows (request_key);
"""


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


def _errors(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    data = json.loads(text)
    return tuple(str(item) for item in data) if isinstance(data, list) else (str(data),)


def _request(row: sqlite3.Row) -> JournalRequest:
    return JournalRequest(
        key=row["key"], seq=row["seq"], order_id=row["order_id"],
        rows=tuple(json.loads(row["rows"])), body=row["body"],
        state=RequestState(row["state"]), attempts=row["attempts"],
        action_id=row["action_id"], sent_at=row["sent_at"], accepted_at=row["accepted_at"],
        poll_started_at=row["poll_started_at"], last_polled_at=row["last_polled_at"],
        finished_at=row["finished_at"], outcome=row["outcome"], status=row["status"],
        errors=_errors(row["errors"]), resendable=bool(row["resendable"]),
        reconcile_verdict=row["reconcile_verdict"], reconcile_reason=row["reconcile_reason"],
        reconcile_adjustments=_errors(row["reconcile_adjustments"]),
        reconciled_at=row["reconciled_at"])


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a journal of a version in _MIGRATABLE up to SCHEMA_VERSION, in one transaction.

    Only columns were added since version 1, all nullable: an old journal keeps every
    row as it was and reads as "never reconciled". Done in place so that a job begun by
    an older mirakl-cancel can be resumed (and reconciled) by this one.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        for name, kind in _ADDED_REQUEST_COLUMNS:
            if name not in present:
                db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
        db.execute("UPDATE job SET schema_version = ?", (SCHEMA_VERSION,))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Journal:
    """A job's durable record; open with `Journal.open(path)`, close when done."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def open(cls, path: Path | str) -> Journal:
        """Open (creating if needed) and lock the journal at `path`.

        Raises JournalBusyError if another process holds it, JournalError if the file
        is not a journal this version understands.
        """
        path = Path(path)
        try:
            db = sqlite3.connect(str(path), timeout=0.2, isolation_level=None)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from None
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {path}: cannot switch to WAL mode ({mode})")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)  # IF NOT EXISTS: leaves an older journal's tables be
            # A write transaction takes the exclusive lock now, and holds it for our lifetime.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
            row = db.execute("SELECT schema_version FROM job").fetchone()
            if row is not None and row[0] in _MIGRATABLE:
                _migrate(db)
                row = (SCHEMA_VERSION,)
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
    def _transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One committed transaction; `durable` also forces it to disk (fsync)."""
        db = self._db
        if durable:
            db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")
        finally:
            if durable:
                db.execute("PRAGMA synchronous=NORMAL")

    # --- the job --------------------------------------------------------------------

    def job(self) -> JobInfo | None:
        """The job this journal records, or None if it is new (or creation never finished)."""
        row = self._db.execute("SELECT * FROM job").fetchone()
        if row is None:
            return None
        return JobInfo(input_path=row["input_path"], input_sha256=row["input_sha256"],
                       input_format=row["input_format"], base_url=row["base_url"],
                       created_at=row["created_at"], options=json.loads(row["options"]))

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
        """Record the whole plan in one transaction: a crash leaves either all or nothing."""
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._transaction(durable=True) as db:
            if db.execute("SELECT 1 FROM job").fetchone() is not None:
                raise JournalError(f"journal {self.path} already holds a job")
            db.execute(
                "INSERT INTO job (id, schema_version, input_path, input_sha256, input_format, "
                "base_url, created_at, options) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
                (SCHEMA_VERSION, input_path, input_sha256, input_format, base_url, created,
                 json.dumps(options or {}, sort_keys=True)))
            db.executemany(
                "INSERT INTO requests (key, seq, order_id, rows, body) VALUES (?, ?, ?, ?, ?)",
                [(r.key, seq, r.order_id, json.dumps(list(r.rows)), r.body)
                 for seq, r in enumerate(requests)])
            owner = {row: r.key for r in requests for row in r.rows}
            db.executemany(
                "INSERT INTO rows (row_number, line_number, request_key, order_id, "
                "order_line_id, product_id, quantity, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(p.row_number, p.line_number, owner.get(p.row_number), p.order_id,
                  p.order_line_id, p.product_id, p.quantity,
                  json.dumps(list(p.errors)) if p.errors else None) for p in rows])

    # --- reading --------------------------------------------------------------------

    def requests(self, *states: RequestState) -> list[JournalRequest]:
        """Requests in plan order, optionally only those in `states`."""
        if states:
            marks = ",".join("?" for _ in states)
            cursor = self._db.execute(
                f"SELECT * FROM requests WHERE state IN ({marks}) ORDER BY seq",
                [s.value for s in states])
        else:
            cursor = self._db.execute("SELECT * FROM requests ORDER BY seq")
        return [_request(row) for row in cursor]

    def request(self, key: str) -> JournalRequest:
        """One request by key (KeyError if absent)."""
        row = self._db.execute("SELECT * FROM requests WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return _request(row)

    def counts(self) -> dict[RequestState, int]:
        """Requests per state (every state present, zero when none)."""
        counts = dict.fromkeys(RequestState, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"):
            counts[RequestState(state)] = n
        return counts

    def rows(self) -> list[JournalRow]:
        """Every input row, in file order, with its request."""
        requests = {r.key: r for r in self.requests()}
        result: list[JournalRow] = []
        for row in self._db.execute("SELECT * FROM rows ORDER BY row_number"):
            key = row["request_key"]
            result.append(JournalRow(
                row_number=row["row_number"], line_number=row["line_number"],
                order_id=row["order_id"], order_line_id=row["order_line_id"],
                product_id=row["product_id"], quantity=row["quantity"],
                errors=_errors(row["errors"]),
                request=requests.get(key) if key is not None else None))
        return result

    # --- state changes (one commit each) ----------------------------------------------

    def _update(self, key: str, expected: Sequence[RequestState], durable: bool,
                sql: str, params: Sequence[Any]) -> None:
        marks = ",".join("?" for _ in expected)
        with self._transaction(durable=durable) as db:
            cursor = db.execute(
                f"UPDATE requests SET {sql} WHERE key = ? AND state IN ({marks})",
                [*params, key, *(s.value for s in expected)])
            if cursor.rowcount != 1:
                row = db.execute("SELECT state FROM requests WHERE key = ?", (key,)).fetchone()
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
        at = time.time() if at is None else at
        expected = [RequestState.PENDING]
        if resend:
            expected += [RequestState.SENDING, RequestState.UNCERTAIN, RequestState.DONE]
        self._update(key, expected, True,
                     "state = 'SENDING', attempts = attempts + 1, sent_at = ?, action_id = NULL,"
                     " accepted_at = NULL, poll_started_at = NULL, last_polled_at = NULL,"
                     " finished_at = NULL, outcome = NULL, status = NULL, errors = NULL,"
                     " resendable = 0", [at])

    def mark_send_attempt(self, key: str, at: float | None = None) -> None:
        """Another attempt of the send `key` is in (after a refusal the API did not process:
        429, 503, a new token, no connection). `sent_at` moves to it, because only the
        last attempt can have been processed: reconciliation waits its settling window
        from there. Durable, like the first mark."""
        at = time.time() if at is None else at
        self._update(key, [RequestState.SENDING], True, "sent_at = ?", [at])

    def mark_unsent(self, key: str, outcome: str, errors: Sequence[str],
                    at: float | None = None) -> None:
        """A PENDING request failed before any attempt left (no token, a long 429 pause):
        final for this run, and resendable, since the API never saw it."""
        at = time.time() if at is None else at
        self._update(key, [RequestState.PENDING], False,
                     "state = 'DONE', outcome = ?, errors = ?, finished_at = ?, resendable = 1",
                     [outcome, json.dumps(list(errors)), at])

    def mark_reconciled(self, key: str, verdict: str, reason: str,
                        adjustments: Sequence[str] = (), *, errors: Sequence[str],
                        at: float | None = None) -> None:
        """Record what reconciliation decided about an UNCERTAIN request.

        ``APPLIED``: DONE, outcome SUCCEEDED (no action id: the adjustments are the
        proof). ``NOT_APPLIED``: DONE, outcome NOT_APPLIED, *not* flagged resendable, so
        only an explicit ``--resend-unapplied`` sends it again. ``UNCERTAIN``: stays as
        it is, with `errors` updated. The verdict, reason and adjustment ids are kept.
        """
        at = time.time() if at is None else at
        target = {"APPLIED": ("DONE", "SUCCEEDED"), "NOT_APPLIED": ("DONE", "NOT_APPLIED"),
                  "UNCERTAIN": ("UNCERTAIN", "UNCERTAIN")}.get(verdict)
        if target is None:
            raise ValueError(f"unknown reconciliation verdict {verdict!r}")
        state, outcome = target
        self._update(key, [RequestState.UNCERTAIN], False,
                     "state = ?, outcome = ?, errors = ?, finished_at = ?, resendable = 0, "
                     "reconcile_verdict = ?, reconcile_reason = ?, reconcile_adjustments = ?, "
                     "reconciled_at = ?",
                     [state, outcome, json.dumps(list(errors)), at, verdict, reason,
                      json.dumps(list(adjustments)), at])

    def mark_accepted(self, key: str, action_id: str, at: float | None = None) -> None:
        """Durably note the action the API created for `key` (never lose an action_id)."""
        at = time.time() if at is None else at
        self._update(key, [RequestState.SENDING], True,
                     "state = 'ACCEPTED', action_id = ?, accepted_at = ?", [action_id, at])

    def mark_uncertain(self, key: str, errors: Sequence[str], at: float | None = None) -> None:
        """The POST's answer was lost: it may have been processed. Not re-sent by default."""
        at = time.time() if at is None else at
        self._update(key, [RequestState.SENDING, RequestState.UNCERTAIN], False,
                     "state = 'UNCERTAIN', outcome = 'UNCERTAIN', finished_at = ?, errors = ?",
                     [at, json.dumps(list(errors))])

    def mark_not_sent(self, key: str) -> None:
        """Back to PENDING: the request was marked SENDING but provably never left."""
        self._update(key, [RequestState.SENDING], False,
                     "state = 'PENDING', attempts = attempts - 1, sent_at = NULL", [])

    def mark_poll_started(self, action_id: str, at: float | None = None) -> None:
        """A status read of `action_id` is about to go out (see `last_contact`)."""
        at = time.time() if at is None else at
        with self._transaction() as db:
            db.execute("UPDATE requests SET poll_started_at = ? WHERE action_id = ? "
                       "AND state = 'ACCEPTED'", (at, action_id))

    def mark_polled(self, action_id: str, at: float | None = None,
                    status: str | None = None) -> None:
        """A status read of `action_id` ended at `at` (wall clock)."""
        at = time.time() if at is None else at
        with self._transaction() as db:
            db.execute("UPDATE requests SET last_polled_at = ?, status = COALESCE(?, status) "
                       "WHERE action_id = ? AND state = 'ACCEPTED'", (at, status, action_id))

    def mark_tracking_stopped(self, key: str, outcome: str, errors: Sequence[str]) -> None:
        """Tracking gave up for this run (timeout, reads failing): the action still exists,
        so the request stays ACCEPTED with `outcome` noted, and a re-run tracks it on."""
        self._update(key, [RequestState.ACCEPTED], False,
                     "outcome = ?, errors = ?", [outcome, json.dumps(list(errors))])

    def mark_done(self, key: str, outcome: str, *, status: str | None = None,
                  errors: Sequence[str] = (), resendable: bool = False,
                  at: float | None = None) -> None:
        """The final result of `key`. `resendable`: the API refused it before processing
        (401, 429, 503, no connection), so a re-run may safely send it again."""
        at = time.time() if at is None else at
        self._update(key, [RequestState.SENDING, RequestState.ACCEPTED, RequestState.UNCERTAIN],
                     False,
                     "state = 'DONE', outcome = ?, status = COALESCE(?, status), errors = ?, "
                     "finished_at = ?, resendable = ?",
                     [outcome, status, json.dumps(list(errors)), at, int(resendable)])

    def mark_interrupted_sends(self, message: str) -> list[str]:
        """On resume: SENDING requests (the process died mid-POST) become UNCERTAIN."""
        at = time.time()
        with self._transaction() as db:
            keys = [row[0] for row in db.execute(
                "SELECT key FROM requests WHERE state = 'SENDING' ORDER BY seq")]
            db.execute("UPDATE requests SET state = 'UNCERTAIN', outcome = 'UNCERTAIN', "
                       "finished_at = ?, errors = ? WHERE state = 'SENDING'",
                       (at, json.dumps([message])))
        return keys
