"""The closing count of a job: the store counts the requests per state and outcome (and
their rows), and without a report that and the number of rows no request covers is all
it reads; its figures must be the ones the report's row-by-row pass gives, whatever
state each request is in."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mirakl_cancel._jobs.job import JobOptions, _open_job, tally
from mirakl_cancel._jobs.report import JobCounts, request_outcome, row_outcome
from mirakl_cancel._stores.base import JournalRequest, RequestState
from mirakl_cancel._stores.sqlite import SqliteStore


def _line(order: int, line: int, quantity: int = 1) -> str:
    return json.dumps({"order_id": f"O{order}", "order_line_id": f"O{order}-{line}",
                       "quantity": quantity, "reason": "RETURN", "price_amount": "1.00",
                       "price_currency": "EUR", "shipping_amount": 0})


async def test_the_count_without_a_report_is_the_reports(tmp_path: Path) -> None:
    # Orders of 1 to 3 lines, their lines apart in the file, and three invalid rows.
    lines = [_line(n % 7, n, quantity=-1 if n in (4, 11, 19) else 1) for n in range(1, 25)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    options = JobOptions(input_path=source, base_url="http://127.0.0.1:1", skip_invalid=True,
                         quiet=True, max_lines_per_request=3)
    journal, _, _ = _open_job(options, io.StringIO(), io.StringIO())
    assert journal is not None
    keys = [r.key for r in journal.requests()]
    assert len(keys) >= 6
    # One request in each state a closing count can meet.
    journal.mark_sending(keys[0])  # SENDING: UNCERTAIN
    for key in keys[1:4]:
        journal.mark_sending(key)
        journal.mark_accepted(key, f"act-{key}")
    journal.mark_done(keys[1], "SUCCEEDED", status="SUCCESS")
    journal.mark_done(keys[2], "FAILED", status="FAILED", errors=("refused",))
    journal.mark_tracking_stopped(keys[3], "TIMED_OUT", ("still running",))
    journal.mark_sending(keys[4])
    journal.mark_uncertain(keys[4], ("the answer was lost",))
    # keys[5:] stay PENDING: NOT_SENT.
    store = SqliteStore(journal)
    try:
        assert await store.skipped_rows() == 3
        counted = {(state, outcome): (requests, rows)
                   for state, outcome, requests, rows in await store.outcome_counts()}
        read = [r async for r in store.requests(bodies=False)]
        assert sum(n for n, _ in counted.values()) == len(read)
        assert sum(rows for _, rows in counted.values()) == 24 - 3
        assert counted[(RequestState.DONE, "FAILED")] == (1, len(read[2].rows))
        report = tmp_path / "report.jsonl"
        with_report, without = JobCounts(), JobCounts()
        assert await tally(store, report, with_report, io.StringIO()) == (24, False)
        assert await tally(store, None, without, io.StringIO()) == (24, False)
    finally:
        await store.aclose()
    assert without.rows_by_outcome == with_report.rows_by_outcome
    assert without.requests_by_outcome == with_report.requests_by_outcome
    assert without.rows_by_outcome["INVALID"] == 3
    outcomes = {o for o in without.rows_by_outcome if without.rows_by_outcome[o]}
    assert outcomes == {"UNCERTAIN", "SUCCEEDED", "FAILED", "TIMED_OUT", "NOT_SENT",
                        "INVALID"}
    # The report says the same, line by line.
    written = [json.loads(text) for text in report.read_text().splitlines()]
    assert len(written) == 24
    assert sum(line["outcome"] == "INVALID" for line in written) == 3


@pytest.mark.parametrize(("state", "outcome", "expected"), [
    (RequestState.PENDING, None, "NOT_SENT"),
    (RequestState.SENDING, None, "UNCERTAIN"),
    (RequestState.UNCERTAIN, "UNCERTAIN", "UNCERTAIN"),
    (RequestState.ACCEPTED, None, "IN_PROGRESS"),
    (RequestState.ACCEPTED, "TIMED_OUT", "TIMED_OUT"),
    (RequestState.DONE, "SUCCEEDED", "SUCCEEDED"),
    (RequestState.DONE, "NOT_APPLIED", "NOT_APPLIED"),
    (RequestState.DONE, None, "ERROR"),
])
def test_a_request_counts_under_the_outcome_its_rows_get(
        state: RequestState, outcome: str | None, expected: str) -> None:
    # The count (state and outcome only) and the report's rows (the whole record) agree.
    request = JournalRequest(key="O1#1", seq=1, order_id="O1", rows=(1,), body="",
                             state=state, attempts=1, action_id=None, sent_at=None,
                             accepted_at=None, poll_started_at=None, last_polled_at=None,
                             finished_at=None, outcome=outcome, status=None,
                             errors=("why",), resendable=False)
    assert request_outcome(state, outcome) == expected
    assert row_outcome(request)[0] == expected
    texts = row_outcome(request)[1]
    assert texts == (() if expected in ("NOT_SENT", "IN_PROGRESS") else ("why",))
