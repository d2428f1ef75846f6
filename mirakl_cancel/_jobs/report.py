"""The job report (one line per input row) and the end-of-job summary table.

The report is built from the journal, not from what this process happened to see, so a
resumed job reports every row exactly once, including rows finished by an earlier run.
It is written to a temporary file and renamed into place, so an interrupted write never
leaves a half report that looks complete.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .._engine import Outcome
from .._stores.base import JournalRequest, JournalRow, RequestState
from .._text import neutralise_cell
from ..reconcile import Verdict

__all__ = [
    "REPORT_FIELDS",
    "JobCounts",
    "ReportLine",
    "ReportWriter",
    "check_report_path",
    "report_line",
    "report_lines",
    "request_outcome",
    "row_outcome",
    "summary_table",
    "write_report",
]

#: Outcomes of rows that never reached a final state (the job stopped early).
NOT_SENT = "NOT_SENT"
IN_PROGRESS = "IN_PROGRESS"
INVALID = "INVALID"

REPORT_FIELDS = ("row", "line", "order_id", "order_line_id", "product_id", "quantity",
                 "outcome", "action_id", "status", "errors", "request", "reconciliation")

_SENDING_INTERRUPTED = ("the job stopped while this cancel was being sent: it may have been "
                        "processed (not re-sent; see --reconcile)")


@attrs.frozen
class ReportLine:
    """What became of one input row."""

    row: int
    line: int
    order_id: str | None
    order_line_id: str | None
    product_id: str | None
    quantity: int | None
    outcome: str
    action_id: str | None
    status: str | None
    errors: tuple[str, ...]
    request: str | None
    #: The last reconciliation verdict of the row's request (APPLIED, NOT_APPLIED,
    #: UNCERTAIN), if it was ever uncertain and reconciled; the reason is in `errors`.
    reconciliation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (errors as a list of message texts)."""
        data = attrs.asdict(self)
        data["errors"] = list(self.errors)
        return data


def request_outcome(state: RequestState, outcome: str | None) -> str:
    """The outcome a request (and each of its rows) is counted under, from its state and
    the outcome its journal record keeps: all a count needs (`JobStore.outcome_counts`)."""
    if state is RequestState.DONE:
        return outcome or Outcome.ERROR.value
    if state is RequestState.SENDING or state is RequestState.UNCERTAIN:
        return Outcome.UNCERTAIN.value
    if state is RequestState.ACCEPTED:
        # With an outcome, tracking stopped (TIMED_OUT, ERROR); a re-run tracks on.
        return outcome or IN_PROGRESS
    return NOT_SENT


def row_outcome(request: JournalRequest | None) -> tuple[str, tuple[str, ...]]:
    """The outcome a row gets from its request's journal record, with the error texts."""
    if request is None:
        return INVALID, ()
    state = request.state
    outcome = request_outcome(state, request.outcome)
    if state is RequestState.SENDING:
        return outcome, request.errors or (_SENDING_INTERRUPTED,)
    if outcome in (NOT_SENT, IN_PROGRESS):
        return outcome, ()  # nothing went wrong yet (no recorded outcome is either)
    return outcome, request.errors


def report_line(row: JournalRow) -> ReportLine:
    """What became of one journal row."""
    outcome, errors = row_outcome(row.request)
    request = row.request
    return ReportLine(
        row=row.row_number, line=row.line_number, order_id=row.order_id,
        order_line_id=row.order_line_id, product_id=row.product_id,
        quantity=row.quantity, outcome=outcome,
        action_id=request.action_id if request else None,
        status=request.status if request else None,
        errors=errors if request else row.errors,
        request=request.key if request else None,
        reconciliation=request.reconcile_verdict if request else None)


def report_lines(rows: Iterable[JournalRow]) -> list[ReportLine]:
    """One ReportLine per journal row, in input order."""
    return [report_line(row) for row in rows]


def check_report_path(path: Path) -> str:
    """`jsonl` or `csv` from the report's extension; ValueError for anything else."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"report {path.name}: use a .jsonl or .csv extension")


class ReportWriter:
    """Writes a report line by line (bounded memory), atomically: the lines go to a
    temporary file in the same directory, renamed into place by `commit()`; `discard()`
    (or an exception inside `with`) removes it and leaves any older report as it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.kind = check_report_path(path)
        directory = path.parent if str(path.parent) else Path(".")
        fd, self._tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        self._handle = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self._csv: csv.DictWriter[str] | None = None
        if self.kind == "csv":
            self._csv = csv.DictWriter(self._handle, fieldnames=REPORT_FIELDS,
                                       lineterminator="\n")
            self._csv.writeheader()

    def add(self, line: ReportLine) -> None:
        """Append one line."""
        data = line.to_dict()
        if self._csv is None:
            self._handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            return
        data["errors"] = " | ".join(line.errors)
        # JSONL is for programs: every value exactly as it is. CSV is opened in spreadsheets,
        # where an id or a server message such as `=HYPERLINK(...)` would run as a formula.
        self._csv.writerow({k: "" if v is None else neutralise_cell(v) if isinstance(v, str)
                            else v for k, v in data.items()})

    def commit(self) -> None:
        """Close and rename into place."""
        self._handle.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        """Close and remove the temporary file."""
        self._handle.close()
        Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_report(path: Path, lines: Iterable[ReportLine]) -> None:
    """Write the report atomically (temp file in the same directory, then rename)."""
    with ReportWriter(path) as writer:
        for line in lines:
            writer.add(line)


@attrs.define
class JobCounts:
    """Figures for the summary table."""

    rows_by_outcome: Counter[str] = attrs.field(factory=Counter)
    requests_by_outcome: Counter[str] = attrs.field(factory=Counter)
    elapsed: float = 0.0
    posts_sent: int = 0
    http_requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    resumed: bool = False
    interrupted: bool = False
    #: Reconciliation verdicts given this run (APPLIED, NOT_APPLIED, UNCERTAIN), if it ran.
    reconciled: Counter[str] | None = None
    #: Cancels sent again this run because reconciliation proved them not applied.
    resent_unapplied: int = 0


#: The table's rows: the engine's outcomes, then the report's own.
_ORDER = (*(o.value for o in (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.REJECTED,
                              Outcome.UNCERTAIN, Outcome.NOT_APPLIED, Outcome.TIMED_OUT,
                              Outcome.ERROR)), INVALID, IN_PROGRESS, NOT_SENT)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def summary_table(counts: JobCounts, *, figures: bool = True) -> str:
    """A plain-text table: rows and requests per outcome, then (`figures`) the run's."""
    outcomes = [o for o in _ORDER if counts.rows_by_outcome[o] or counts.requests_by_outcome[o]]
    outcomes += sorted(set(counts.rows_by_outcome) - set(_ORDER))
    width = max([len("outcome"), *(len(o) for o in outcomes)])
    lines = [f"{'outcome':<{width}}  {'rows':>7}  {'requests':>8}"]
    lines.append(f"{'-' * width}  {'-' * 7}  {'-' * 8}")
    for outcome in outcomes:
        lines.append(f"{outcome:<{width}}  {counts.rows_by_outcome[outcome]:>7}  "
                     f"{counts.requests_by_outcome[outcome]:>8}")
    lines.append(f"{'total':<{width}}  {sum(counts.rows_by_outcome.values()):>7}  "
                 f"{sum(counts.requests_by_outcome.values()):>8}")
    if not figures:
        return "\n".join(lines)
    status = "interrupted" if counts.interrupted else "finished"
    if counts.resumed:
        status += " (resumed from the journal)"
    lines.append("")
    lines.append(f"{status} in {_duration(counts.elapsed)}: {counts.posts_sent} cancel "
                 f"request(s) sent this run, {counts.http_requests} HTTP request(s), "
                 f"{counts.retries} retr{'y' if counts.retries == 1 else 'ies'}, "
                 f"{counts.rate_limited} rate-limited (429)")
    if counts.reconciled is not None and not (counts.reconciled or counts.resent_unapplied):
        lines.append("reconciliation: no uncertain cancel to reconcile")
    elif counts.reconciled is not None:
        verdicts = counts.reconciled
        lines.append(f"reconciliation: {sum(verdicts.values())} verdict(s) on uncertain "
                     f"cancels: {verdicts[Verdict.APPLIED.value]} applied (no resend), "
                     f"{verdicts[Verdict.NOT_APPLIED.value]} not applied, "
                     f"{verdicts[Verdict.UNCERTAIN.value]} still "
                     f"uncertain; {counts.resent_unapplied} sent again (--resend-unapplied)")
    return "\n".join(lines)
