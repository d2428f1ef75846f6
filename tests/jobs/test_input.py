"""Reading bulk-cancel files: every error kind, located by row and line; exact decimals."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from mirakl_cancel import CancelReason, Money, Tax
from mirakl_cancel._jobs.input import (
    InputError,
    InputFormat,
    detect_format,
    parse_csv,
    parse_jsonl,
    read_input,
)

HEADER = ("order_id,order_line_id,product_id,quantity,reason,price_amount,price_currency,"
          "shipping_amount,shipping_currency,taxes,shipping_taxes\n")
GOOD = "O1,O1-1,,2,OUT_OF_STOCK,19.99,EUR,4.10,EUR,TVA:3.33;ECO:0.10,TVA:0.82\n"


def csv_of(*rows: str) -> str:
    return HEADER + "".join(rows)


def errors_of(text: str) -> list[tuple[int | None, int | None, str | None]]:
    parsed = parse_csv(text)
    return [(i.row, i.line, i.field) for i in parsed.errors]


def test_good_csv_row_is_exact() -> None:
    parsed = parse_csv(csv_of(GOOD))
    assert parsed.errors == ()
    (row,) = parsed.rows
    assert (row.row, row.line, row.order_id) == (1, 2, "O1")
    c = row.cancelation
    assert c.quantity == 2 and c.reason is CancelReason.OUT_OF_STOCK
    assert c.price == Money(Decimal("19.99"), "EUR")
    assert str(c.price.amount) == "19.99"  # the very digits of the file
    assert c.shipping_price == Money(Decimal("4.10"), "EUR")
    assert str(c.shipping_price.amount) == "4.10"
    assert c.taxes == (Tax("TVA", Money(Decimal("3.33"), "EUR")),
                       Tax("ECO", Money(Decimal("0.10"), "EUR")))
    assert c.shipping_taxes == (Tax("TVA", Money(Decimal("0.82"), "EUR")),)
    assert c.order_line_id == "O1-1" and c.product_id is None


def test_csv_semicolon_export_with_bom_and_lowercase_values(tmp_path: Path) -> None:
    text = ("\ufefforder_id;product_id;quantity;reason;price_amount;price_currency;"
            "shipping_amount\r\nO1;SKU-1;1;out_of_stock;0.1;eur;0\r\n")
    path = tmp_path / "x.csv"
    path.write_bytes(text.encode())
    parsed = read_input(path)
    assert parsed.errors == ()
    c = parsed.rows[0].cancelation
    assert c.product_id == "SKU-1" and c.price == Money(Decimal("0.1"), "EUR")
    assert c.shipping_price.currency == "EUR"  # shipping currency defaults to the price's


@pytest.mark.parametrize(("cells", "field", "fragment"), [
    ("O1,O1-1,,-1,RETURN,1,EUR,0,EUR,,", "quantity", "negative"),
    ("O1,O1-1,,1.5,RETURN,1,EUR,0,EUR,,", "quantity", "whole number"),
    ("O1,O1-1,,two,RETURN,1,EUR,0,EUR,,", "quantity", "whole number"),
    ("O1,O1-1,,,RETURN,1,EUR,0,EUR,,", "quantity", "required"),
    ("O1,O1-1,,1,BROKEN,1,EUR,0,EUR,,", "reason", "unknown reason"),
    ("O1,O1-1,,1,RETURN,1,EURO,0,EUR,,", "price_currency", "ISO-4217"),
    ("O1,O1-1,,1,RETURN,1,€,0,EUR,,", "price_currency", "ISO-4217"),
    ("O1,O1-1,,1,RETURN,1,50,EUR,0,EUR,,", None, "fields"),
    ("O1,O1-1,,1,RETURN,\"1,50\",EUR,0,EUR,,", "price_amount", "decimal number"),
    ("O1,O1-1,,1,RETURN,-3,EUR,0,EUR,,", "price_amount", "negative"),
    ("O1,O1-1,,1,RETURN,NaN,EUR,0,EUR,,", "price_amount", "finite"),
    ("O1,O1-1,,1,RETURN,1,EUR,,EUR,,", "shipping_amount", "required"),
    ("O1,O1-1,,1,RETURN,1,EUR,0,USD,,", "shipping_currency", "one currency"),
    (",O1-1,,1,RETURN,1,EUR,0,EUR,,", "order_id", "required"),
    ("  ,O1-1,,1,RETURN,1,EUR,0,EUR,,", "order_id", "required"),
    ("O1,,,1,RETURN,1,EUR,0,EUR,,", "order_line_id", "neither"),
    ("O1,O1-1,,1,RETURN,1,EUR,0,EUR,TVA,", "taxes", "CODE:AMOUNT"),
    ("O1,O1-1,,1,RETURN,1,EUR,0,EUR,TVA:x,", "taxes[1] amount", "decimal"),
])
def test_csv_error_kinds(cells: str, field: str | None, fragment: str) -> None:
    text = csv_of(GOOD, cells + "\n")
    parsed = parse_csv(text)
    assert len(parsed.rows) == 1 and len(parsed.invalid) == 1
    matching = [i for i in parsed.errors if i.field == field]
    assert matching, parsed.errors
    issue = matching[0]
    assert (issue.row, issue.line) == (2, 3)
    assert fragment in issue.message
    assert str(issue).startswith(f"error: row 2 (line 3){', ' + field if field else ''}: ")


def test_every_problem_of_a_row_is_reported_at_once() -> None:
    parsed = parse_csv(csv_of("O1,,,-2,NOPE,abc,EU,1,EUR,,\n"))
    assert {i.field for i in parsed.errors} == {
        "order_line_id", "quantity", "reason", "price_amount", "price_currency"}
    assert all((i.row, i.line) == (1, 2) for i in parsed.errors)


def test_missing_columns_are_header_errors() -> None:
    parsed = parse_csv("order_id,quantity,reason\nO1,1,RETURN\n")
    assert parsed.rows == () and parsed.file_errors
    messages = " ".join(i.message for i in parsed.file_errors)
    for name in ("price_amount", "price_currency", "shipping_amount", "order_line_id"):
        assert name in messages
    assert all(i.line == 1 and i.row is None for i in parsed.file_errors)


def test_unknown_columns_warn_and_blank_lines_are_not_rows() -> None:
    parsed = parse_csv(csv_of(GOOD, "\n", GOOD.replace("O1-1", "O1-2")).replace(
        "shipping_taxes\n", "shipping_taxes,note\n"))
    assert parsed.errors == ()
    assert [w.message for w in parsed.warnings] == ["ignoring unknown column(s): note"]
    assert [(r.row, r.line) for r in parsed.rows] == [(1, 2), (2, 4)]


def test_quoted_multiline_cell_keeps_line_numbers_right() -> None:
    text = csv_of('O1,"O1-\n1",,1,RETURN,1,EUR,0,EUR,,\n', "O2,O2-1,,x,RETURN,1,EUR,0,EUR,,\n")
    parsed = parse_csv(text)
    (issue,) = parsed.errors
    assert (issue.row, issue.line) == (2, 4)


def test_duplicate_identical_rows_warn_but_are_kept() -> None:
    parsed = parse_csv(csv_of(GOOD, GOOD))
    assert parsed.errors == () and len(parsed.rows) == 2
    (warning,) = parsed.warnings
    assert (warning.row, warning.line) == (2, 3) and "identical to row 1 (line 2)" in \
        warning.message


def test_empty_csv_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        parse_csv("")


# --- JSONL --------------------------------------------------------------------------------

def test_jsonl_numbers_are_decimal_never_float() -> None:
    text = ('{"order_id":"O1","order_line_id":"O1-1","quantity":1,"reason":"RETURN",'
            '"price_amount":0.1,"price_currency":"EUR","shipping_amount":"0.20",'
            '"shipping_currency":"EUR","taxes":[{"code":"TVA","amount":{"amount":0.02,'
            '"currency":"EUR"}}],"shipping_taxes":[{"code":"TVA","amount":0.04}]}\n')
    parsed = parse_jsonl(text)
    assert parsed.errors == ()
    c = parsed.rows[0].cancelation
    assert c.price.amount == Decimal("0.1") and str(c.price.amount) == "0.1"
    assert str(c.shipping_price.amount) == "0.20"
    assert c.taxes[0].amount == Money(Decimal("0.02"), "EUR")
    assert c.shipping_taxes[0].amount == Money(Decimal("0.04"), "EUR")  # currency defaulted


def test_jsonl_accepts_the_api_money_shape() -> None:
    text = ('{"order_id":"O1","product_id":"P","quantity":3,"reason":"DEFECT",'
            '"price":{"amount":"59.97","currency":"GBP"},'
            '"shipping_price":{"amount":0,"currency":"GBP"}}')
    parsed = parse_jsonl(text)
    assert parsed.errors == ()
    assert parsed.rows[0].cancelation.price == Money(Decimal("59.97"), "GBP")


@pytest.mark.parametrize(("line", "field", "fragment"), [
    ('{"order_id":"O1","order_line_id":"L","quantity":1.0,"reason":"RETURN",'
     '"price_amount":1,"price_currency":"EUR","shipping_amount":0}', "quantity", "whole"),
    ('{"order_id":"O1","order_line_id":"L","quantity":true,"reason":"RETURN",'
     '"price_amount":1,"price_currency":"EUR","shipping_amount":0}', "quantity", "integer"),
    ('{"order_id":1,"order_line_id":"L","quantity":1,"reason":"RETURN",'
     '"price_amount":1,"price_currency":"EUR","shipping_amount":0}', "order_id", "string"),
    ('{"order_id":"O1","order_line_id":"L","quantity":1,"reason":"RETURN",'
     '"price_amount":1,"price_currency":"EUR","shipping_amount":0,'
     '"taxes":[{"code":"T","amount":{"amount":1,"currency":"USD"}}]}', "taxes", "one currency"),
    ('{"order_id":"O1","order_line_id":"L","quantity":1,"reason":"RETURN",'
     '"price_amount":1,"price":{"amount":1,"currency":"EUR"},"shipping_amount":0}',
     "price", "not both"),
    ('{"order_id":"O1"', None, "not valid JSON"),
    ('[1, 2]', None, "JSON object"),
    ('{"order_id":"O1","order_line_id":"L","quantity":1,"reason":"RETURN",'
     '"price_amount":NaN,"price_currency":"EUR","shipping_amount":0}', None, "JSON"),
])
def test_jsonl_error_kinds(line: str, field: str | None, fragment: str) -> None:
    good = ('{"order_id":"O1","order_line_id":"L","quantity":1,"reason":"RETURN",'
            '"price_amount":1,"price_currency":"EUR","shipping_amount":0}')
    parsed = parse_jsonl(good + "\n\n" + line + "\n")
    matching = [i for i in parsed.errors if i.field == field]
    assert matching, parsed.errors
    assert (matching[0].row, matching[0].line) == (2, 3)  # blank line 2 is not a row
    assert fragment in matching[0].message


def test_format_detection() -> None:
    assert detect_format(Path("a.CSV")) is InputFormat.CSV
    assert detect_format(Path("a.jsonl")) is InputFormat.JSONL
    assert detect_format(Path("a.data"), "jsonl") is InputFormat.JSONL
    with pytest.raises(InputError, match="--format"):
        detect_format(Path("a.data"))
    with pytest.raises(InputError, match="unknown format"):
        detect_format(Path("a.csv"), "xml")


def test_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    csv_rows = read_input(root / "cancel-lines.csv")
    jsonl_rows = read_input(root / "cancel-lines.jsonl")
    assert csv_rows.errors == () and jsonl_rows.errors == ()
    assert csv_rows.rows and jsonl_rows.rows
