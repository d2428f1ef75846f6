"""The real PostgreSQL the fleet tests run against: started, isolated, not as root."""

from __future__ import annotations

import os
from pathlib import Path

import _pg
import psycopg


def test_server_answers_on_loopback_with_its_own_clock(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT inet_server_addr()::text, clock_timestamp() <= "
                           "clock_timestamp(), current_setting('server_version_num')::int"
                           ).fetchone()
    assert row is not None
    address, clock_runs, version = row
    assert address.startswith("127.0.0.1")
    assert clock_runs is True
    assert version >= 120000


def test_each_test_gets_an_empty_schema(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE mine (x int)")  # lands in this test's schema
        row = conn.execute("SELECT current_schema(), count(*) FROM pg_tables "
                           "WHERE schemaname = current_schema()").fetchone()
    assert row is not None
    assert row[0].startswith("t_")
    assert row[1] == 1


def test_the_server_runs_unprivileged(pg_server: str) -> None:
    with psycopg.connect(pg_server) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    data = Path(row[0])
    if data.exists():  # this machine's server (a remote DSN's data directory is not here)
        assert data.stat().st_uid != 0


def test_server_binaries_are_found() -> None:
    bindir = _pg.find_bindir()
    if bindir is not None:
        assert (bindir / "initdb").exists()
        assert os.access(bindir / "pg_ctl", os.X_OK)


def test_stop_of_nothing_is_quiet(tmp_path: Path) -> None:
    _pg.stop(tmp_path)  # no server there: nothing to do, no error
