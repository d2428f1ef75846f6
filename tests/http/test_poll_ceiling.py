"""The once-a-minute read ceiling is the API's: shared by every client of one API and
credential, never charged for a read that did not leave, and honest in its logs.

Over the wire, against small loopback servers, on the transport's virtual clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import pytest
from aiohttp import web
from conftest import serve

from mirakl_cancel import (
    ActionTracker,
    ClientCredentials,
    ConnectError,
    MiraklConnectClient,
    PollPolicy,
    RetryPolicy,
    ServerError,
    StaticToken,
)
from mirakl_cancel._constants import READ_ABANDON_MARGIN
from mirakl_cancel._http.pollguard import Claim, PollGuard
from mirakl_cancel._http.pollstore import PollStore
from mirakl_cancel.testing import ManualClock

STATUS = {"id": "a1", "status": "PENDING"}


def status_app(reads: list[tuple[str, float]], clock: ManualClock | None = None,
               *, fail_first: int = 0) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        reads.append((request.match_info["id"], clock.monotonic() if clock else 0.0))
        if len(reads) <= fail_first:
            return web.json_response({"message": "boom"}, status=500)
        return web.json_response({**STATUS, "id": request.match_info["id"]})

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{id}", handler)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_clients_share_one_ceiling(clock: ManualClock) -> None:
    reads: list[tuple[str, float]] = []
    async with serve(status_app(reads, clock)) as url:
        first = MiraklConnectClient(clock=clock, auth=StaticToken("t-1"), base_url=url)
        second = MiraklConnectClient(clock=clock, auth=StaticToken("t-1"), base_url=url)
        other = MiraklConnectClient(clock=clock, auth=StaticToken("t-2"), base_url=url)
        async with first, second, other:
            assert second.poll_ready_in("a1") == 0.0
            await first.get_action_status("a1")
            # The second client knows about the first one's read...
            assert second.poll_ready_in("a1") == pytest.approx(60.0)
            assert second.poll_ready_in("a2") == 0.0
            # ...and another credential has its own ceiling.
            assert other.poll_ready_in("a1") == 0.0
            await second.get_action_status("a1")
            await other.get_action_status("a1")
    times = [at for _, at in reads]
    assert times[1] - times[0] >= 60.0
    assert times[2] == times[1]  # the other credential did not wait


async def test_client_credentials_share_by_client_id(clock: ManualClock) -> None:
    async with serve(status_app([], clock)) as url:
        def make(secret: str) -> MiraklConnectClient:
            auth = ClientCredentials("cid", secret, token_url=f"{url}/token")
            return MiraklConnectClient(clock=clock, auth=auth, base_url=url)

        a, b = make("s1"), make("s2")
        a.record_poll("a1", seconds_ago=10.0)
        assert b.poll_ready_in("a1") == pytest.approx(50.0)
        await a.close()
        await b.close()


async def test_record_poll_in_the_future_counts_as_now(clock: ManualClock) -> None:
    c = MiraklConnectClient(clock=clock, auth=StaticToken("t"), base_url="http://127.0.0.1:9")
    c.record_poll("a1", seconds_ago=-3600.0)  # a clock far ahead: "just read"
    assert c.poll_ready_in("a1") == pytest.approx(60.0)
    await c.close()


async def test_a_refused_connection_is_not_a_read(clock: ManualClock) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with MiraklConnectClient(clock=clock, auth=StaticToken("t"), base_url=url,
                                   retry=RetryPolicy(max_attempts=3, base_delay=0.01)) as c:
        with pytest.raises(ConnectError):
            await c.get_action_status("a1")
        assert c.poll_ready_in("a1") == 0.0
    # No 60 s waits between the attempts: only the backoff's small delays.
    assert all(delay < 1.0 for delay in clock.sleeps)


async def test_retry_log_states_the_real_wait(clock: ManualClock,
                                              caplog: pytest.LogCaptureFixture) -> None:
    reads: list[tuple[str, float]] = []
    async with serve(status_app(reads, clock, fail_first=1)) as url, MiraklConnectClient(
            clock=clock, auth=StaticToken("t"), base_url=url,
            retry=RetryPolicy(base_delay=0.01)) as c:
        with caplog.at_level(logging.INFO, logger="mirakl_cancel"):
            await c.get_action_status("a1")
    assert reads[1][1] - reads[0][1] >= 60.0
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and "in 60.00s" in retries[0], retries


async def test_a_read_that_cannot_wait_within_max_time_gives_up(clock: ManualClock) -> None:
    reads: list[tuple[str, float]] = []
    async with serve(status_app(reads, clock, fail_first=5)) as url, MiraklConnectClient(
            clock=clock, auth=StaticToken("t"), base_url=url,
            retry=RetryPolicy(max_time=30.0)) as c:
        with pytest.raises(ServerError):
            await c.get_action_status("a1")
    assert len(reads) == 1  # the guard's 60 s wait does not fit in 30 s: no silent wait


async def test_tracker_sees_reads_of_another_client(clock: ManualClock) -> None:
    reads: list[tuple[str, float]] = []
    async with serve(status_app(reads)) as url:
        direct = MiraklConnectClient(clock=clock, auth=StaticToken("t"), base_url=url)
        tracked = MiraklConnectClient(clock=clock, auth=StaticToken("t"), base_url=url)
        async with direct, tracked:
            direct.record_poll("a1")
            policy = PollPolicy(first_delay=0.0)
            async with ActionTracker(tracked, policy) as tracker:
                tracker.add("a1")
                tracker.add("a2")
                for _ in range(3000):
                    if reads:
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
                # a2 is read at once; a1 is held back by the other client's read.
                assert [action for action, _ in reads] == ["a2"]
                await tracker.close(drain=False)


def test_status_client_protocol_needs_no_transport() -> None:
    class Fake:
        min_poll_interval = 0.0

        def poll_ready_in(self, action_id: str) -> float:
            return 0.0

        def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
            pass

        async def get_action_status(self, action_id: str, *, retry: bool = True) -> Any:
            raise NotImplementedError

    ActionTracker(Fake())  # no `transport` attribute is needed


async def test_reads_are_spaced_from_the_end_of_the_previous_one(clock: ManualClock) -> None:
    starts: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        starts.append(clock.monotonic())
        await clock.advance(10.0)  # this answer takes 10 (virtual) seconds
        return web.json_response(STATUS)

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{id}", slow)
    async with serve(app) as url, MiraklConnectClient(clock=clock, auth=StaticToken("t"),
                                                      base_url=url) as c:
        await c.get_action_status("a1")
        assert c.poll_ready_in("a1") == pytest.approx(60.0)
        await c.get_action_status("a1")
    assert starts[1] - starts[0] >= 70.0


async def test_a_read_that_left_late_is_not_overtaken() -> None:
    """A read counts from when it leaves, not from when it was asked for: one that waited
    behind a busy client cannot be overtaken by another client's read of the same action
    (real time, on loopback: the arrivals the server saw are what count)."""
    arrivals: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()

    async def handler(request: web.Request) -> web.Response:
        key = request.match_info["id"]
        arrivals.append((key, loop.time()))
        if key == "slow":
            await asyncio.sleep(0.6)
        return web.json_response({**STATUS, "id": key})

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{id}", handler)
    interval = 0.3
    async with serve(app) as url, \
            MiraklConnectClient(auth=StaticToken("late"), base_url=url, max_concurrency=1,
                                min_poll_interval=interval) as busy, \
            MiraklConnectClient(auth=StaticToken("late"), base_url=url,
                                min_poll_interval=interval) as other:
        slow = asyncio.create_task(busy.get_action_status("slow"))
        await asyncio.sleep(0.05)
        late = asyncio.create_task(busy.get_action_status("a1"))  # behind the slow read
        await asyncio.sleep(0.1)
        await other.get_action_status("a1")
        await asyncio.gather(slow, late)
    times = [at for key, at in arrivals if key == "a1"]
    assert len(times) == 2 and times[1] - times[0] >= interval


async def test_a_read_in_flight_holds_the_next_until_it_ends(clock: ManualClock) -> None:
    """While a read is in flight the next one of the same action waits for its end (and
    looks again now and then), then the interval."""
    guard = PollGuard(60.0, clock=clock)
    claim = guard.try_claim("a1", 62.0)
    assert isinstance(claim, Claim)
    started = clock.monotonic()
    # In flight: not free, and looked at again soon rather than after the whole bound.
    assert guard.try_claim("a1", 62.0) == pytest.approx(guard.recheck)
    assert guard.ready_in("a1") == pytest.approx(122.0)
    await clock.sleep(5.0)
    guard.finish(claim, answered=True)
    assert guard.ready_in("a1") == pytest.approx(60.0)
    waiter = asyncio.create_task(guard.wait("a1"))
    await waiter
    assert clock.monotonic() - started == pytest.approx(65.0)
    # An abandoned read counts a little after it was given up.
    claim = guard.try_claim("a1", 62.0)
    assert isinstance(claim, Claim)
    guard.finish(claim, answered=False)
    assert guard.ready_in("a1") == pytest.approx(60.0 + READ_ABANDON_MARGIN)


def test_a_process_that_died_mid_read_holds_the_slot_until_its_bound(tmp_path: Any) -> None:
    """On disk: a claim never finished counts as a read at its bound (the attempt's own
    limit), so another process waits that long plus the interval, never less."""
    store = PollStore(tmp_path / "poll.sqlite3")
    other = PollStore(tmp_path / "poll.sqlite3")
    assert store.try_claim("scope", "a1", 60.0, 100.0, 5000.0, hold=62.0)[0] == 0.0
    # In flight: another process is refused (the row is in its future: "read now").
    assert other.try_claim("scope", "a1", 60.0, 130.0, 5030.0, hold=62.0)[0] > 0
    assert other.try_claim("scope", "a1", 60.0, 221.0, 5121.0, hold=62.0)[0] \
        == pytest.approx(1.0)
    assert other.try_claim("scope", "a1", 60.0, 222.0, 5122.0, hold=62.0)[0] == 0.0
    # Our record of a read never replaces another process's read in flight.
    store.record("scope", "a1", 0.0, 230.0, 5130.0)
    assert store.try_claim("scope", "a1", 60.0, 290.5, 5190.5)[0] > 0
    # Finishing our own claim replaces its bound with the end.
    assert store.try_claim("scope", "b1", 60.0, 100.0, 5000.0, hold=62.0)[0] == 0.0
    store.finish("scope", "b1", (5062.0, 162.0), 0.0, 101.0, 5001.0)
    assert other.try_claim("scope", "b1", 60.0, 161.0, 5061.0)[0] == 0.0
    store.close()
    other.close()


def test_a_read_whose_process_died_counts_as_ended_when_seen_gone(tmp_path: Any) -> None:
    """Same boot: a claim still in flight whose process is gone (SIGKILL mid-read) reached
    the server before it died: it counts as ended when another process sees that (plus the
    margin for bytes on their way), not at its whole bound."""
    import sqlite3
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = PollStore(tmp_path / "poll.sqlite3")
    assert store.try_claim("scope", "a1", 60.0, 100.0, 5000.0, hold=62.0)[0] == 0.0
    with sqlite3.connect(tmp_path / "poll.sqlite3") as db:
        db.execute("UPDATE reads SET pid = ?", (dead.pid,))
    # Seen gone at 110: it ended by 110 + the margin (a time ahead counts as "now" until
    # it has passed, so the wait is the interval, then the margin).
    assert store.try_claim("scope", "a1", 60.0, 110.0, 5010.0, hold=62.0)[0] == 60.0
    assert store.try_claim("scope", "a1", 60.0, 170.0, 5070.0, hold=62.0)[0] \
        == pytest.approx(READ_ABANDON_MARGIN)
    assert store.try_claim("scope", "a1", 60.0, 172.0, 5072.0, hold=62.0)[0] == 0.0
    store.close()


def test_an_earlier_poll_state_file_gains_the_pid_column(tmp_path: Any) -> None:
    import sqlite3
    import time

    path = tmp_path / "poll.sqlite3"
    wall, mono = time.time(), time.monotonic()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE reads (scope TEXT NOT NULL, key TEXT NOT NULL, wall REAL NOT "
                   "NULL, boot TEXT, mono REAL NOT NULL, PRIMARY KEY (scope, key)) WITHOUT ROWID")
        db.execute("INSERT INTO reads VALUES ('scope', 'a1', ?, NULL, ?)", (wall, mono))
    store = PollStore(path)
    # The earlier version's read stands; a claim in flight is written with its pid.
    assert store.try_claim("scope", "a1", 60.0, mono + 30, wall + 30)[0] == pytest.approx(30.0)
    assert store.try_claim("scope", "a2", 60.0, mono + 30, wall + 30, hold=5.0)[0] == 0.0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT pid FROM reads WHERE key = 'a2'").fetchone() == (os.getpid(),)
    store.close()
