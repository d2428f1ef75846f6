"""Shared test fixtures: a manual clock, mocked HTTP, a real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import _pg
import pytest
from aiohttp import web
from aioresponses import aioresponses

from mirakl_cancel._http import pollguard as _pollguard
from mirakl_cancel._http import pollstore as _pollstore
from mirakl_cancel.testing import ManualClock


@pytest.fixture(autouse=True)
def _isolated_poll_state(monkeypatch: pytest.MonkeyPatch,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Each test starts with no reads on record: the poll guards' process-wide logs
    are shared by every client of an API and credential, and kept on disk for other
    processes, so without this one test's reads would hold back the next test's (same
    mocked URL, same token), and tests would write to the user's cache directory. The
    environment variable reaches the CLI processes the tests start, too."""
    monkeypatch.setattr(_pollguard, "_SHARED", weakref.WeakValueDictionary())
    monkeypatch.setenv("MIRAKL_CANCEL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    stores: dict[Any, Any] = {}
    monkeypatch.setattr(_pollstore, "_STORES", stores)
    yield
    for store in stores.values():
        if store is not None:
            store.close()


@pytest.fixture
def clock() -> ManualClock:
    """A clock whose sleeps take no time: give it to the client (`clock=clock`), and its
    60-second rules and backoff delays run instantly while the event loop (aiohttp's
    socket timeouts, the test servers) keeps real time. `clock.sleeps` lists the waits."""
    return ManualClock(auto_advance=True)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with aioresponses() as m:
        yield m


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on a free loopback port for the block; yields its root URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The DSN of a real PostgreSQL: `.ci/run`'s (MIRAKL_CANCEL_TEST_PG), or one started here.

    Tests that need it skip, saying why, only when no server can be started on this
    machine, and never in CI (CI=true), where a missing server is a failure.
    """
    given = os.environ.get(_pg.ENV)
    if given:
        yield given
        return
    directory = tempfile.mkdtemp(prefix="mirakl-pg-")
    try:
        dsn = _pg.start(directory)
    except _pg.PgUnavailable as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs PostgreSQL for the fleet tests: {exc}")
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
    try:
        yield dsn
    finally:
        _pg.stop(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: str) -> Iterator[str]:
    """A DSN whose tables land in a fresh, empty schema of their own, dropped after the test.

    A schema (through search_path) rather than a database: CREATE DATABASE costs most of
    a second here, a schema next to nothing.
    """
    import psycopg  # in the `test` extra: a missing driver is a failure, not a skip

    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
    separator = "&" if "?" in pg_server else "?"
    try:
        yield f"{pg_server}{separator}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture(autouse=True)
def _restore_library_logger() -> Iterator[None]:
    """Undo what an in-process `cli.main()` does to the `mirakl_cancel` logger.

    The CLI installs its own handler and stops propagation; left so, every later test
    that reads the library's logs through `caplog` would see nothing (order-dependent).
    """
    import logging

    logger = logging.getLogger("mirakl_cancel")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])
