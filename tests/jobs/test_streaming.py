"""Files of any size: rows are checked, staged, planned and journaled in bounded memory.

The streamed plan must be the in-memory one (`plan_requests`, built on `group_by_order`):
same requests, same keys, byte-identical bodies.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tracemalloc
from pathlib import Path

import pytest

from mirakl_cancel._jobs.input import InputError, open_input, read_input
from mirakl_cancel._jobs.job import (
    JobOptions,
    _open_job,
    _stage_input,
    plan_requests,
    print_dry_run,
)
from mirakl_cancel._serde import cancelation_json, request_body
from mirakl_cancel._stores.sqlite import Journal, PlanStaging, RequestState

HEADER = ["order_id", "order_line_id", "product_id", "quantity", "reason", "price_amount",
          "price_currency", "shipping_amount", "taxes"]


def write_rows(path: Path, rows: int, *, orders: int, seed: int = 7,
               bad: tuple[int, ...] = ()) -> None:
    """`rows` lines spread over `orders` orders in random order (an order's lines are far
    apart), some with taxes, the data rows numbered in `bad` invalid."""
    rnd = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for n in range(1, rows + 1):
            order = rnd.randrange(orders)
            quantity = -1 if n in bad else rnd.randint(1, 3)
            writer.writerow([f"O{order}", f"O{order}-{n}", "", quantity, "OUT_OF_STOCK",
                             f"{rnd.randint(100, 9999) / 100:.2f}", "EUR",
                             rnd.choice(["0", "4.99"]), rnd.choice(["", "VAT:0.20"])])


@pytest.mark.parametrize("max_lines", [None, 1, 2])
def test_the_streamed_plan_is_the_in_memory_plan(tmp_path: Path, max_lines: int | None) -> None:
    source = tmp_path / "in.csv"
    write_rows(source, 400, orders=60)
    planned, _ = plan_requests(read_input(source), max_lines)
    with PlanStaging() as staging:
        assert _stage_input(source, JobOptions(input_path=source, base_url="u"), staging,
                            io.StringIO()) is not None
        streamed = list(staging.plan(max_lines))
        assert staging.request_count(max_lines) == len(planned)
    assert [r.key for r in streamed] == [p.key for p in planned]
    assert [r.body for r in streamed] == [p.body for p in planned]


@pytest.mark.parametrize("max_lines", [None, 2])
def test_orders_listed_together_are_planned_in_file_order(tmp_path: Path,
                                                          max_lines: int | None) -> None:
    """The usual file lists an order's lines together: the staging sees it (as many
    orders as runs of rows) and plans by a plain scan; the plan is still the in-memory
    one. One order listed twice apart turns the shortcut off."""
    source = tmp_path / "in.csv"
    write_rows(source, 300, orders=40)
    with source.open() as handle:
        header, *lines = list(csv.reader(handle))
    lines.sort(key=lambda cells: int(cells[0][1:]))  # stable: file order within an order
    for contiguous in (True, False):
        if not contiguous:
            lines.append(lines[0])  # order O0 again, after all the others
        with source.open("w", newline="") as handle:
            csv.writer(handle).writerows([header, *lines])
        planned, _ = plan_requests(read_input(source), max_lines)
        with PlanStaging() as staging:
            assert _stage_input(source, JobOptions(input_path=source, base_url="u"),
                                staging, io.StringIO()) is not None
            streamed = list(staging.plan(max_lines))
            assert staging.contiguous is contiguous
        assert [r.key for r in streamed] == [p.key for p in planned]
        assert [r.body for r in streamed] == [p.body for p in planned]


@pytest.mark.parametrize("max_lines", [None, 1, 2])
def test_a_journal_of_orders_listed_together_is_the_in_memory_plan(
        tmp_path: Path, max_lines: int | None) -> None:
    """Rows copied by SQL point at the requests the Python plan numbers: every row of
    the journal belongs to the in-memory plan's request that holds it."""
    source = tmp_path / "in.csv"
    write_rows(source, 200, orders=30, bad=(17,))
    with source.open() as handle:
        header, *lines = list(csv.reader(handle))
    lines.sort(key=lambda cells: int(cells[0][1:]))
    with source.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *lines])
    planned, _ = plan_requests(read_input(source), max_lines)
    owner = {n: p.key for p in planned for n in p.rows}
    options = JobOptions(input_path=source, base_url="http://127.0.0.1:1", skip_invalid=True,
                         quiet=True, max_lines_per_request=max_lines)
    err = io.StringIO()
    journal, _, _ = _open_job(options, err, io.StringIO())
    assert journal is not None, err.getvalue()
    try:
        assert [(r.key, r.body) for r in journal.requests()] == [
            (p.key, p.body) for p in planned]
        rows = journal.rows()
        assert len(rows) == 200
        assert {r.row_number: r.request.key for r in rows if r.request} == owner
        assert [r.row_number for r in rows if r.request is None and r.errors] == [
            n for n in range(1, 201) if n not in owner]
    finally:
        journal.close()


def test_a_cancelation_is_written_as_inside_a_body() -> None:
    parsed = read_input_text("order_id,order_line_id,quantity,reason,price_amount,"
                             "price_currency,shipping_amount,taxes\n"
                             "O1,L1,2,DEFECT,10.10,EUR,1.00,VAT:2.02;ECO:0.10\n")
    [row] = parsed.rows
    _, [request] = plan_requests(parsed, None)
    assert request_body(request).decode() == (
        '{"cancelations":[' + cancelation_json(row.cancelation) + "]}")


def read_input_text(text: str):  # type: ignore[no-untyped-def]
    from mirakl_cancel._jobs.input import parse_csv
    return parse_csv(text)


def test_a_new_job_is_journaled_from_the_stream(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_rows(source, 300, orders=50, bad=(7, 123))
    err = io.StringIO()
    options = JobOptions(input_path=source, base_url="http://127.0.0.1:1", skip_invalid=True,
                         quiet=True)
    journal, resumed, _ = _open_job(options, err, io.StringIO())
    assert journal is not None and not resumed, err.getvalue()
    try:
        assert "row 7 (line 8), quantity" in err.getvalue()
        assert "skipping 2 invalid row(s)" in err.getvalue()
        rows = journal.rows()
        assert [r.row_number for r in rows] == list(range(1, 301))
        invalid = [r for r in rows if r.request is None]
        assert [r.row_number for r in invalid] == [7, 123]
        assert invalid[0].order_line_id == "O26-7" and "quantity: -1 is negative" in \
            invalid[0].errors[0]
        # Valid rows read their line, product and quantity back from the request's body.
        parsed = read_input(source)
        expected = {r.row: (r.order_id, r.cancelation.order_line_id, r.cancelation.quantity)
                    for r in parsed.rows}
        assert {r.row_number: (r.order_id, r.order_line_id, r.quantity) for r in rows
                if r.request is not None} == expected
        assert journal.counts()[RequestState.PENDING] == len({r.order_id for r in parsed.rows})
    finally:
        journal.close()


def test_bad_rows_stop_everything_and_leave_no_journal(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_rows(source, 50, orders=10, bad=(3, 40))
    err = io.StringIO()
    journal, _, code = _open_job(JobOptions(input_path=source, base_url="u"), err,
                                 io.StringIO())
    assert journal is None and code == 2
    assert "2 error(s) in 2 row(s)" in err.getvalue()
    assert not (tmp_path / "in.csv.journal.sqlite").exists()


def test_duplicates_are_found_across_the_file(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    line = ["O1", "L1", "", "1", "OUT_OF_STOCK", "1.00", "EUR", "0", ""]
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerow(line)
        for n in range(2, 50):
            writer.writerow([f"O{n}", f"L{n}", "", "1", "OUT_OF_STOCK", "1.00", "EUR", "0", ""])
        writer.writerow(line)
    err = io.StringIO()
    with PlanStaging() as staging:
        assert _stage_input(source, JobOptions(input_path=source, base_url="u"), staging,
                            err) is not None
    assert "warning: row 50 (line 51): identical to row 1 (line 2)" in err.getvalue()


@pytest.mark.parametrize("memory", [10_000, 2])
def test_duplicates_of_orders_listed_together_are_found_as_they_come(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory: int) -> None:
    """Orders listed together: identical rows are found run by run, without the query,
    and they are exactly what the query finds; past its memory bound staging leaves
    it to the query."""
    monkeypatch.setattr("mirakl_cancel._stores.sqlite._RUN_MEMORY", memory)
    with PlanStaging() as staging:
        for n in range(1, 61):
            order, line = f"O{(n - 1) // 6}", ["a", "b", "a", "c", "b", "a"][(n - 1) % 6]
            staging.add_valid(n, n + 1, order, line, 1, "1", "EUR")
        found = list(staging.duplicates())
        assert staging.contiguous
        assert (staging._run_lines is None) is (memory == 2)
        staging._run_lines = None  # the query's answer, for comparison
        assert found == [tuple(r) for r in staging.duplicates()]
    assert len(found) == 30 and found[:3] == [(3, 4, 1, 2), (5, 6, 2, 3), (6, 7, 1, 2)]


def test_dry_run_prints_every_request_and_totals(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("order_id,order_line_id,quantity,reason,price_amount,price_currency,"
                      "shipping_amount,taxes\n"
                      "A,A1,2,DEFECT,10.00,EUR,1.00,VAT:2.00\n"
                      "B,B1,1,DEFECT,5.00,USD,0,\n"
                      "A,A2,1,DEFECT,1.50,EUR,0,\n")
    out = io.StringIO()
    with PlanStaging() as staging:
        _stage_input(source, JobOptions(input_path=source, base_url="u"), staging,
                     io.StringIO())
        print_dry_run(staging, None, out)
    assert out.getvalue().splitlines() == [
        "dry run: 2 request(s) for 2 order(s), 3 line(s); nothing sent",
        "  A: 2 line(s), 3 unit(s), 14.50 EUR (rows 1,3)",
        "  B: 1 line(s), 1 unit(s), 5.00 USD (rows 2)",
        "total: 2 request(s), 3 line(s), 4 unit(s), 14.50 EUR, 5.00 USD "
        "(price + shipping + taxes)"]


def test_jsonl_streams_too_and_a_late_encoding_error_names_its_byte(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    good = {"order_id": "O1", "order_line_id": "L1", "quantity": 1, "reason": "DEFECT",
            "price_amount": "1.00", "price_currency": "EUR", "shipping_amount": "0", "x": 1}
    source.write_text(json.dumps(good) + "\n\n" + json.dumps(good | {"quantity": "z"}) + "\n")
    stream = open_input(source)
    results = list(stream)
    assert [type(r).__name__ for r in results] == ["InputRow", "InvalidRow"]
    assert results[1].line == 3
    assert [str(i) for i in stream.issues] == ["warning: file: ignoring unknown key(s): x"]
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"order_id\n" + b"a" * 3_000_000 + b"\xff\n")
    with pytest.raises(InputError, match="byte 3000009"):
        open_input(broken)


def _peak(source: Path) -> int:
    tracemalloc.start()
    try:
        with PlanStaging() as staging:
            _stage_input(source, JobOptions(input_path=source, base_url="u"), staging,
                         io.StringIO())
            for _ in staging.plan(None):
                pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mirakl_cancel._stores.sqlite._STAGE_CHUNK", 500)
    small, large = tmp_path / "small.csv", tmp_path / "large.csv"
    write_rows(small, 3_000, orders=1_000)  # beyond the staging chunk: the buffers are full
    write_rows(large, 12_000, orders=4_000)
    # Four times the rows, not four times the memory (holding the rows would be ~4x).
    assert _peak(large) < 1.5 * _peak(small)


def test_the_journal_is_compact(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_rows(source, 5_000, orders=2_500)
    journal, _, _ = _open_job(JobOptions(input_path=source, base_url="u", quiet=True),
                              io.StringIO(), io.StringIO())
    assert journal is not None
    journal.close()
    size = (tmp_path / "in.csv.journal.sqlite").stat().st_size
    assert size / 5_000 < 120  # bytes per row, before sending (issue: <= 250 after a run)
    with Journal.open(tmp_path / "in.csv.journal.sqlite") as reopened:
        assert len(reopened.rows()) == 5_000


def test_the_fast_cancelation_writer_matches_the_generic_one() -> None:
    from decimal import Decimal

    from mirakl_cancel import Cancelation, CancelReason, Money, Tax
    from mirakl_cancel._serde import converter, dumps

    rnd = random.Random(3)
    for _ in range(500):
        currency = rnd.choice(["EUR", "USD"])

        def money(currency: str = currency) -> Money:
            return Money(Decimal(rnd.choice(["0", "1.5", "12.340", "0.01", "1E+2", "7"])),
                         currency)

        ids = rnd.choice([("L\u00e91", None), (None, "P\"9"), ("L2", "P2")])
        cancelation = Cancelation(
            quantity=rnd.randint(0, 5), reason=rnd.choice(list(CancelReason)), price=money(),
            shipping_price=money(), order_line_id=ids[0], product_id=ids[1],
            taxes=[Tax(rnd.choice(["VAT", "ECO"]), money()) for _ in range(rnd.randint(0, 2))],
            shipping_taxes=[Tax("TVA", money()) for _ in range(rnd.randint(0, 1))])
        assert cancelation_json(cancelation) == dumps(converter.unstructure(cancelation))


# --- the fast first check vouches only for what the full check accepts -----------------

_PLAIN_HEADER = ["order_id", "order_line_id", "product_id", "quantity", "reason",
                 "price_amount", "price_currency", "shipping_amount", "shipping_currency",
                 "taxes", "shipping_taxes"]
_CELLS = {
    "order_id": ["O1", " O2 ", "", "  ", "Ö3", "O\u00a04", "O#5", "x" * 200],
    "order_line_id": ["L1", "", " L2", "Ł3", "\t"],
    "product_id": ["", "P1", "P\u20ac"],
    "quantity": ["1", "0", "007", " 3 ", "-1", "+2", "1.0", "1e3", "999999999", "2147483647",
                 "2147483648", "9" * 30, "", "٣"],
    "reason": ["OUT_OF_STOCK", "defect", " Return ", "NOPE", "", "OUT_OF_STOCK\u0130"],
    "price_amount": ["10.00", "0", "012.50", "1.", ".5", "-1", "1e2", "1_0", "NaN", "١٢",
                     "123456789012.123456", "1234567890123", "", " 4.99 "],
    "price_currency": ["EUR", "eur", " usd ", "EU", "€UR", ""],
    "shipping_amount": ["0", "4.99", "", "x"],
    "shipping_currency": ["", "EUR", "usd", "ZZZZ"],
    "taxes": ["", "", "VAT:0.20", "  "],
    "shipping_taxes": ["", "", "TVA:1"],
}


def test_the_fast_first_check_agrees_with_the_full_check(tmp_path: Path) -> None:
    """Random rows, many hostile: wherever the fast check vouches for a row, the full
    check accepts it and writes the same line, units, total and currency; every row
    it declines is checked in full, so the two streams agree row for row."""
    from mirakl_cancel._jobs.input import CheckedLine
    from mirakl_cancel._jobs.job import _cancelation_total

    rnd = random.Random(14)
    source = tmp_path / "hostile.csv"
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(_PLAIN_HEADER)
        for _ in range(4000):
            # Mostly the plain value, so that many rows are plain and each oddity is met
            # alone as well as in company.
            cells = [_CELLS[name][0] if rnd.random() < 0.8 else rnd.choice(_CELLS[name])
                     for name in _PLAIN_HEADER]
            if rnd.random() < 0.02:
                cells.append("extra")
            elif rnd.random() < 0.02:
                cells.pop()
            writer.writerow(cells)
    full = list(open_input(source))
    fast = list(open_input(source, lines=True))
    assert len(fast) == len(full)
    vouched = 0
    for quick, slow in zip(fast, full, strict=True):
        if not isinstance(quick, CheckedLine):
            assert quick == slow
            continue
        vouched += 1
        assert not hasattr(slow, "issues"), (quick, slow)
        c = slow.cancelation  # type: ignore[union-attr]
        assert quick == CheckedLine(slow.row, slow.line, slow.order_id,  # type: ignore[union-attr]
                                    cancelation_json(c), c.quantity,
                                    str(_cancelation_total(c)), c.price.currency)
    assert 200 < vouched < 4000  # both paths were exercised
