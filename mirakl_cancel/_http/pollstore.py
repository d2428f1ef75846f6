"""The polling ceiling across processes: last-read times kept on disk, per machine.

Two `mirakl-cancel status ID` a few seconds apart, or a `run` resumed right after
another stopped, are different processes reading the same action: only a file they
all see can keep them a minute apart. It is a small SQLite database in the user's
cache directory (`MIRAKL_CANCEL_CACHE_DIR`, else `$XDG_CACHE_HOME/mirakl-cancel`, else
`~/.cache/mirakl-cancel`), one row per (scope, key) read recently:

- the scope names the API base URL and a hash of the credential, never the secret;
- a claim is checked and written in one `BEGIN IMMEDIATE` transaction, so two
  processes cannot both take the same slot; while the read is in flight its row holds
  the latest moment the server can see it (the attempt's bound), then its end: a read
  cannot be overtaken by another process's; one whose process died (same boot: its pid
  is kept while in flight) counts as ended when another process sees it is gone, and
  across a reboot once its bound has passed;
- each row keeps the wall time *and* the boot id with the monotonic time: on the same
  boot the monotonic time is used, exact whatever the wall clock did since (a step
  forward an hour cannot make an old read look old); across a reboot only the wall
  time is left, and one in the future (a clock stepped back) counts as "just read":
  a clock step can make a read wait longer, never come sooner;
- rows are pruned once old under both readings, so the file stays as small as the
  last few minutes of reads;
- it is never flushed (`synchronous=OFF`): its writes are claims made on the event loop,
  and on a disk whose flush takes 10 ms each of its checkpoints (two flushes, and one
  more when its log starts over) held every request in flight for 20-30 ms. Little is
  given up: in WAL mode even `synchronous=NORMAL` flushes no commit, so a power cut
  loses the last reads either way; what OFF adds is that a power cut in the middle of
  a checkpoint may corrupt the file, and then the next process sets it aside
  (`*.corrupt`) and starts a new one (`default_store`).

Any failure of the file (read-only, locked for too long, corrupt) is logged once and
the process carries on with its in-memory guards: the ceiling then holds per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from .._clock import SYSTEM_CLOCK
from .._constants import POLL_STATE_LOCK_TIMEOUT, POLL_STATE_RETENTION, READ_ABANDON_MARGIN

__all__ = ["PollStore", "cache_dir", "default_store"]

logger = logging.getLogger("mirakl_cancel")

ENV_CACHE_DIR = "MIRAKL_CANCEL_CACHE_DIR"
FILE_NAME = "poll-state.sqlite3"
_PRUNE_EVERY = 512


def cache_dir() -> Path:
    """The directory for the shared poll state (see the module docstring)."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "mirakl-cancel"


def _boot_id() -> str | None:
    """This boot's id (Linux): monotonic times compare only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except OSError:
        return None


Row = tuple[float, "str | None", float]  # wall, boot, mono


class PollStore:
    """Last-read times of one machine, in one SQLite file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._boot = _boot_id()
        self._lock = threading.Lock()
        self._writes = 0
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, timeout=POLL_STATE_LOCK_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
        try:
            # Before the switch to WAL, which a new file makes with a flushed rollback journal.
            self._db.execute("PRAGMA synchronous=OFF")  # see the module docstring
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS reads (scope TEXT NOT NULL, "
                             "key TEXT NOT NULL, wall REAL NOT NULL, boot TEXT, "
                             "mono REAL NOT NULL, pid INTEGER, PRIMARY KEY (scope, key)) "
                             "WITHOUT ROWID")
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(reads)")}
            if "pid" not in columns:  # a file of an earlier version: reads in flight unknown
                with contextlib.suppress(sqlite3.OperationalError):  # another process did it
                    self._db.execute("ALTER TABLE reads ADD COLUMN pid INTEGER")
            with self._lock:
                # The machine's record: its times are the real clock's (a manual clock's
                # guards never use it, see `pollguard.shared_reads`).
                self._prune(SYSTEM_CLOCK.wall(), SYSTEM_CLOCK.monotonic())
        except sqlite3.Error:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _local(self, row: Row, now_mono: float, now_wall: float) -> float:
        """A stored read as a monotonic time of this process, never later than now:
        its monotonic reading on this boot, else its wall reading."""
        wall, boot, mono = row
        if boot is not None and boot == self._boot:
            return min(mono, now_mono)
        return min(now_mono - (now_wall - wall), now_mono)

    def load(self, scope: str, now_mono: float, now_wall: float) -> dict[str, float]:
        """Every recent read of `scope`, as monotonic times of this process."""
        with self._lock:
            rows = self._db.execute("SELECT key, wall, boot, mono FROM reads WHERE scope = ?",
                                    (scope,)).fetchall()
        return {key: self._local((wall, boot, mono), now_mono, now_wall)
                for key, wall, boot, mono in rows}

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under this process's lock: committed at the end of the
        block, rolled back if it raises (even a KeyboardInterrupt)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _row(self, scope: str, key: str, now_mono: float, now_wall: float) -> Row | None:
        found = self._db.execute("SELECT wall, boot, mono, pid FROM reads WHERE scope = ? "
                                 "AND key = ?", (scope, key)).fetchone()
        if found is None:
            return None
        row: Row = (found[0], found[1], found[2])
        pid = found[3]
        if pid is not None and row[1] == self._boot and row[1] is not None \
                and pid != os.getpid() and not _alive(pid):
            # A read in flight whose process died (SIGKILL mid-read): it reached the
            # server before the process ended, so before now; a little later for bytes
            # still on their way. Its end is now known: recorded in place of its bound.
            if row[2] > now_mono + READ_ABANDON_MARGIN:
                row = (now_wall + READ_ABANDON_MARGIN, self._boot, now_mono + READ_ABANDON_MARGIN)
            self._write(scope, key, row)
        return row

    def _raw(self, row: Row, now_mono: float, now_wall: float) -> float:
        """A stored read as a monotonic time of this process, future included (a read
        in flight is stored at its bound)."""
        wall, boot, mono = row
        if boot is not None and boot == self._boot:
            return mono
        return now_mono - (now_wall - wall)

    def try_claim(self, scope: str, key: str, interval: float, now_mono: float,
                  now_wall: float, hold: float = 0.0) -> tuple[float, float | None, Row | None]:
        """Take the read slot of `key` if the last read (by any process) allows it.

        The row written is the read in flight: its times are `hold` seconds from now,
        the latest the server can see it; `finish` puts its end in their place.
        Returns (seconds still to wait, last read as a local monotonic time, the row
        replaced): a wait of 0.0 means the slot is ours and written.
        """
        with self._transaction():
            previous = self._row(scope, key, now_mono, now_wall)
            last = None if previous is None else self._local(previous, now_mono, now_wall)
            if last is not None and last + interval > now_mono:
                return last + interval - now_mono, last, previous
            # In flight: its bound, and who holds it (a process that dies mid-read
            # frees its slot as soon as another process sees it is gone).
            self._write(scope, key, (now_wall + hold, self._boot, now_mono + hold), os.getpid())
        return 0.0, last, previous

    def record(self, scope: str, key: str, ago: float, now_mono: float,
               now_wall: float) -> None:
        """Note that a read of `key` ended `ago` seconds ago, unless a later one (or
        one in flight) is already on record."""
        with self._transaction():
            self._record(scope, key, ago, now_mono, now_wall)

    def _record(self, scope: str, key: str, ago: float, now_mono: float,
                now_wall: float) -> None:
        mono, wall = now_mono - ago, now_wall - ago
        found = self._row(scope, key, now_mono, now_wall)
        if found is None or self._raw(found, now_mono, now_wall) <= mono:
            self._write(scope, key, (wall, self._boot, mono))

    def finish(self, scope: str, key: str, claimed: tuple[float, float], ago: float,
               now_mono: float, now_wall: float) -> None:
        """Our read of `key`, claimed as (wall, mono), ended `ago` seconds ago (negative:
        it counts as later than now): its end replaces its in-flight bound if the row is
        still ours, else it is recorded like any read."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE reads SET wall = ?, boot = ?, mono = ?, pid = NULL WHERE scope = ? "
                "AND key = ? AND wall = ? AND mono = ?",
                (now_wall - ago, self._boot, now_mono - ago, scope, key, claimed[0], claimed[1]))
            if not cursor.rowcount:
                self._record(scope, key, ago, now_mono, now_wall)

    def release(self, scope: str, key: str, claimed: tuple[float, float],
                previous: Row | None) -> None:
        """Undo our claim (wall, mono) of `key`, if it is still the row on disk."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM reads WHERE scope = ? AND key = ? AND wall = ? AND mono = ?",
                (scope, key, claimed[0], claimed[1]))
            if cursor.rowcount and previous is not None:
                self._write(scope, key, previous)

    def _write(self, scope: str, key: str, row: Row, pid: int | None = None) -> None:
        """Write the read of `key` (`pid`: the process whose read is in flight)."""
        self._db.execute("INSERT INTO reads (scope, key, wall, boot, mono, pid) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET "
                         "wall = excluded.wall, boot = excluded.boot, mono = excluded.mono, "
                         "pid = excluded.pid", (scope, key, *row, pid))
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 1:
            self._prune(row[0], row[2])

    def _prune(self, now_wall: float, now_mono: float) -> None:
        # Old under both readings: a wall clock stepped forward cannot prune a fresh row.
        self._db.execute("DELETE FROM reads WHERE wall < ? AND (boot IS NOT ? OR mono < ?)",
                         (now_wall - POLL_STATE_RETENTION, self._boot,
                          now_mono - POLL_STATE_RETENTION))


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie, or a pid reused, counts as alive: the
    read's bound then holds, which is only slower)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process: it exists
    return True


_STORES: dict[Path, PollStore | None] = {}
_STORES_LOCK = threading.Lock()


def default_store() -> PollStore | None:
    """The store of this machine's cache directory, or None when it cannot be used
    (said once per directory, as a warning)."""
    path = cache_dir() / FILE_NAME
    with _STORES_LOCK:
        if path not in _STORES:
            try:
                _STORES[path] = _open(path)
            except (OSError, sqlite3.Error) as exc:
                logger.warning("cannot keep the polling ceiling across processes in %s (%s): "
                               "it holds within this process only", path, exc)
                _STORES[path] = None
        return _STORES[path]


def _open(path: Path) -> PollStore:
    """The store at `path`; a corrupt file (a power cut mid-checkpoint, see the module
    docstring) is set aside, with its log, for a new one."""
    try:
        return PollStore(path)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):  # locked, read-only...: not corrupt
            raise
        logger.warning("the shared poll state %s is damaged (%s): set aside as %s.corrupt, "
                       "a new one started", path, exc, path.name)
        for suffix in ("", "-wal", "-shm"):
            damaged = path.with_name(path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                damaged.replace(path.with_name(path.name + suffix + ".corrupt"))
        return PollStore(path)


def disable(store: PollStore, exc: BaseException) -> None:
    """Stop using a store that failed mid-run (logged once)."""
    with _STORES_LOCK:
        for path, known in list(_STORES.items()):
            if known is store:
                _STORES[path] = None
                logger.warning("the shared poll state %s failed (%s): the polling ceiling "
                               "now holds within this process only", path, exc)
