"""`PostgresStore`: the state a fleet of worker processes shares, in PostgreSQL.

Why PostgreSQL: its row locks make "take the next slot" and "reserve this read" atomic
across processes, `FOR UPDATE SKIP LOCKED` hands each due action to one worker, and
`clock_timestamp()` is one clock for every worker, so no worker's clock (stepped, slow,
or on another machine) can shorten the API's once-a-minute ceiling.

Driver: psycopg 3 (the `postgres` extra), for its typed asyncio API and LISTEN/NOTIFY.
Everything here is bounded by a timeout; any failure surfaces as `StoreError` before a
request is sent, never as a driver exception, and never with the DSN's password in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from .._constants import DEFAULT_STORE_TIMEOUT, READ_ABANDON_MARGIN
from .._http.pacing import FleetPacing, fleet_key
from ..errors import RateLimitError, StoreError

if TYPE_CHECKING:
    import psycopg

    from ..tracker import ActionTracker

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

logger = logging.getLogger("mirakl_cancel")


#: Every table carries this prefix, so the store can share a database with other things.
_SCHEMA_TABLE = "mirakl_cancel_schema"
#: One advisory lock id for migrations, so that workers starting together migrate once.
_MIGRATION_LOCK = 0x6D69726B6C  # "mirkl"

#: Migrations, in order: version N is reached by running _MIGRATIONS[N - 1]. Never edit
#: a released entry; add one (a store opened by an older version refuses a newer schema).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (   # 1: shared pacing
        """CREATE TABLE mirakl_cancel_pacing (
            key text PRIMARY KEY,
            -- GCRA's theoretical arrival time: the fleet's next free rate-limit slot.
            tat timestamptz NOT NULL DEFAULT 'epoch',
            -- A 429 holds every worker until then.
            paused_until timestamptz NOT NULL DEFAULT 'epoch'
        )""",
        """CREATE TABLE mirakl_cancel_reads (
            key text NOT NULL,
            resource text NOT NULL,
            -- When the latest read of the resource was reserved, then when it ended.
            last_read timestamptz NOT NULL,
            -- The value before the latest reservation, to give it back when the read
            -- never reached the server.
            previous timestamptz,
            PRIMARY KEY (key, resource)
        )""",
    ),
    (   # 2: the shared tracker
        """CREATE TABLE mirakl_cancel_tracked (
            key text NOT NULL,
            action_id text NOT NULL,
            order_id text,
            added_by text NOT NULL,
            tracked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            due_at timestamptz NOT NULL,
            deadline timestamptz,
            -- The worker polling it now, until its lease lapses (then anyone may).
            owner text,
            lease_until timestamptz,
            polls integer NOT NULL DEFAULT 0,
            failures integer NOT NULL DEFAULT 0,
            -- {"status": {...}} or {"error": {...}} once the action ended.
            result jsonb,
            ended_at timestamptz,
            PRIMARY KEY (key, action_id)
        )""",
        """CREATE INDEX mirakl_cancel_tracked_due ON mirakl_cancel_tracked (key, due_at)
           WHERE result IS NULL""",
    ),
    (   # 3: fleet jobs (`_stores.pgjob.PostgresJobStore`): one plan, many workers
        """CREATE TABLE mirakl_cancel_jobs (
            name text PRIMARY KEY,
            input_path text NOT NULL,
            input_sha256 text NOT NULL,
            input_format text NOT NULL,
            base_url text NOT NULL,
            created_at text NOT NULL,
            options text NOT NULL,
            -- Set once a worker reconciled the finished job; cleared when a fleet run
            -- starts with no worker alive (a new run reconciles again).
            reconciled boolean NOT NULL DEFAULT false
        )""",
        """CREATE TABLE mirakl_cancel_job_requests (
            job text NOT NULL REFERENCES mirakl_cancel_jobs (name) ON DELETE CASCADE,
            seq integer NOT NULL,
            key text NOT NULL,
            order_id text NOT NULL,
            rows text NOT NULL,
            body text NOT NULL,
            state text NOT NULL DEFAULT 'PENDING'
                CHECK (state IN ('PENDING', 'SENDING', 'ACCEPTED', 'UNCERTAIN', 'DONE')),
            attempts integer NOT NULL DEFAULT 0,
            action_id text,
            sent_at float8,
            accepted_at float8,
            poll_started_at float8,
            last_polled_at float8,
            finished_at float8,
            outcome text,
            status text,
            errors text,
            resendable boolean NOT NULL DEFAULT false,
            reconcile_verdict text,
            reconcile_reason text,
            reconcile_adjustments text,
            reconciled_at float8,
            -- The worker that claimed it (NULL: in the pool), while its lease holds.
            owner text,
            -- Tracking gave up (timeout...): not handed out again during this fleet run.
            tracking_stopped boolean NOT NULL DEFAULT false,
            -- A resendable DONE request to send again in this fleet run.
            retry boolean NOT NULL DEFAULT false,
            PRIMARY KEY (job, seq),
            UNIQUE (job, key)
        )""",
        """CREATE INDEX mirakl_cancel_job_requests_open ON mirakl_cancel_job_requests
           (job, seq) WHERE state IN ('PENDING', 'SENDING', 'ACCEPTED') OR retry""",
        """CREATE INDEX mirakl_cancel_job_requests_order ON mirakl_cancel_job_requests
           (job, order_id)""",
        """CREATE TABLE mirakl_cancel_job_rows (
            job text NOT NULL REFERENCES mirakl_cancel_jobs (name) ON DELETE CASCADE,
            row_number integer NOT NULL,
            line_number integer NOT NULL,
            request integer,
            order_id text,
            order_line_id text,
            product_id text,
            quantity integer,
            errors text,
            PRIMARY KEY (job, row_number)
        )""",
        """CREATE TABLE mirakl_cancel_job_workers (
            job text NOT NULL REFERENCES mirakl_cancel_jobs (name) ON DELETE CASCADE,
            worker text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            -- Renewed by the worker's heartbeat; once past, the worker counts as dead.
            lease_until timestamptz NOT NULL,
            PRIMARY KEY (job, worker)
        )""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _hide(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class PostgresStore:
    """A PostgreSQL database shared by every worker of a fleet.

    `dsn` is a libpq connection URI (`postgresql://user:password@host:port/dbname`).
    The schema is created, or migrated, on first use. Give the same store to every
    client of a process (`MiraklConnectClient(..., store=store)`); close it when done
    (or use it as an async context manager). The password never appears in its repr,
    its errors or its logs.
    """

    def __init__(self, dsn: str, *, timeout: float = DEFAULT_STORE_TIMEOUT) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("the store must be a postgresql:// URI")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:  # pragma: no cover - the extra is installed in tests
            raise StoreError("PostgresStore needs psycopg: pip install 'mirakl-cancel[postgres]'"
                             ) from None
        try:
            info = conninfo_to_dict(dsn)
        except Exception:
            raise ValueError("the store URI cannot be parsed") from None
        self._dsn = dsn
        self._password = str(info["password"]) if info.get("password") else None
        self._where = f"{info.get('host', 'localhost')}:{info.get('port', 5432)}" \
                      f"/{info.get('dbname', '')}"
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock: asyncio.Lock | None = None
        self._pacings: dict[str, _PgPacing] = {}
        #: Identifies this process's worker in leases and logs (no meaning beyond that).
        self.worker_id = secrets.token_hex(8)

    def __repr__(self) -> str:
        return f"PostgresStore({self._where})"

    async def __aenter__(self) -> PostgresStore:
        await self.connection()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection (the store reconnects if used again)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):  # nothing to save
                await asyncio.wait_for(conn.close(), self.timeout)

    def error(self, doing: str, exc: BaseException) -> StoreError:
        """The public error for a failure of the store, with no password in it."""
        if isinstance(exc, asyncio.TimeoutError):
            detail = f"no answer within {self.timeout:g}s"
        else:
            detail = _hide(str(exc).strip().splitlines()[0] if str(exc).strip() else
                           type(exc).__name__, self._password)
        return StoreError(f"PostgreSQL store {self._where}: {doing} failed: {detail}")

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection with the schema in place (for listeners)."""
        import psycopg

        try:
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(int(self.timeout), 1)),
                self.timeout)
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            raise self.error("connecting", exc) from None
        try:
            await asyncio.wait_for(self._migrate(conn), self.timeout * 3)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, (psycopg.Error, OSError, asyncio.TimeoutError)):
                raise self.error("creating the schema", exc) from None
            raise
        return conn

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The store's shared connection, (re)connected on demand."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await self.connect()
            return self._conn

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {_SCHEMA_TABLE} (version integer NOT NULL)")
            row = await (await conn.execute(f"SELECT version FROM {_SCHEMA_TABLE}")).fetchone()
            current = 0 if row is None else int(row[0])
            if current > SCHEMA_VERSION:
                raise StoreError(f"the store {self._where} has schema version {current}; this "
                                 f"mirakl-cancel reads up to {SCHEMA_VERSION}: upgrade it")
            for statements in _MIGRATIONS[current:]:
                for statement in statements:
                    await conn.execute(statement)
            if row is None:
                await conn.execute(f"INSERT INTO {_SCHEMA_TABLE} VALUES (%s)", (SCHEMA_VERSION,))
            elif current != SCHEMA_VERSION:
                await conn.execute(f"UPDATE {_SCHEMA_TABLE} SET version = %s", (SCHEMA_VERSION,))

    async def fetchone(self, doing: str, sql: str, params: Sequence[Any] | dict[str, Any]
                       ) -> tuple[Any, ...] | None:
        """Run one statement on the shared connection, bounded by the timeout."""
        import psycopg

        conn = await self.connection()
        try:
            cursor = await asyncio.wait_for(conn.execute(sql, params),
                                            self.timeout)
            return await cursor.fetchone() if cursor.description else None
        except (psycopg.Error, OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, (asyncio.TimeoutError, psycopg.OperationalError)):
                await self.close()  # a half-done exchange: start afresh next time
            raise self.error(doing, exc) from None

    async def schema_version(self) -> int:
        """The schema version of the database (after creating or migrating it)."""
        row = await self.fetchone("reading the schema version",
                                  f"SELECT version FROM {_SCHEMA_TABLE}", ())
        return 0 if row is None else int(row[0])

    def fleet_pacing(self, key: str) -> FleetPacing:
        """The pacing shared by the fleet under `key` (see `_http.pacing.fleet_key`)."""
        pacing = self._pacings.get(key)
        if pacing is None:
            pacing = self._pacings[key] = _PgPacing(self, key)
        return pacing

    def tracker_class(self) -> type[ActionTracker]:
        """The tracker `ActionTracker(..., store=self)` builds: the fleet's."""
        from .pgtracker import SharedActionTracker

        return SharedActionTracker

    def pacing_for(self, base_url: str, credential: str) -> FleetPacing:
        """`fleet_pacing` for an API base URL and a credential identity."""
        return self.fleet_pacing(fleet_key(base_url, credential))


@attrs.frozen
class _ReadClaim:
    resource: str
    ours: datetime
    previous: datetime | None


#: Slots are handed out on the database clock; a worker re-checks the pause after
#: sleeping towards its slot, in case a 429 arrived meanwhile. Below this, no re-check.
_RECHECK_AFTER = 0.005
#: Sweep the reads table of rows no ceiling needs any more, every so many claims.
_SWEEP_EVERY = 4096


class _PgPacing:
    """FleetPacing on PostgreSQL: one pacing row per key, one reads row per resource."""

    def __init__(self, store: PostgresStore, key: str) -> None:
        self._store = store
        self.key = key
        self._created = False
        self._claims = 0

    async def _ensure_row(self) -> None:
        if not self._created:
            await self._store.fetchone(
                "creating the pacing row",
                "INSERT INTO mirakl_cancel_pacing (key) VALUES (%s) ON CONFLICT DO NOTHING",
                (self.key,))
            self._created = True

    async def _paused_for(self) -> float:
        row = await self._store.fetchone(
            "reading the fleet's pause",
            "SELECT extract(epoch FROM paused_until - clock_timestamp())::float8 "
            "FROM mirakl_cancel_pacing WHERE key = %s", (self.key,))
        return 0.0 if row is None else float(row[0])

    async def pace(self, rate_limit: float | None, max_pause: float) -> None:
        await self._ensure_row()
        while True:
            if rate_limit is None:
                wait = await self._paused_for()
                if wait > max_pause:
                    raise _long_pause(wait)
                if wait <= 0:
                    return
                await asyncio.sleep(wait)
                continue
            step = 1.0 / rate_limit
            # GCRA: the slot is the later of the schedule, now and the pause; the
            # schedule moves one step past it. All on the database's clock, atomically.
            row = await self._store.fetchone(
                "taking a rate-limit slot",
                """WITH now AS (SELECT clock_timestamp() AS t)
                UPDATE mirakl_cancel_pacing AS p
                SET tat = GREATEST(p.tat, now.t, p.paused_until) + make_interval(secs => %(step)s)
                FROM now
                WHERE p.key = %(key)s
                  AND p.paused_until <= now.t + make_interval(secs => %(max_pause)s)
                RETURNING extract(epoch FROM p.tat - now.t)::float8 - %(step)s""",
                {"key": self.key, "step": step, "max_pause": max_pause})
            if row is None:  # the pause is longer than the caller accepts to sleep
                raise _long_pause(await self._paused_for())
            wait = float(row[0])
            if wait <= 0:
                return
            await asyncio.sleep(wait)
            if wait < _RECHECK_AFTER or await self._paused_for() <= 0:
                return
            # A 429 reached the fleet while we slept: this slot is void, queue again.

    async def pause(self, seconds: float) -> None:
        await self._ensure_row()
        await self._store.fetchone(
            "pausing the fleet",
            "UPDATE mirakl_cancel_pacing SET paused_until = GREATEST(paused_until, "
            "clock_timestamp() + make_interval(secs => %s)) WHERE key = %s",
            (float(seconds), self.key))

    async def claim_read(self, resource: str, min_interval: float, hold: float) -> object:
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            await self._sweep(min_interval)
        # Granted only if the latest read of the resource, by any worker, ended at least
        # min_interval ago on the database's clock (one in flight is stored at its bound,
        # in the future); the row lock makes the check and the reservation one step.
        row = await self._store.fetchone(
            "reserving a read",
            """WITH now AS (SELECT clock_timestamp() AS t)
            INSERT INTO mirakl_cancel_reads AS r (key, resource, last_read)
            SELECT %(key)s, %(resource)s, now.t + make_interval(secs => %(hold)s) FROM now
            ON CONFLICT (key, resource) DO UPDATE
            SET last_read = EXCLUDED.last_read, previous = r.last_read
            WHERE r.last_read <= EXCLUDED.last_read
                                 - make_interval(secs => %(hold)s + %(interval)s)
            RETURNING r.last_read, r.previous""",
            {"key": self.key, "resource": resource, "interval": float(min_interval),
             "hold": float(hold)})
        return None if row is None else _ReadClaim(resource, row[0], row[1])

    async def read_ready_in(self, resource: str, min_interval: float) -> tuple[float, bool]:
        row = await self._store.fetchone(
            "reading a read reservation",
            """SELECT extract(epoch FROM last_read + make_interval(secs => %(interval)s)
                                         - clock_timestamp())::float8,
                      last_read > clock_timestamp()
            FROM mirakl_cancel_reads WHERE key = %(key)s AND resource = %(resource)s""",
            {"key": self.key, "resource": resource, "interval": float(min_interval)})
        return (0.0, False) if row is None else (float(row[0]), bool(row[1]))

    async def end_read(self, claim: object, *, sent: bool, answered: bool = True) -> None:
        assert isinstance(claim, _ReadClaim)
        try:
            await self._end_read(claim, sent, answered)
        except StoreError as exc:
            # The reservation made before the read stands (it counts as ending at the
            # attempt's bound): a failure here must not turn an answer we hold into an
            # error.
            logger.warning("the end of a read was not recorded: %s", exc)

    async def _end_read(self, claim: _ReadClaim, sent: bool, answered: bool) -> None:
        if sent:
            # Count the read from its end, in place of its bound: the server saw it no
            # later than that (an abandoned one's bytes may still be on their way). A row
            # no longer ours (the read outlived its bound) keeps the later of the two.
            await self._store.fetchone(
                "recording a read",
                """UPDATE mirakl_cancel_reads SET last_read = CASE WHEN last_read = %(ours)s
                    THEN clock_timestamp() + make_interval(secs => %(margin)s)
                    ELSE GREATEST(last_read, clock_timestamp()
                                             + make_interval(secs => %(margin)s)) END
                WHERE key = %(key)s AND resource = %(resource)s""",
                {"ours": claim.ours, "margin": 0.0 if answered else READ_ABANDON_MARGIN,
                 "key": self.key, "resource": claim.resource})
            return
        # Nothing reached the server: give the reservation back, but only if it is still
        # ours (a later reservation by another worker is a real read and must stand).
        if claim.previous is None:
            await self._store.fetchone(
                "releasing a read", "DELETE FROM mirakl_cancel_reads WHERE key = %s AND "
                "resource = %s AND last_read = %s", (self.key, claim.resource, claim.ours))
        else:
            await self._store.fetchone(
                "releasing a read", "UPDATE mirakl_cancel_reads SET last_read = %s, previous "
                "= NULL WHERE key = %s AND resource = %s AND last_read = %s",
                (claim.previous, self.key, claim.resource, claim.ours))

    async def _sweep(self, min_interval: float) -> None:
        """Forget reads no ceiling needs any more (kept a day, or twice the interval)."""
        await self._store.fetchone(
            "sweeping old reads",
            "DELETE FROM mirakl_cancel_reads WHERE key = %s AND last_read < clock_timestamp() "
            "- make_interval(secs => GREATEST(86400, 2 * %s::float8))",
            (self.key, float(min_interval)))


def _long_pause(wait: float) -> RateLimitError:
    return RateLimitError(429, None, f"rate limited by the server for another {wait:.0f}s "
                          "(a pause shared by the fleet)", retry_after=wait)
