"""PostgresJobStore against a real PostgreSQL: one job, several workers.

Each "worker" here is a store with its own connections and worker id, as two processes
would have: creation once, claims that never overlap, leases that lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from mirakl_cancel import PostgresStore
from mirakl_cancel._stores.base import JournalError, RequestState
from mirakl_cancel._stores.pgjob import DIED_WHILE_SENDING, JobMismatchError, PostgresJobStore
from mirakl_cancel._stores.postgres import SCHEMA_VERSION
from mirakl_cancel._stores.sqlite import PlannedRow, PlanStaging

ORDERS = 30


def line(n: int) -> str:
    return json.dumps({"quantity": 1, "reason": "OUT_OF_STOCK",
                       "price": {"amount": "1.00", "currency": "EUR"},
                       "order_line_id": f"L{n}"})


@pytest.fixture
def staging() -> Iterator[PlanStaging]:
    with PlanStaging() as plan:
        for n in range(1, ORDERS + 1):
            plan.add_valid(n, n + 1, f"O{n}", line(n), 1, Decimal("1.00"), "EUR")
        plan.add_invalid(PlannedRow(ORDERS + 1, ORDERS + 2, "O-bad", None, None, None,
                                    ("quantity: missing",)))
        yield plan


Worker = Callable[..., "asyncio.Future[PostgresJobStore]"]


@pytest.fixture
async def workers(pg_dsn: str) -> AsyncIterator[Callable[..., Any]]:
    """Makes workers of one job name (each its own PostgresStore: its own worker id)."""
    made: list[tuple[PostgresStore, PostgresJobStore]] = []
    name = f"job-{len(pg_dsn)}-{id(made)}"

    async def make(**kwargs: Any) -> PostgresJobStore:
        store = PostgresStore(pg_dsn)
        job = PostgresJobStore(store, kwargs.pop("name", name), **kwargs)
        await job.open()
        made.append((store, job))
        return job

    yield make
    for store, job in made:
        await job.aclose()
        await store.close()


async def create(job: PostgresJobStore, staging: PlanStaging, sha: str = "abc") -> bool:
    return await job.create(staging, input_path="/in.csv", input_sha256=sha,
                            input_format="csv", base_url="http://127.0.0.1:1",
                            max_lines=None, options={"skip_invalid": True})


async def test_the_job_is_created_once_and_joined_with_the_same_file(
        workers: Callable[..., Any], staging: PlanStaging) -> None:
    one, two = await workers(), await workers()
    assert await one.job() is None
    created = await asyncio.gather(create(one, staging), create(two, staging))
    assert sorted(created) == [False, True]
    info = await two.job()
    assert info is not None and info.input_sha256 == "abc"
    two.check_same_input(info, "abc")
    with pytest.raises(JobMismatchError, match="another file"):
        two.check_same_input(info, "def")
    counts = await one.counts()
    assert counts[RequestState.PENDING] == ORDERS and sum(counts.values()) == ORDERS
    rows = [row async for row in one.rows()]
    assert [r.row_number for r in rows] == list(range(1, ORDERS + 2))
    assert rows[0].order_line_id == "L1" and rows[0].quantity == 1
    assert rows[0].request is not None and rows[0].request.key == "O1#1"
    assert rows[-1].request is None and rows[-1].errors == ("quantity: missing",)
    assert await one.skipped_rows() == 1  # the closing count's rows no request covers
    assert await one.outcome_counts() == [(RequestState.PENDING, None, ORDERS, ORDERS)]
    assert (await one.request("O2#2")).body.startswith('{"cancelations":[')
    with pytest.raises(KeyError):
        await one.request("nope#1")
    assert [r.key async for r in one.requests(orders={"O3", "O4"}, bodies=False)] == [
        "O3#3", "O4#4"]


async def test_claims_by_two_workers_never_overlap(workers: Callable[..., Any],
                                                   staging: PlanStaging) -> None:
    one, two = await workers(claim_batch=4), await workers(claim_batch=3)
    await create(one, staging)
    await one.join()
    await two.join()

    async def drain(job: PostgresJobStore) -> list[str]:
        keys = []
        async for request in job.claims():
            keys.append(request.key)
            # Sent and answered: nothing left for this worker to hold.
            await job.mark_sending(request.key)
            await job.mark_done(request.key, "SUCCEEDED")
            await asyncio.sleep(0)
        return keys

    first, second = await asyncio.gather(drain(one), drain(two))
    assert not set(first) & set(second)
    assert len(first) + len(second) == ORDERS
    assert first and second
    assert (await one.counts())[RequestState.DONE] == ORDERS


async def test_a_lapsed_worker_leaves_sends_uncertain_and_claims_to_the_others(
        workers: Callable[..., Any], staging: PlanStaging, pg_dsn: str) -> None:
    dead, alive = await workers(claim_batch=5, lease=30), await workers(claim_batch=50)
    await create(dead, staging)
    await dead.join()
    await alive.join()
    claims = dead.claims()
    held = [await anext(claims) for _ in range(5)]
    await dead.mark_sending(held[0].key)             # mid-POST when it died
    await dead.mark_sending(held[1].key)
    await dead.mark_accepted(held[1].key, "A1")      # tracked when it died
    # The other worker may not send what the first one holds.
    with pytest.raises(JournalError, match="claimed by another worker"):
        await alive.mark_sending(held[2].key)
    # The first worker falls silent: its lease lapses on the database clock.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE mirakl_cancel_job_workers SET lease_until = clock_timestamp() "
                     "- interval '1 second' WHERE worker = %s", (dead.worker_id,))
    assert await alive.mark_interrupted_sends("ignored") == [held[0].key]
    row = await alive.request(held[0].key)
    assert row.state is RequestState.UNCERTAIN and row.errors == (DIED_WHILE_SENDING,)
    # Its unsent claims and its accepted action go to the others.
    taken = []
    async for request in alive.claims():
        taken.append(request)
        if request.state is RequestState.ACCEPTED:
            assert request.action_id == "A1"
            await alive.mark_done(request.key, "SUCCEEDED", status="COMPLETED")
        else:
            await alive.mark_sending(request.key)
            await alive.mark_done(request.key, "SUCCEEDED")
    keys = {r.key for r in taken}
    assert {h.key for h in held[1:]} <= keys and held[0].key not in keys
    assert len(keys) == ORDERS - 1
    # The silent worker can send nothing more, even if it comes back.
    with pytest.raises(JournalError):
        await dead.mark_sending(held[3].key)
    counts = await alive.counts()
    assert counts[RequestState.DONE] == ORDERS - 1 and counts[RequestState.UNCERTAIN] == 1


async def test_a_closing_worker_hands_its_claims_back(workers: Callable[..., Any],
                                                     staging: PlanStaging) -> None:
    one, two = await workers(claim_batch=10), await workers(claim_batch=100)
    await create(one, staging)
    await one.join()
    await two.join()
    claims = one.claims()
    first = await anext(claims)
    await one.mark_sending(first.key)
    await claims.aclose()
    await one.aclose()
    row = await two.request(first.key)
    assert row.state is RequestState.UNCERTAIN and "stopped" in row.errors[0]
    assert len([r async for r in two.claims()]) == ORDERS - 1


async def test_a_lease_the_heartbeat_cannot_renew_stops_guarding_marks(
        workers: Callable[..., Any], staging: PlanStaging, pg_dsn: str) -> None:
    job = await workers(lease=0.3)
    await create(job, staging)
    await job.join()
    claims = job.claims()
    request = await anext(claims)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM mirakl_cancel_job_workers WHERE worker = %s",
                     (job.worker_id,))
    while job._failed is None:  # noqa: ASYNC110 - the heartbeat finds its lease gone
        await asyncio.sleep(0.05)
    with pytest.raises(JournalError, match="lease"):
        await job.mark_sending(request.key)
    # What it had claimed already is handed out (its marks are refused); then it ends.
    assert len([r async for r in claims]) == job.claim_batch - 1


async def test_closing_is_bounded_even_when_steps_ignore_their_cancel(
        workers: Callable[..., Any], staging: PlanStaging,
        caplog: pytest.LogCaptureFixture) -> None:
    """The hang of a finished worker: its heartbeat's cancel was swallowed (Python < 3.12's
    `wait_for` returns the result when the cancel lands as the statement completes), so
    it beat on and `aclose` waited for it for ever. Now the heartbeat ends on `_closed`,
    and every step of closing is bounded (a WARNING says which one was given up)."""
    job = await workers(lease=0.3)
    await create(job, staging)
    await job.join()
    real = job._fetch
    renewing = asyncio.Event()

    async def swallowing(doing: str, sql: str, params: dict[str, Any],
                         **kwargs: Any) -> list[tuple[Any, ...]]:
        if doing != "renewing the lease":
            return await real(doing, sql, params, **kwargs)
        renewing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return [(1,)]  # the cancel swallowed, as wait_for did
        return []

    released = asyncio.Event()

    async def stuck() -> None:  # a step that never ends, whatever is done to it
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    job._fetch = swallowing  # type: ignore[method-assign]
    job._leave = stuck  # type: ignore[method-assign]
    await renewing.wait()
    job.store.timeout = 0.2
    await job.aclose()
    assert "leaving the job took more than" in caplog.text
    released.set()
    heartbeat = job._heartbeat
    assert heartbeat is not None
    await asyncio.wait({heartbeat}, timeout=5)
    assert heartbeat.done()  # it saw `_closed` after its swallowed cancel


async def test_reconciliation_is_one_worker_at_a_time(workers: Callable[..., Any],
                                                      staging: PlanStaging) -> None:
    one, two = await workers(idle=0.02), await workers(idle=0.02)
    await create(one, staging)
    await one.join()
    await two.join()
    assert await one.reconcile_turn()
    waiting = asyncio.ensure_future(two.reconcile_turn())
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await one.end_reconcile_turn(complete=True)
    assert await waiting is False  # the job is reconciled already
    await two.end_reconcile_turn(complete=False)


async def test_schema_version_counts_the_job_tables(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        assert await store.schema_version() == SCHEMA_VERSION == 3


def test_job_names_are_checked(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="job name"):
        PostgresJobStore(PostgresStore(pg_dsn), "")
    with pytest.raises(ValueError, match="lease"):
        PostgresJobStore(PostgresStore(pg_dsn), "x", lease=0)
