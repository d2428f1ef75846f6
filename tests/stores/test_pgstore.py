"""PostgresStore against a real PostgreSQL: schema, errors, and the shared pacing rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest

from mirakl_cancel import PostgresStore, RateLimitError, StoreError
from mirakl_cancel._constants import READ_ABANDON_MARGIN
from mirakl_cancel._http.pacing import FleetPacing
from mirakl_cancel._stores.postgres import SCHEMA_VERSION


@pytest.fixture
async def stores(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one database: two workers, each with its own connection."""
    async with PostgresStore(pg_dsn) as one, PostgresStore(pg_dsn) as two:
        yield one, two


async def test_schema_is_created_once_and_versioned(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as one, PostgresStore(pg_dsn) as two:
        assert await one.schema_version() == SCHEMA_VERSION
        assert await two.schema_version() == SCHEMA_VERSION
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM mirakl_cancel_schema").fetchone() == (1,)


async def test_a_newer_schema_is_refused(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        await store.schema_version()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE mirakl_cancel_schema SET version = version + 1")
    with pytest.raises(StoreError, match="upgrade"):
        await PostgresStore(pg_dsn).connection()


async def test_errors_and_repr_never_show_the_password(pg_dsn: str) -> None:
    wrong = pg_dsn.replace("mirakl:", "mirakl:x", 1)
    password = wrong.split(":")[2].split("@")[0]
    store = PostgresStore(wrong, timeout=5)
    assert password not in repr(store)
    with pytest.raises(StoreError) as caught:
        await store.connection()
    assert password not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_unreachable_store_fails_fast_with_store_error(unused_tcp_port: int) -> None:
    store = PostgresStore(f"postgresql://u:secret@127.0.0.1:{unused_tcp_port}/db", timeout=2)
    with pytest.raises(StoreError, match="connecting"):
        await store.fleet_pacing("k").pace(10.0, 60.0)


def test_only_postgresql_uris() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        PostgresStore("sqlite:///tmp/x")
    with pytest.raises(ValueError, match="timeout"):
        PostgresStore("postgresql://localhost/x", timeout=0)


async def _slot_times(store: PostgresStore, key: str, rate: float, count: int) -> list[float]:
    pacing = store.fleet_pacing(key)
    times = []
    for _ in range(count):
        await pacing.pace(rate, 60.0)
        times.append(asyncio.get_running_loop().time())
    return times


async def test_slots_are_spaced_across_workers(
        stores: tuple[PostgresStore, PostgresStore]) -> None:
    one, two = stores
    rate = 40.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    a, b = await asyncio.gather(_slot_times(one, "k", rate, 6), _slot_times(two, "k", rate, 6))
    # 12 slots at 40/s from one schedule take at least 11/40 s, whichever worker took them.
    assert max(a + b) - started >= 11 / rate - 0.01
    # A different credential has its own schedule.
    other = await _slot_times(one, "other", rate, 1)
    assert other[0] - loop.time() <= 0


async def test_a_429_pause_holds_every_worker(
        stores: tuple[PostgresStore, PostgresStore]) -> None:
    one, two = stores
    loop = asyncio.get_running_loop()
    await one.fleet_pacing("k").pause(0.3)
    started = loop.time()
    await two.fleet_pacing("k").pace(None, 60.0)   # no rate limit: still waits the pause
    await two.fleet_pacing("k").pace(100.0, 60.0)
    assert loop.time() - started >= 0.25
    await one.fleet_pacing("k").pause(600)
    with pytest.raises(RateLimitError, match="fleet"):
        await two.fleet_pacing("k").pace(100.0, 300.0)
    with pytest.raises(RateLimitError):
        await two.fleet_pacing("k").pace(None, 300.0)


async def reserve(pacing: FleetPacing, resource: str, interval: float,
                  hold: float = 5.0) -> object:
    """Reserve a read the way the transport does: try, and while refused, wait as told."""
    while True:
        claim = await pacing.claim_read(resource, interval, hold)
        if claim is not None:
            return claim
        left, in_flight = await pacing.read_ready_in(resource, interval)
        await asyncio.sleep(max(min(left, 0.02) if in_flight else left, 0.005))


async def test_a_read_is_reserved_for_the_whole_fleet(
        stores: tuple[PostgresStore, PostgresStore], pg_dsn: str) -> None:
    one, two = stores
    loop = asyncio.get_running_loop()
    claim = await reserve(one.fleet_pacing("k"), "action:A", 0.3)
    # In flight: the slot is held (for the attempt's bound), whatever the interval.
    assert await two.fleet_pacing("k").claim_read("action:A", 0.3, 5.0) is None
    left, in_flight = await two.fleet_pacing("k").read_ready_in("action:A", 0.3)
    assert in_flight and 5.0 < left <= 5.3
    await asyncio.sleep(0.05)
    await one.fleet_pacing("k").end_read(claim, sent=True)
    ended = loop.time()
    second = await reserve(two.fleet_pacing("k"), "action:A", 0.3)
    # Counted from the end of the first read, on the database clock, not from its bound.
    assert 0.25 <= loop.time() - ended < 2.0
    await two.fleet_pacing("k").end_read(second, sent=True)
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT resource, last_read > previous + interval '0.3 s' "
                            "FROM mirakl_cancel_reads").fetchall()
    assert rows == [("action:A", True)]


async def test_a_read_whose_worker_died_holds_its_slot_until_its_bound(
        stores: tuple[PostgresStore, PostgresStore]) -> None:
    one, two = stores
    loop = asyncio.get_running_loop()
    started = loop.time()
    await reserve(one.fleet_pacing("k"), "action:K", 0.3, hold=0.5)  # never ended
    await reserve(two.fleet_pacing("k"), "action:K", 0.3)
    # Its bound (0.5 s), then the interval: the server may have seen it at the bound.
    assert loop.time() - started >= 0.75


async def test_an_abandoned_read_counts_a_little_after_it_was_given_up(
        stores: tuple[PostgresStore, PostgresStore], pg_dsn: str) -> None:
    one, _ = stores
    claim = await reserve(one.fleet_pacing("k"), "action:T", 0.3)
    await one.fleet_pacing("k").end_read(claim, sent=True, answered=False)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT extract(epoch FROM last_read - clock_timestamp()) "
                           "FROM mirakl_cancel_reads").fetchone()
    assert row is not None and READ_ABANDON_MARGIN - 1 < float(row[0]) <= READ_ABANDON_MARGIN


async def test_a_read_that_never_left_gives_its_reservation_back(
        stores: tuple[PostgresStore, PostgresStore], pg_dsn: str) -> None:
    one, two = stores
    first = await reserve(one.fleet_pacing("k"), "action:B", 3600)
    await one.fleet_pacing("k").end_read(first, sent=False)   # a fresh resource: row gone
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM mirakl_cancel_reads").fetchone() == (0,)
    # Read, then a refused attempt: the earlier read stands.
    read = await reserve(one.fleet_pacing("k"), "action:B", 0, hold=0)
    await one.fleet_pacing("k").end_read(read, sent=True)
    refused = await reserve(one.fleet_pacing("k"), "action:B", 0, hold=0)
    # Meanwhile another worker reads for real: the refused attempt must not undo that.
    other = await reserve(two.fleet_pacing("k"), "action:B", 0, hold=0)
    await one.fleet_pacing("k").end_read(refused, sent=False)
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute("SELECT last_read FROM mirakl_cancel_reads").fetchone()
    assert row is not None and row[0] == other.ours  # type: ignore[attr-defined]


async def test_the_transport_releases_a_read_only_when_it_never_left(
        pg_dsn: str, unused_tcp_port: int) -> None:
    """Over the wire: a refused connection gives the fleet's reservation back (the next
    read may go at once); a read the server took and then dropped keeps it."""
    from aiohttp import web
    from conftest import serve

    from mirakl_cancel import MiraklConnectClient, RetryPolicy, StaticToken
    from mirakl_cancel.errors import ConnectError, TransportError

    async def drop(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # the request arrived; no answer
        return web.Response()

    app = web.Application()
    app.router.add_get("/{tail:.*}", drop)
    once = RetryPolicy(max_attempts=1)
    async with PostgresStore(pg_dsn) as store:
        async with MiraklConnectClient(auth=StaticToken("t"), store=store, retry=once,
                                       base_url=f"http://127.0.0.1:{unused_tcp_port}",
                                       min_poll_interval=0.05) as refused:
            with pytest.raises(ConnectError):
                await refused.get_action_status("A-refused")
        async with serve(app) as url, MiraklConnectClient(
                auth=StaticToken("t"), store=store, retry=once, base_url=url,
                min_poll_interval=0.05) as dropped:
            with pytest.raises(TransportError):
                await dropped.get_action_status("A-dropped")
    with psycopg.connect(pg_dsn) as conn:
        resources = [r[0] for r in conn.execute("SELECT resource FROM mirakl_cancel_reads")]
    assert resources == ["action:A-dropped"]
