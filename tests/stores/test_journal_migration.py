"""Schema 3 (compact) opens and resumes a journal written by schema 2 (the previous code).

The version-2 journal is built here with version 2's own DDL and the rows its code
wrote (JSON row lists, text bodies, a `key` column, rows keyed by request key), mid-job.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
import uuid
from pathlib import Path

from aiohttp import web
from conftest import serve

from mirakl_cancel import StaticToken
from mirakl_cancel._jobs.input import read_input
from mirakl_cancel._jobs.job import (
    EXIT_SOME_FAILED,
    JobOptions,
    _open_job,
    _run_async,
    plan_requests,
)
from mirakl_cancel._jobs.report import report_lines
from mirakl_cancel._stores.sqlite import SCHEMA_VERSION, Journal, RequestState
from mirakl_cancel.tracker import PollPolicy

V2_SCHEMA = """
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
    errors TEXT, resendable INTEGER NOT NULL DEFAULT 0,
    reconcile_verdict TEXT, reconcile_reason TEXT, reconcile_adjustments TEXT,
    reconciled_at REAL
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

HEADER = ["order_id", "order_line_id", "quantity", "reason", "price_amount", "price_currency",
          "shipping_amount"]


def _input(path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerow(["A", "A-1", 1, "OUT_OF_STOCK", "1.50", "EUR", "0"])   # row 1: DONE
        writer.writerow(["B", "B-1", 2, "OUT_OF_STOCK", "2.50", "EUR", "0"])   # row 2: ACCEPTED
        writer.writerow(["A", "A-2", 1, "DEFECT", "3.00", "EUR", "0.5"])       # row 3: (A)
        writer.writerow(["C", "C-1", 1, "OUT_OF_STOCK", "4.00", "EUR", "0"])   # row 4: SENDING
        writer.writerow(["D", "D-1", 3, "OUT_OF_STOCK", "5.00", "EUR", "0"])   # row 5: PENDING


def v2_journal(path: Path, source: Path, base_url: str) -> None:
    """What version 2 left after a SIGKILL: one DONE, one ACCEPTED, one SENDING, one PENDING."""
    parsed = read_input(source)
    planned, _ = plan_requests(parsed, None)
    assert [p.key for p in planned] == ["A#1,3", "B#2", "C#4", "D#5"]
    state = {"A#1,3": ("DONE", "A1", 100.0, 101.0, None, 130.0, "SUCCEEDED", "SUCCESS", "[]"),
             "B#2": ("ACCEPTED", "B1", 102.0, 103.0, 170.0, None, None, "PENDING", None),
             "C#4": ("SENDING", None, 104.0, None, None, None, None, None, None),
             "D#5": ("PENDING", None, None, None, None, None, None, None, None)}
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    db.execute("PRAGMA journal_mode=WAL")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    db.execute("INSERT INTO job VALUES (1, 2, ?, ?, 'csv', ?, '2026-01-01T00:00:00+00:00', "
               "'{\"max_lines_per_request\": null, \"skip_invalid\": false}')",
               (str(source.resolve()), digest, base_url))
    for seq, plan in enumerate(planned):
        s, action, sent, accepted, polled, finished, outcome, status, errors = state[plan.key]
        db.execute(
            "INSERT INTO requests (key, seq, order_id, rows, body, state, attempts, action_id, "
            "sent_at, accepted_at, last_polled_at, finished_at, outcome, status, errors) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (plan.key, seq, plan.order_id, json.dumps(list(plan.rows)), plan.body, s,
             0 if s == "PENDING" else 1, action, sent, accepted, polled, finished, outcome,
             status, errors))
    for row in parsed.rows:
        key = next(p.key for p in planned if row.row in p.rows)
        db.execute("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                   (row.row, row.line, key, row.order_id, row.cancelation.order_line_id,
                    row.cancelation.product_id, row.cancelation.quantity))
    db.commit()
    db.close()


def test_a_version_2_journal_is_migrated_with_every_row_and_state(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    _input(source)
    path = tmp_path / "in.csv.journal.sqlite"
    v2_journal(path, source, "http://127.0.0.1:1")
    with Journal.open(path) as journal:
        requests = {r.key: r for r in journal.requests()}
        assert list(requests) == ["A#1,3", "B#2", "C#4", "D#5"]
        assert requests["B#2"].last_contact() == 170.0 and requests["B#2"].action_id == "B1"
        assert requests["A#1,3"].rows == (1, 3) and '"order_line_id":"A-2"' in \
            requests["A#1,3"].body
        assert journal.request("C#4").state is RequestState.SENDING
        lines = report_lines(journal.rows())
        assert [(line.row, line.order_line_id, line.quantity, line.outcome) for line in lines] == [
            (1, "A-1", 1, "SUCCEEDED"), (2, "B-1", 2, "IN_PROGRESS"), (3, "A-2", 1, "SUCCEEDED"),
            (4, "C-1", 1, "UNCERTAIN"), (5, "D-1", 3, "NOT_SENT")]
    db = sqlite3.connect(path)
    assert db.execute("SELECT schema_version FROM job").fetchone()[0] == SCHEMA_VERSION
    db.close()


async def test_a_version_2_journal_resumes(tmp_path: Path) -> None:
    """The resume a version-2 journal needs: the PENDING request is sent, the ACCEPTED one
    tracked on, the SENDING one reported UNCERTAIN and not sent, the DONE one left."""
    posted: list[str] = []
    polled: list[str] = []

    async def cancel(request: web.Request) -> web.Response:
        posted.append(request.match_info["order_id"])
        return web.json_response({"action_id": str(uuid.uuid4())}, status=202)

    async def status(request: web.Request) -> web.Response:
        polled.append(request.match_info["id"])
        return web.json_response({"id": request.match_info["id"], "status": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/v2/orders/{order_id}/cancel", cancel)
    app.router.add_get("/v2/orders/actions/{id}", status)
    source = tmp_path / "in.csv"
    _input(source)
    report = tmp_path / "report.jsonl"
    async with serve(app) as url:
        v2_journal(tmp_path / "in.csv.journal.sqlite", source, url)
        options = JobOptions(input_path=source, base_url=url, quiet=True, report_path=report,
                             policy=PollPolicy(min_interval=0.0, interval=0.01, first_delay=0.0))
        out, err = io.StringIO(), io.StringIO()
        journal, resumed, _ = _open_job(options, err, out)
        assert journal is not None and resumed, err.getvalue()
        try:
            code = await _run_async(options, StaticToken("t"), journal, resumed, out, err, None)
        finally:
            journal.close()
    assert code == EXIT_SOME_FAILED  # the UNCERTAIN row
    assert posted == ["D"]
    assert "B1" in polled
    outcomes = [(line["row"], line["outcome"]) for line in
                map(json.loads, report.read_text().splitlines())]
    assert outcomes == [(1, "SUCCEEDED"), (2, "SUCCEEDED"), (3, "SUCCEEDED"), (4, "UNCERTAIN"),
                        (5, "SUCCEEDED")]
