"""The job journal: state transitions, resume queries, locking, and crash consistency."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mirakl_cancel._jobs.report import report_lines, row_outcome
from mirakl_cancel._stores.sqlite import (
    Journal,
    JournalBusyError,
    JournalError,
    PlannedRequest,
    PlannedRow,
    RequestState,
)

PLAN = [
    PlannedRequest(PlannedRequest.make_key("O1", [1, 2]), "O1", (1, 2), '{"cancelations":[1]}'),
    PlannedRequest(PlannedRequest.make_key("O2", [3]), "O2", (3,), '{"cancelations":[2]}'),
    PlannedRequest(PlannedRequest.make_key("O3", [5]), "O3", (5,), '{"cancelations":[3]}'),
]
ROWS = [
    PlannedRow(1, 2, "O1", "O1-1", None, 1),
    PlannedRow(2, 3, "O1", "O1-2", None, 2),
    PlannedRow(3, 4, "O2", None, "P9", 1),
    PlannedRow(4, 5, None, None, None, None, ("order_id: is required",)),
    PlannedRow(5, 6, "O3", "O3-1", None, 4),
]


def new_journal(path: Path) -> Journal:
    journal = Journal.open(path)
    journal.create_job(input_path="/in.csv", input_sha256="abc", input_format="csv",
                       base_url="http://127.0.0.1:1", requests=PLAN, rows=ROWS,
                       options={"max_lines_per_request": None})
    return journal


def test_create_and_read_back(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        job = journal.job()
        assert job is not None and job.input_sha256 == "abc" and job.input_format == "csv"
        assert [r.key for r in journal.requests()] == ["O1#1,2", "O2#3", "O3#5"]
        assert journal.counts()[RequestState.PENDING] == 3
        rows = journal.rows()
        assert [r.row_number for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].request is not None and rows[0].request.key == "O1#1,2"
        assert rows[3].request is None and rows[3].errors == ("order_id: is required",)
        with pytest.raises(JournalError, match="already holds a job"):
            journal.create_job(input_path="x", input_sha256="y", input_format="csv",
                               base_url="u", requests=[], rows=[])


def test_creation_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal.open(path) as journal:
        with pytest.raises(sqlite3.IntegrityError):
            journal.create_job(input_path="x", input_sha256="y", input_format="csv",
                               base_url="u", requests=[PLAN[0], PLAN[0]], rows=ROWS[:2])
        assert journal.job() is None and journal.requests() == []


def test_state_machine(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        k1, k2, k3 = (p.key for p in PLAN)
        with pytest.raises(JournalError, match="expected state SENDING"):
            journal.mark_accepted(k1, "A1")  # never accepted without SENDING first
        journal.mark_sending(k1, at=100.0)
        with pytest.raises(JournalError, match="it is SENDING"):
            journal.mark_sending(k1)  # never sent twice without saying so
        journal.mark_accepted(k1, "A1", at=101.0)
        journal.mark_poll_started("A1", at=160.0)
        journal.mark_polled("A1", at=161.0, status="PENDING")
        r1 = journal.request(k1)
        assert (r1.state, r1.action_id, r1.attempts, r1.status) == (
            RequestState.ACCEPTED, "A1", 1, "PENDING")
        assert r1.last_contact() == 161.0
        journal.mark_done(k1, "SUCCEEDED", status="SUCCESS")
        assert journal.request(k1).state is RequestState.DONE

        journal.mark_sending(k2)
        journal.mark_uncertain(k2, ["POST may have been processed"])
        with pytest.raises(JournalError):
            journal.mark_sending(k2)  # UNCERTAIN is resent only on request
        journal.mark_sending(k2, resend=True)
        assert journal.request(k2).attempts == 2

        journal.mark_sending(k3)
        journal.mark_done(k3, "ERROR", errors=["HTTP 503"], resendable=True)
        r3 = journal.request(k3)
        assert r3.resendable and r3.errors == ("HTTP 503",)
        assert journal.counts() == {RequestState.PENDING: 0, RequestState.SENDING: 1,
                                    RequestState.ACCEPTED: 0, RequestState.UNCERTAIN: 0,
                                    RequestState.DONE: 2}


def test_last_contact_counts_an_unfinished_poll_as_now(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        key = PLAN[0].key
        journal.mark_sending(key, at=100.0)
        journal.mark_accepted(key, "A1", at=101.0)
        assert journal.request(key).last_contact(now=500.0) == 101.0
        journal.mark_poll_started("A1", at=170.0)  # ...and the process died here
        assert journal.request(key).last_contact(now=500.0) == 500.0
        journal.mark_polled("A1", at=171.0)
        assert journal.request(key).last_contact(now=500.0) == 171.0


def test_resume_queries_and_report_outcomes(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        k1, k2, k3 = (p.key for p in PLAN)
        journal.mark_sending(k1)
        journal.mark_accepted(k1, "A1")
        journal.mark_sending(k2)  # crash: SENDING
        assert [r.key for r in journal.requests(RequestState.PENDING)] == [k3]
        outcomes = [line.outcome for line in report_lines(journal.rows())]
        assert outcomes == ["IN_PROGRESS", "IN_PROGRESS", "UNCERTAIN", "INVALID", "NOT_SENT"]
        assert journal.mark_interrupted_sends("stopped mid-send") == [k2]
        r2 = journal.request(k2)
        assert r2.state is RequestState.UNCERTAIN and row_outcome(r2) == (
            "UNCERTAIN", ("stopped mid-send",))
        journal.mark_tracking_stopped(k1, "TIMED_OUT", ["still pending"])
        assert journal.request(k1).state is RequestState.ACCEPTED  # a re-run tracks on
        assert row_outcome(journal.request(k1))[0] == "TIMED_OUT"


def test_one_process_per_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        from mirakl_cancel._stores.sqlite import Journal
        j = Journal.open({str(path)!r})
        print("open", flush=True)
        time.sleep(30)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(JournalBusyError, match="in use by another process"):
            Journal.open(path)
    finally:
        holder.kill()
        holder.wait()
    Journal.open(path).close()  # the lock dies with its process


def test_sigkill_right_after_marking_sending_keeps_the_mark(tmp_path: Path) -> None:
    """The SENDING commit is on disk before the POST would leave, whatever happens next."""
    path = tmp_path / "j.sqlite"
    new_journal(path).close()
    script = textwrap.dedent(f"""
        import os, signal
        from mirakl_cancel._stores.sqlite import Journal
        j = Journal.open({str(path)!r})
        j.mark_sending({PLAN[0].key!r})
        j.mark_accepted({PLAN[0].key!r}, "A1")
        j.mark_sending({PLAN[1].key!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False)
    assert result.returncode == -signal.SIGKILL
    with Journal.open(path) as journal:
        states = {r.key: (r.state, r.action_id) for r in journal.requests()}
    assert states == {PLAN[0].key: (RequestState.ACCEPTED, "A1"),
                      PLAN[1].key: (RequestState.SENDING, None),
                      PLAN[2].key: (RequestState.PENDING, None)}
    assert os.path.exists(path)


def test_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_text("this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a mirakl-cancel journal"):
        Journal.open(path)
