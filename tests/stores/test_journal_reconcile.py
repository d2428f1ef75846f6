"""Journal schema 2: reconciliation columns and transitions, and opening version-1 journals."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mirakl_cancel._jobs.report import report_lines, row_outcome
from mirakl_cancel._stores.sqlite import (
    SCHEMA_VERSION,
    Journal,
    JournalError,
    PlannedRequest,
    PlannedRow,
    RequestState,
)

# The schema version 1 (before reconciliation) created: same tables, columns, order.
V1_SCHEMA = """
CREATE TABLE job (
    id INTEGER PRIMARY KEY CHECK (id = 1), schema_version INTEGER NOT NULL,
    input_path TEXT NOT NULL, input_sha256 TEXT NOT NULL, input_format TEXT NOT NULL,
    base_url TEXT NOT NULL, created_at TEXT NOT NULL, options TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE requests (
    key TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, order_id TEXT NOT NULL,
    rows TEXT NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'PENDING'
        CHECK (state IN ('PENDING','SENDING','ACCEPTED','UNCERTAIN','DONE')),
    attempts INTEGER NOT NULL DEFAULT 0, action_id TEXT, sent_at REAL, accepted_at REAL,
    poll_started_at REAL, last_polled_at REAL, finished_at REAL, outcome TEXT, status TEXT,
    errors TEXT, resendable INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX requests_state ON requests (state);
CREATE INDEX requests_action ON requests (action_id);
CREATE TABLE rows (
    row_number INTEGER PRIMARY KEY, line_number INTEGER NOT NULL,
    request_key TEXT REFERENCES requests (key), order_id TEXT, order_line_id TEXT,
    product_id TEXT, quantity INTEGER, errors TEXT
);
CREATE INDEX rows_request ON rows (request_key);
"""


def v1_journal(path: Path) -> None:
    """A journal as version 1 left it mid-job: one DONE, one SENDING, one PENDING."""
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("INSERT INTO job VALUES (1, 1, '/in.csv', 'abc', 'csv', 'http://127.0.0.1:1', "
               "'2026-01-01T00:00:00+00:00', '{}')")
    db.executemany(
        "INSERT INTO requests (key, seq, order_id, rows, body, state, attempts, action_id, "
        "sent_at, outcome, status, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [("O1#1", 0, "O1", "[1]", "{}", "DONE", 1, "A1", 100.0, "SUCCEEDED", "SUCCESS", "[]"),
         ("O2#2", 1, "O2", "[2]", "{}", "SENDING", 1, None, 200.0, None, None, None),
         ("O3#3", 2, "O3", "[3]", "{}", "PENDING", 0, None, None, None, None, None)])
    db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, NULL, 1, NULL)",
                   [(1, 2, "O1#1", "O1", "O1-1"), (2, 3, "O2#2", "O2", "O2-1"),
                    (3, 4, "O3#3", "O3", "O3-1")])
    db.commit()
    db.close()


def test_a_version_1_journal_opens_and_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    v1_journal(path)
    with Journal.open(path) as journal:
        job = journal.job()
        assert job is not None and job.base_url == "http://127.0.0.1:1"
        requests = {r.key: r for r in journal.requests()}
        assert requests["O1#1"].outcome == "SUCCEEDED" and requests["O1#1"].action_id == "A1"
        assert requests["O2#2"].state is RequestState.SENDING
        assert requests["O2#2"].sent_at == 200.0
        assert all(r.reconcile_verdict is None and r.reconcile_adjustments == ()
                   for r in requests.values())
        assert [line.outcome for line in report_lines(journal.rows())] == [
            "SUCCEEDED", "UNCERTAIN", "NOT_SENT"]
        # ...and carries on as a version-2 journal: resume, reconcile.
        assert journal.mark_interrupted_sends("stopped") == ["O2#2"]
        journal.mark_reconciled("O2#2", "APPLIED", "adjustment 9 found", ["9"],
                                errors=["reconciled: adjustment 9 found"])
    db = sqlite3.connect(path)
    assert db.execute("SELECT schema_version FROM job").fetchone()[0] == SCHEMA_VERSION
    db.close()
    with Journal.open(path) as journal:  # and opens again, migrated once only
        done = journal.request("O2#2")
        assert (done.state, done.outcome, done.reconcile_verdict, done.reconcile_adjustments,
                done.sent_at) == (RequestState.DONE, "SUCCEEDED", "APPLIED", ("9",), 200.0)


def test_a_newer_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    v1_journal(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE job SET schema_version = 99")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal.open(path)


def new_journal(path: Path) -> Journal:
    journal = Journal.open(path)
    plan = [PlannedRequest(f"O{i}#{i}", f"O{i}", (i,), "{}") for i in (1, 2, 3)]
    journal.create_job(input_path="/in.csv", input_sha256="abc", input_format="csv",
                       base_url="http://127.0.0.1:1", requests=plan,
                       rows=[PlannedRow(i, i + 1, f"O{i}", f"O{i}-1", None, 1) for i in (1, 2, 3)])
    return journal


def test_reconciliation_transitions(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        for key in ("O1#1", "O2#2", "O3#3"):
            journal.mark_sending(key, at=100.0)
            journal.mark_uncertain(key, ["HTTP 502"])
        with pytest.raises(JournalError, match="expected state UNCERTAIN"):
            journal.mark_reconciled("O9#9", "APPLIED", "x", errors=[])
        journal.mark_reconciled("O1#1", "APPLIED", "found 7", ["7"], errors=["reconciled: a"])
        journal.mark_reconciled("O2#2", "NOT_APPLIED", "none", errors=["reconciled: b"])
        journal.mark_reconciled("O3#3", "UNCERTAIN", "two rivals",
                                errors=["HTTP 502", "reconciled: c"])
        with pytest.raises(ValueError, match="unknown reconciliation verdict"):
            journal.mark_reconciled("O3#3", "MAYBE", "?", errors=[])
        one, two, three = (journal.request(k) for k in ("O1#1", "O2#2", "O3#3"))
        assert row_outcome(one) == ("SUCCEEDED", ("reconciled: a",)) and one.action_id is None
        assert (two.state, two.outcome, two.resendable) == (RequestState.DONE, "NOT_APPLIED",
                                                            False)
        assert three.state is RequestState.UNCERTAIN and three.reconcile_reason == "two rivals"
        assert row_outcome(three) == ("UNCERTAIN", ("HTTP 502", "reconciled: c"))
        with pytest.raises(JournalError):
            journal.mark_reconciled("O1#1", "APPLIED", "again", errors=[])  # final: DONE
        # NOT_APPLIED is resent only on request; the verdict stays as the reason why.
        journal.mark_sending("O2#2", at=300.0, resend=True)
        journal.mark_send_attempt("O2#2", at=301.5)  # a retry after a 429 moves sent_at
        resent = journal.request("O2#2")
        assert (resent.state, resent.attempts, resent.sent_at, resent.reconcile_verdict) == (
            RequestState.SENDING, 2, 301.5, "NOT_APPLIED")
        line = report_lines(journal.rows())[1]
        assert line.reconciliation == "NOT_APPLIED"
        assert json.loads(json.dumps(line.to_dict()))["reconciliation"] == "NOT_APPLIED"


def test_a_send_that_never_left(tmp_path: Path) -> None:
    with new_journal(tmp_path / "j.sqlite") as journal:
        journal.mark_unsent("O1#1", "ERROR", ["cannot get a token"])
        unsent = journal.request("O1#1")
        assert (unsent.state, unsent.outcome, unsent.resendable, unsent.attempts) == (
            RequestState.DONE, "ERROR", True, 0)
        with pytest.raises(JournalError):
            journal.mark_send_attempt("O2#2")  # only a request being sent has attempts
