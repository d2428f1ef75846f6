"""A new job's plan is journaled in chunks while its first requests are sent (schema 4).

What must hold: the chunked plan is the plan (same requests, bodies, rows); a job
stopped before the last chunk (SIGKILL, SIGINT) is planned on when resumed, and no
request is sent twice or left out; journals of schema 3 open as complete plans.
"""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import SCALE, cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel._jobs.job import JobOptions, _open_job, _stage_input, _start_job
from mirakl_cancel._stores import sqlite as journal_module
from mirakl_cancel._stores.sqlite import (
    SCHEMA_VERSION,
    Journal,
    JournalError,
    PlanStaging,
    RequestState,
    SqliteStore,
)
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

HEADER = ["order_id", "order_line_id", "quantity", "reason", "price_amount", "price_currency",
          "shipping_amount"]


def _input(path: Path, orders: int, *, bad: int | None = None) -> None:
    """`orders` orders of 1-3 lines; one order's lines apart from the others (so the plan
    is the sorted one, not the file order); row `bad` invalid."""
    rows = []
    for n in range(orders):
        for line in range(n % 3 + 1):
            rows.append([f"O{n}", f"O{n}-{line}", str(line + 1), "OUT_OF_STOCK",
                         f"{n % 50 + 1}.25", "EUR", "0"])
    rows.append(["O1", "O1-late", "1", "DEFECT", "2.00", "EUR", "0.5"])
    if bad is not None:
        rows[bad - 1][2] = "-1"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([HEADER, *rows])


def _staged(source: Path, *, skip_invalid: bool = False) -> PlanStaging:
    staging = PlanStaging()
    options = JobOptions(input_path=source, base_url="u", skip_invalid=skip_invalid)
    assert _stage_input(source, options, staging, io.StringIO()) is not None
    return staging


def _contents(journal: Journal) -> tuple[list[tuple[str, str]], list[tuple[int, str | None]]]:
    return ([(r.key, r.body) for r in journal.requests()],
            [(r.row_number, r.request.key if r.request else None) for r in journal.rows()])


def _new(journal: Journal, staging: PlanStaging, max_lines: int | None = None,
         first: int | None = None) -> journal_module.JobPlan:
    return journal.start_plan(staging, input_path="in.csv", input_sha256="x",
                              input_format="csv", base_url="u", max_lines=max_lines,
                              first=first)


@pytest.mark.parametrize("max_lines", [None, 2])
def test_a_plan_in_chunks_is_the_whole_plan(tmp_path: Path, max_lines: int | None) -> None:
    source = tmp_path / "in.csv"
    _input(source, 40, bad=5)
    with _staged(source, skip_invalid=True) as staging, \
            Journal.open(tmp_path / "whole.sqlite") as whole:
        total = whole.create_job_from_staging(
            staging, input_path="in.csv", input_sha256="x", input_format="csv",
            base_url="u", max_lines=max_lines)
        expected = _contents(whole)
        assert len(expected[0]) == total and whole.job().plan_complete  # type: ignore[union-attr]
    with _staged(source, skip_invalid=True) as staging, \
            Journal.open(tmp_path / "chunks.sqlite") as journal:
        plan = _new(journal, staging, max_lines, first=3)
        assert (plan.planned, plan.total, plan.complete) == (3, total, False)
        job = journal.job()
        assert job is not None and not job.plan_complete
        # The first chunk is there whole (requests and their rows); so is the invalid row.
        requests, rows = _contents(journal)
        assert requests == expected[0][:3]
        assert {row for row, _ in rows} == {5} | {
            n for key, _ in requests for n in map(int, key.rpartition("#")[2].split(","))}
        while not journal.plan_chunk(plan, 7):
            pass
        assert _contents(journal) == expected
        assert journal.job().plan_complete  # type: ignore[union-attr]


def test_a_partial_plan_is_continued_from_the_same_input(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    _input(source, 30)
    with _staged(source) as staging, Journal.open(tmp_path / "whole.sqlite") as whole:
        whole.create_job_from_staging(staging, input_path="in.csv", input_sha256="x",
                                      input_format="csv", base_url="u", max_lines=None)
        expected = _contents(whole)
    path = tmp_path / "j.sqlite"
    with _staged(source) as staging, Journal.open(path) as journal:
        plan = _new(journal, staging, first=4)
        journal.plan_chunk(plan, 5)
    with _staged(source) as staging, Journal.open(path) as journal:
        plan = journal.continue_plan(staging, None)
        assert plan.planned == 9 and not plan.complete
        journal.finish_plan(plan)
        assert _contents(journal) == expected
    # Another input (or other options) plans differently: refused, nothing added.
    other = tmp_path / "other.csv"
    _input(other, 31)
    with _staged(source) as staging, Journal.open(tmp_path / "k.sqlite") as journal:
        _new(journal, staging, first=20)
        with _staged(other) as different, pytest.raises(JournalError, match="no longer"):
            journal.continue_plan(different, 1)
        assert len(journal.requests()) == 20


def test_a_chunk_rolled_back_is_journaled_again(tmp_path: Path) -> None:
    """A store's batch may be rolled back and run again (or fail): the chunk in it is
    written again, not skipped, so the plan has no gap."""
    source = tmp_path / "in.csv"
    _input(source, 20)
    with _staged(source) as staging, Journal.open(tmp_path / "whole.sqlite") as whole:
        whole.create_job_from_staging(staging, input_path="in.csv", input_sha256="x",
                                      input_format="csv", base_url="u", max_lines=None)
        expected = _contents(whole)
    with _staged(source) as staging, Journal.open(tmp_path / "j.sqlite") as journal:
        plan = _new(journal, staging, first=2)
        def failing_batch(size: int) -> None:
            with journal.transaction():
                journal.plan_chunk(plan, size)
                raise RuntimeError("the batch around it failed")

        for size in (3, 40):  # the last chunk too
            with pytest.raises(RuntimeError):
                failing_batch(size)
            journal.plan_chunk(plan, size)
        assert plan.complete and _contents(journal) == expected
        assert journal.job().plan_complete  # type: ignore[union-attr]
        # A journal that lost more than the last chunk is not guessed at.
        journal._db.execute("DELETE FROM requests WHERE seq > 5")
        plan.complete = False
        with pytest.raises(JournalError, match="not the ones it journaled"):
            journal.plan_chunk(plan, 3)


def test_a_failed_chunk_stops_the_plan(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    _input(source, 10)
    with _staged(source) as staging, Journal.open(tmp_path / "j.sqlite") as journal:
        plan = _new(journal, staging, first=2)
        plan.total += 1  # a count the groups do not have
        with pytest.raises(JournalError, match="does not have the requests"):
            journal.finish_plan(plan)
        with pytest.raises(JournalError, match="failed earlier"):
            journal.plan_chunk(plan, 5)


async def test_the_store_streams_requests_while_the_plan_is_journaled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_PLAN_CHUNK", 3)
    monkeypatch.setattr(journal_module, "_CHUNK", 4)  # reads of 4: they catch up with it
    source = tmp_path / "in.csv"
    _input(source, 50)
    with _staged(source) as staging, Journal.open(tmp_path / "j.sqlite") as journal:
        plan = _new(journal, staging, first=1)
        store = SqliteStore(journal)
        try:
            planning = store.plan_rest(plan)
            seen = [request.seq async for request in store.requests()]
            assert planning.done() and plan.complete
            assert seen == list(range(plan.total))
            await planning
        finally:
            await store.aclose()


async def test_a_failing_plan_ends_the_stream_where_it_stopped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_PLAN_CHUNK", 3)
    source = tmp_path / "in.csv"
    _input(source, 20)
    with _staged(source) as staging, Journal.open(tmp_path / "j.sqlite") as journal:
        plan = _new(journal, staging, first=2)
        plan.total += 1
        store = SqliteStore(journal)
        try:
            planning = store.plan_rest(plan)
            seen = [request.seq async for request in store.requests()]
            with pytest.raises(JournalError):
                await planning
            assert seen == list(range(plan.planned)) and not plan.complete
        finally:
            await store.aclose()
    await asyncio.sleep(0)


def test_a_schema_3_journal_opens_as_a_complete_plan(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    _input(source, 5)
    path = tmp_path / "in.csv.journal.sqlite"
    journal, _, _ = _open_job(JobOptions(input_path=source, base_url="u", quiet=True),
                              io.StringIO(), io.StringIO())
    assert journal is not None
    expected = _contents(journal)
    journal.close()
    # Schema 3 is schema 4 without the column (and said so in its job record).
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE job DROP COLUMN plan_complete")
    db.execute("UPDATE job SET schema_version = 3")
    db.commit()
    db.close()
    with Journal.open(path) as reopened:
        job = reopened.job()
        assert job is not None and job.plan_complete
        assert _contents(reopened) == expected
    db = sqlite3.connect(path)
    assert db.execute("SELECT schema_version FROM job").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()


def _started(source: Path) -> tuple[Journal, bool, journal_module.JobPlan, str]:
    """A job started on `source`, whose plan is not complete yet; and what it said."""
    err = io.StringIO()
    journal, resumed, _, plan = _start_job(JobOptions(input_path=source, base_url="u"), err,
                                           io.StringIO())
    assert journal is not None and plan is not None
    return journal, resumed, plan, err.getvalue()


def test_a_new_job_returns_the_rest_of_its_plan(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_FIRST_PLAN_CHUNK", 4)
    source = tmp_path / "in.csv"
    _input(source, 12)
    journal, resumed, plan, said = _started(source)
    try:
        assert not resumed and plan.planned == 4
        assert f"({plan.total} request(s) for 25 row(s))" in said
        assert len(journal.requests()) == 4
    finally:
        plan.staging.close()
        journal.close()
    # Resumed before the rest was journaled: the input is checked again, the plan goes on.
    journal, resumed, plan, said = _started(source)
    try:
        assert resumed and "checking" in said and plan.planned == 4
        journal.finish_plan(plan)
        assert len(journal.requests()) == plan.total
    finally:
        plan.staging.close()
        journal.close()


def test_a_partial_plan_of_a_changed_input_is_refused(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "_FIRST_PLAN_CHUNK", 2)
    source = tmp_path / "in.csv"
    _input(source, 6)
    journal, _, plan, _ = _started(source)
    plan.staging.close()
    journal.close()
    _input(source, 7)
    err = io.StringIO()
    journal, _, code, plan = _start_job(
        JobOptions(input_path=source, base_url="u", force=True), err, io.StringIO())
    assert journal is None and plan is None and code == 2
    assert "plan is not complete" in err.getvalue()


# --- the CLI, stopped while it plans ------------------------------------------------------

#: A `mirakl-cancel` process that journals its plan 2 requests at a time, slowly until a
#: request was sent, and then stops itself (the signal given), its plan half done.
_STOPPING = textwrap.dedent("""
    import os, signal, sys, time
    import mirakl_cancel._stores.sqlite as journal_module
    from mirakl_cancel.cli import main

    journal_module._FIRST_PLAN_CHUNK = 2
    journal_module._PLAN_CHUNK = 2
    plan_chunk = journal_module.Journal.plan_chunk
    stopped, marked = [], []

    def stopping(self, plan, limit):
        # A chunk runs in the writer's batch, whose marks are not committed yet: the stop
        # comes at the chunk after the one that first saw a mark, once that batch (its
        # marks with it) has committed.
        if not stopped:
            if marked:
                stopped.append(plan.planned)
                os.kill(os.getpid(), int(sys.argv[1]))
            elif self._db.execute(
                    "SELECT COUNT(*) FROM requests WHERE state != 'PENDING'").fetchone()[0]:
                marked.append(plan.planned)
            else:
                time.sleep(0.1)  # the writer thread: the marks come between chunks
        return plan_chunk(self, plan, limit)

    journal_module.Journal.plan_chunk = stopping
    sys.exit(main(sys.argv[2:]))
""")


def _stopped_run(sim: ThreadedSimulator, tmp_path: Path, signum: int
                 ) -> tuple[Path, Path, int, list[str], subprocess.CompletedProcess[str]]:
    orders = sim.generate_orders(60, (1, 3), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    n_rows = write_csv(source, orders)
    report = tmp_path / "report.jsonl"
    args = ["run", str(source), "--report", str(report), "--concurrency", "2",
            *poll_flags(SCALE)]
    result = subprocess.run([sys.executable, "-c", _STOPPING, str(int(signum)), *args],
                            env=env_for(sim), capture_output=True, text=True, timeout=60,
                            check=False)
    return source, report, n_rows, args, result


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    # Answers take 5 ms: the job is still sending while its plan is journaled.
    with ThreadedSimulator(SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0),
                                           latency=(5.0, 5.0), seed=11)) as simulator:
        yield simulator


def _plan_state(source: Path) -> tuple[bool, dict[RequestState, int]]:
    with Journal.open(source.with_name(source.name + ".journal.sqlite")) as journal:
        job = journal.job()
        assert job is not None
        return job.plan_complete, journal.counts()


def test_sigkill_while_planning_then_resume_sends_every_request_once(
        sim: ThreadedSimulator, tmp_path: Path) -> None:
    source, report, n_rows, args, killed = _stopped_run(sim, tmp_path, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    complete, counts = _plan_state(source)
    assert not complete  # killed mid-plan, some requests already sent
    assert counts[RequestState.PENDING] < sum(counts.values())
    partial = cli("report", "--journal", str(source.with_name(source.name + ".journal.sqlite")),
                  env=env_for(sim))
    assert "rows planned so far" in partial.stderr, partial.stderr

    result = cli(*args, env=env_for(sim))
    assert result.returncode in (0, 1), result.stderr
    assert "again to journal the rest" in result.stderr
    lines = read_report(report)
    assert sorted(int(str(line["row"])) for line in lines) == list(range(1, n_rows + 1))
    stats = sim.stats_snapshot()
    assert stats["duplicate_posts"] == 0 and set(stats["posts_per_order"].values()) == {1}
    uncertain = {line["order_id"] for line in lines if line["outcome"] == "UNCERTAIN"}
    assert len(uncertain) <= 2  # at most the POSTs in flight at the kill
    assert {line["outcome"] for line in lines} <= {"SUCCEEDED", "UNCERTAIN"}
    # Every order not left uncertain was posted, exactly once across both runs.
    assert {line["order_id"] for line in lines} - uncertain <= set(stats["posts_per_order"])
    assert _plan_state(source)[0]


def test_sigint_while_planning_journals_the_plan_before_the_report(
        sim: ThreadedSimulator, tmp_path: Path) -> None:
    source, report, n_rows, args, stopped = _stopped_run(sim, tmp_path, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    complete, counts = _plan_state(source)
    assert complete and counts[RequestState.PENDING] > 0
    # The interrupted run's report already has every row.
    assert sorted(int(str(line["row"])) for line in read_report(report)) == \
        list(range(1, n_rows + 1))
    result = cli(*args, env=env_for(sim))
    assert result.returncode == 0, result.stderr
    assert "again to journal" not in result.stderr
    assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
    stats = sim.stats_snapshot()
    assert stats["duplicate_posts"] == 0 and set(stats["posts_per_order"].values()) == {1}
    assert len(stats["posts_per_order"]) == 60


@pytest.mark.parametrize("price", ["0", "00", "0.000000", "0.000001", "012.50", "10.00",
                                   "123456789012.123456", "7"])
@pytest.mark.parametrize("shipping", ["0", "000", "0.00", "4.99", "05"])
def test_the_fast_check_totals_as_decimal_does(price: str, shipping: str) -> None:
    """The fast check's total skips Decimal when an amount is zero: it must still be
    `str(price + shipping)` exactly."""
    from decimal import Decimal

    from mirakl_cancel._jobs.input import _plain_csv_row

    check = _plain_csv_row(HEADER)
    checked = check(["O1", "L1", "1", "OUT_OF_STOCK", price, "EUR", shipping], 1, 2)
    assert checked is not None
    assert checked.total == str(Decimal(price) + Decimal(shipping))
