"""Hostile inputs: crafted values and files, through the models, the reader and the real CLI.

Each class of attack gets a test: wrong types given to the models, absurd amounts and
quantities, oversized CSV cells, deep or malformed JSONL, terminal escapes in ids, and
spreadsheet formulas in report cells. The CLI runs as a subprocess (as users run it);
every bad input must exit 2 with the row named, no traceback, and nothing sent.
"""

from __future__ import annotations

import csv
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCALE, cli, env_for, poll_flags, read_report

from mirakl_cancel import (
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
    Tax,
    ValidationError,
)
from mirakl_cancel._jobs.input import FIELD_MAX_CHARS, parse_csv, parse_jsonl
from mirakl_cancel._jobs.report import ReportLine, ReportWriter
from mirakl_cancel._serde import structure_request
from mirakl_cancel._text import neutralise_cell, printable
from mirakl_cancel.models import AMOUNT_MAX_DIGITS, QUANTITY_MAX
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

HEADER = ("order_id,order_line_id,product_id,quantity,reason,price_amount,price_currency,"
          "shipping_amount,shipping_currency,taxes,shipping_taxes\n")
GOOD_ROW = "O1,O1-1,,1,RETURN,1.00,EUR,0,EUR,,\n"
GOOD_JSON: dict[str, Any] = {
    "order_id": "O1", "order_line_id": "O1-1", "quantity": 1, "reason": "RETURN",
    "price_amount": "1.00", "price_currency": "EUR", "shipping_amount": 0}


def money(amount: object = "1.00") -> Money:
    return Money(amount, "EUR")  # type: ignore[arg-type]


def fields(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"quantity": 1, "reason": CancelReason.RETURN, "price": money(),
                               "shipping_price": money("0"), "order_line_id": "L-1"}
    base.update(overrides)
    return base


def offline_env() -> dict[str, str]:
    """No credentials and no server: bad input must be refused before either matters."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")} | {
        "MIRAKL_CONNECT_BASE_URL": "http://127.0.0.1:9", "MIRAKL_CONNECT_TOKEN": "t"}


def assert_refused(result: Any, *fragments: str) -> None:
    """Exit 2, no traceback, each fragment in stderr."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- class 2: the models refuse wrong types with the field named, never TypeError ------

@pytest.mark.parametrize(("overrides", "field"), [
    ({"taxes": 123}, "taxes"),
    ({"taxes": "TVA:1"}, "taxes"),
    ({"shipping_taxes": {"code": "T"}}, "shipping_taxes"),
    ({"taxes": [123]}, "taxes[0]"),
    ({"price": 5}, "price"),
    ({"quantity": "1"}, "quantity"),
    ({"quantity": 1.0}, "quantity"),
    ({"reason": ["RETURN"]}, "reason"),
    ({"reason": {"a": 1}}, "reason"),
    ({"order_line_id": 7}, "order_line_id"),
    ({"order_line_id": None}, "order_line_id"),  # and no product_id: which line?
    ({"order_line_id": "L-\ud800"}, "order_line_id"),
    ({"order_line_id": None, "product_id": "P\udfff"}, "product_id"),
    ({"quantity": QUANTITY_MAX + 1}, "quantity"),
    ({"quantity": 10**22}, "quantity"),
])
def test_cancelation_wrong_values_are_validation_errors(overrides: dict[str, object],
                                                        field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Cancelation(**fields(**overrides))  # type: ignore[arg-type]
    assert field in info.value.fields


def test_a_cancelation_needs_a_line_id_or_a_product_id() -> None:
    with pytest.raises(ValidationError, match="neither order_line_id nor product_id"):
        Cancelation(**fields(order_line_id=None))  # type: ignore[arg-type]
    assert Cancelation(**fields(order_line_id=None, product_id="P1")).product_id == "P1"  # type: ignore[arg-type]
    assert Cancelation(**fields(quantity=QUANTITY_MAX)).quantity == QUANTITY_MAX  # type: ignore[arg-type]


@pytest.mark.parametrize("cancelations", [None, 5, "abc", {"quantity": 1}])
def test_cancel_request_wrong_cancelations_are_validation_errors(cancelations: object) -> None:
    with pytest.raises(ValidationError) as info:
        CancelRequest("O1", cancelations)  # type: ignore[arg-type]
    assert info.value.fields == ("cancelations",)


def test_cancel_request_and_tax_refuse_lone_surrogates() -> None:
    line = Cancelation(**fields())  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as info:
        CancelRequest("O\ud800", [line])
    assert info.value.fields == ("order_id",)
    with pytest.raises(ValidationError) as info:
        Tax("T\udc00", money())
    assert info.value.fields == ("code",)


def test_plain_data_with_wrong_types_is_a_validation_error_naming_the_path() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("O1", [{"quantity": 1, "reason": "RETURN", "order_line_id": "L",
                                  "price": {"amount": "1_000", "currency": "EUR"},
                                  "shipping_price": {"amount": "0", "currency": "EUR"},
                                  "taxes": 12}])
    assert set(info.value.fields) >= {"cancelations[0].price.amount", "cancelations[0].taxes"}
    with pytest.raises(ValidationError) as info:
        structure_request("O1", None)
    assert "cancelations" in info.value.fields


# --- class 4: amounts and quantities --------------------------------------------------

@pytest.mark.parametrize(("amount", "fragment"), [
    ("1_000", "not a decimal number"),
    ("\u0661\u0662", "not a decimal number"),            # Arabic-Indic digits
    ("\uff11", "not a decimal number"),                  # a full-width digit
    ("1e5000", "digits written out"),
    ("1E+1000000", "digits written out"),
    ("1E+999999999999999999999", "out of range"),
    (Decimal("1E+999999999"), "digits written out"),
    ("0.0000000000000000001", "digits written out"),
    ("1234567890123456789", "digits written out"),
    ("1" + "0" * AMOUNT_MAX_DIGITS, "19 digits written out"),
    ("1" * 100_000, "not a decimal number"),
    (10**19, "digits written out"),
    (10**400, "more than 18 digits"),
    ("NaN", "finite"),
    ("-Infinity", "finite"),
    ("sNaN", "finite"),
])
def test_money_refuses_hostile_amounts(amount: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        money(amount)
    assert info.value.fields == ("amount",)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 300  # the message quotes the value, cut


@pytest.mark.parametrize("amount", [
    "999999999999999999", "0.000000000000000001", "123456789.123456789", "1E+17", "0E+30",
    "1234567890123456.78"])
def test_money_accepts_amounts_within_the_bound(amount: str) -> None:
    assert money(amount).amount == Decimal(amount)


# --- class 5: files ---------------------------------------------------------------------

def test_csv_cell_over_the_field_limit_refuses_that_row_only() -> None:
    huge = "x" * (FIELD_MAX_CHARS + 1)
    text = HEADER + GOOD_ROW + f"O2,{huge},,1,RETURN,1,EUR,0,EUR,,\n" + \
        f'O3,"{huge}\n{huge}",,1,RETURN,1,EUR,0,EUR,,\n' + "O4,O4-1,,1,RETURN,1,EUR,0,EUR,,\n"
    parsed = parse_csv(text)
    assert [r.order_id for r in parsed.rows] == ["O1", "O4"]  # the row after: kept
    assert [(r.row, r.line) for r in parsed.invalid] == [(2, 3), (3, 4)]
    assert [r.line for r in parsed.rows] == [2, 6]  # the quoted two-line cell: lines 4-5
    assert all("characters long" in i.message and i.field == "order_line_id"
               for i in parsed.errors)


def test_csv_broken_quote_is_a_file_error() -> None:
    parsed = parse_csv(HEADER + GOOD_ROW + 'O2,"O2-1"x,,1,RETURN,1,EUR,0,EUR,,\n' + GOOD_ROW)
    assert parsed.file_errors and "row 2" in parsed.file_errors[0].message
    assert parsed.file_errors[0].line == 3


@pytest.mark.parametrize(("quantity", "fragment"), [
    ("10000000000000000000000", "more than 2147483647"),
    ("2147483648", "more than 2147483647"),
    ("9" * 5000, "more than 2147483647"),
])
def test_csv_quantity_beyond_the_api_integer(quantity: str, fragment: str) -> None:
    parsed = parse_csv(HEADER + f"O1,O1-1,,{quantity},RETURN,1,EUR,0,EUR,,\n")
    [issue] = parsed.errors
    assert issue.field == "quantity" and fragment in issue.message and len(issue.message) < 200


@pytest.mark.parametrize(("line", "field", "fragment"), [
    ('{"order_id":"O1","order_id":"O2"}', "order_id", "more than once"),
    ('{"order_id":"O1","price":{"amount":1,"amount":2}}', "amount", "more than once"),
    ('{"a":' + "[" * 100_000 + "]" * 100_000 + "}", None, "nested"),
    ('{"a":' + "[" * 40 + "]" * 40 + "}", None, "nested"),
    ('{"order_id":"O\\ud800"}', None, "lone surrogate"),
    ('{"k\\udfff":1}', None, "lone surrogate"),
    ('{"quantity":' + "9" * 5000 + "}", "quantity", "out of range"),
    ('{"price_amount":1e999999999999999999999}', "price_amount", "out of range"),
    ('{"price_amount":' + "9" * 5000 + "}", "price_amount", "out of range"),
    ('{"price_amount":1e5000}', "price_amount", "digits"),
    ('{"order_id":' + "1" * 100 + "}", "order_id", "string"),
])
def test_jsonl_hostile_lines_name_the_row(line: str, field: str | None, fragment: str) -> None:
    parsed = parse_jsonl(json.dumps(GOOD_JSON) + "\n" + line + "\n" + json.dumps(GOOD_JSON))
    assert [r.row for r in parsed.rows] == [1, 3]
    matching = [i for i in parsed.errors if i.row == 2 and i.field == field]
    assert matching, parsed.errors
    assert fragment in matching[0].message


def test_run_with_skip_invalid_after_a_huge_cell_sends_and_reports_every_later_row(
        tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 2.0), seed=11)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(3, (1, 1), wrong_state_ratio=0)
        rows = [f"{o.id},{o.lines[0].id},,1,RETURN,{o.lines[0].price},{o.lines[0].currency},"
                f"0,,,\n" for o in orders]
        source = tmp_path / "lines.csv"
        source.write_text(HEADER + rows[0] + "O-X," + "y" * 200_000 + ",,1,RETURN,1,EUR,0,,,\n"
                          + rows[1] + rows[2], encoding="utf-8")
        report = tmp_path / "report.jsonl"
        result = cli("run", str(source), "--skip-invalid", "--report", str(report),
                     *poll_flags(SCALE), env=env_for(sim))
        assert result.returncode == 1, result.stderr  # one INVALID row
        assert "Traceback" not in result.stderr
        assert "row 2 (line 3), order_line_id: is 200000 characters long" in result.stderr
        lines = read_report(report)
        assert [(line["row"], line["outcome"]) for line in lines] == [
            (1, "SUCCEEDED"), (2, "INVALID"), (3, "SUCCEEDED"), (4, "SUCCEEDED")]
        stats = sim.stats_snapshot()
        assert sorted(stats["posts_per_order"]) == sorted(o.id for o in orders)
        assert stats["duplicate_posts"] == 0


@pytest.mark.parametrize(("name", "content", "fragments"), [
    ("amount.csv", HEADER + GOOD_ROW + "O2,O2-1,,1,RETURN,1E+1000000,EUR,0,EUR,,\n",
     ["row 2 (line 3), price_amount: has 1000001 digits written out"]),
    ("underscore.csv", HEADER + "O2,O2-1,,1,RETURN,1_000,EUR,0,EUR,,\n",
     ["row 1 (line 2), price_amount: '1_000' is not a decimal number"]),
    ("arabic.csv", HEADER + "O2,O2-1,,1,RETURN,\u0661\u0660,EUR,0,EUR,,\n",
     ["row 1 (line 2), price_amount"]),
    ("quantity.csv", HEADER + "O2,O2-1,,10000000000000000000000,RETURN,1,EUR,0,EUR,,\n",
     ["row 1 (line 2), quantity"]),
    ("deep.jsonl", json.dumps(GOOD_JSON) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n",
     ["row 2 (line 2): not valid JSON: nested"]),
    ("surrogate.jsonl", '{"order_id": "\\ud83d", "quantity": 1}\n',
     ["row 1 (line 1): order_id: contains a lone surrogate"]),
    ("duplicate.jsonl", '{"order_id": "O1", "quantity": 1, "quantity": 5}\n',
     ["row 1 (line 1), quantity: appears more than once"]),
    ("broken.csv", HEADER + GOOD_ROW + 'O2,"O2-1"x,,1,RETURN,1,EUR,0,EUR,,\n' + GOOD_ROW,
     ["line 3: unreadable CSV in row 2"]),
])
@pytest.mark.parametrize("mode", ["--dry-run", "--skip-invalid"])
def test_cli_refuses_hostile_files_with_the_row_named(
        tmp_path: Path, name: str, content: str, fragments: list[str], mode: str) -> None:
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    result = cli("run", str(source), mode, env=offline_env())
    if mode == "--skip-invalid" and name in ("amount.csv", "deep.jsonl"):
        # A valid row is then sent (to no server here, so it fails later); the bad row
        # was named before anything else, without a traceback.
        assert "Traceback" not in result.stderr
        assert all(fragment in result.stderr for fragment in fragments), result.stderr
        return
    assert_refused(result, *fragments)
    assert not (tmp_path / f"{name}.journal.sqlite").exists()


# --- class 6: outputs ---------------------------------------------------------------------

def test_printable_escapes_controls_and_invisible_characters() -> None:
    assert printable("O\x1b]0;pwned\x07-1") == "O\\x1b]0;pwned\\x07-1"
    assert printable("a\u202eb\u200bc\x9bd\ud800") == "a\\u202eb\\u200bc\\x9bd\\ud800"
    assert printable("Zoë 東京 №5") == "Zoë 東京 №5"
    assert printable("x" * 500).endswith("... (500 characters, cut)")
    assert printable("x" * 500, limit=None) == "x" * 500


@pytest.mark.parametrize(("cell", "expected"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("+1", "'+1"), ("-1+2", "'-1+2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("O-1", "O-1"), ("", ""), ("a=b", "a=b"),
])
def test_neutralise_cell(cell: str, expected: str) -> None:
    assert neutralise_cell(cell) == expected


def _line(**overrides: Any) -> ReportLine:
    values: dict[str, Any] = {
        "row": 1, "line": 2, "order_id": "=cmd|'/c calc'!A1", "order_line_id": "+L",
        "product_id": "@P", "quantity": 1, "outcome": "FAILED", "action_id": "-a",
        "status": "FAILED", "errors": ("=1+1", "x"), "request": "r"}
    values.update(overrides)
    return ReportLine(**values)


def _render(tmp_path: Path, kind: str) -> str:
    path = tmp_path / f"report.{kind}"
    with ReportWriter(path) as writer:
        writer.add(_line())
    return path.read_text(encoding="utf-8")


def test_csv_report_cells_are_neutralised_and_jsonl_kept_raw(tmp_path: Path) -> None:
    [row] = list(csv.DictReader(_render(tmp_path, "csv").splitlines()))
    assert row["order_id"] == "'=cmd|'/c calc'!A1"
    assert row["order_line_id"] == "'+L" and row["product_id"] == "'@P"
    assert row["action_id"] == "'-a" and row["errors"] == "'=1+1 | x"
    assert row["quantity"] == "1" and row["outcome"] == "FAILED"
    [data] = [json.loads(text) for text in _render(tmp_path, "jsonl").splitlines()]
    assert data["order_id"] == "=cmd|'/c calc'!A1" and data["errors"] == ["=1+1", "x"]


def test_dry_run_escapes_ids_and_the_csv_report_neutralises_them(tmp_path: Path) -> None:
    source = tmp_path / "lines.jsonl"
    evil = "\x1b]0;owned\x07=2+3"
    source.write_text(json.dumps({**GOOD_JSON, "order_id": evil}) + "\n", encoding="utf-8")
    result = cli("run", str(source), "--dry-run", env=offline_env())
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b]0;owned\\x07=2+3: 1 line(s)" in result.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**GOOD_JSON, "reason": "\x1b[2J" + "NOPE"}) + "\n",
                   encoding="utf-8")
    refused = cli("run", str(bad), "--dry-run", env=offline_env())
    assert_refused(refused, "reason")
    assert "\x1b" not in refused.stderr
