"""Read a bulk-cancel file (CSV or JSONL) into validated line cancels.

Every row is checked before anything is sent, and *every* problem is reported, each
with where it is: the 1-based data row (the CSV header is not a row) and the physical
line of the file (the CSV header is line 1), e.g. ``row 7 (line 8), quantity: ...``.
A user fixing a 3,000-row export wants the whole list at once, not one error per run.

Amounts are read as ``Decimal`` from their text (JSONL is parsed with
``parse_float=Decimal``), never through a binary float: a refund must be exactly
what the file says.
"""

from __future__ import annotations

import codecs
import csv
import enum
import io
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from .._serde import plain_cancelation_json
from .._text import printable
from ..errors import ValidationError
from ..models import (
    AMOUNT_MAX_DIGITS,
    QUANTITY_MAX,
    Cancelation,
    CancelReason,
    Money,
    Tax,
    coerce_amount,
)

__all__ = [
    "COLUMNS",
    "CheckedLine",
    "InputError",
    "InputFormat",
    "InputIssue",
    "InputRow",
    "InvalidRow",
    "ParsedInput",
    "RowStream",
    "detect_format",
    "open_input",
    "parse_csv",
    "parse_jsonl",
    "read_input",
]

#: Every column (CSV) or key (JSONL) the reader knows.
COLUMNS = (
    "order_id", "order_line_id", "product_id", "quantity", "reason",
    "price_amount", "price_currency", "shipping_amount", "shipping_currency",
    "taxes", "shipping_taxes",
)
#: Columns a CSV header must have; `order_line_id`/`product_id` need one of the two.
REQUIRED_COLUMNS = ("order_id", "quantity", "reason", "price_amount", "price_currency",
                    "shipping_amount")
_JSONL_EXTRA_KEYS = ("price", "shipping_price")
_CURRENCY = re.compile(r"[A-Z]{3}")
_INTEGER = re.compile(r"[+-]?[0-9]+")
#: The longest cell (CSV) or string (JSONL) a row may hold: the csv module's own default
#: field limit. Longer ones are refused for their row only; the rest of the file is read.
FIELD_MAX_CHARS = 128 * 1024
#: How deeply a JSONL line may nest; a row needs 4 levels (row, taxes, tax, amount).
JSONL_MAX_DEPTH = 32
_REASONS = {r.value: r for r in CancelReason}


class InputFormat(str, enum.Enum):
    """The two file formats `mirakl-cancel run` reads."""

    CSV = "csv"
    JSONL = "jsonl"

    def __str__(self) -> str:
        return self.value


class InputError(Exception):
    """The file cannot be read at all (missing, unknown format, unreadable header)."""


@attrs.frozen
class InputIssue:
    """One problem (or warning) in the input, located by data row, file line and field."""

    message: str
    row: int | None = None
    line: int | None = None
    field: str | None = None
    warning: bool = False

    @property
    def where(self) -> str:
        """`row 7 (line 8)`, `line 1` (header) or `file`."""
        if self.row is not None:
            return f"row {self.row} (line {self.line})" if self.line is not None \
                else f"row {self.row}"
        return f"line {self.line}" if self.line is not None else "file"

    def __str__(self) -> str:
        # Printed to a terminal: a field or message quoting the file must not carry
        # escape sequences through (the issue itself keeps the raw text for the report).
        kind = "warning" if self.warning else "error"
        field = f", {printable(self.field, 80)}" if self.field else ""
        return f"{kind}: {self.where}{field}: {printable(self.message, 400)}"


@attrs.frozen
class InputRow:
    """A valid row: one line cancel of one order."""

    row: int
    line: int
    order_id: str
    cancelation: Cancelation


class CheckedLine(NamedTuple):
    """A valid row as the job stages it (`open_input(..., lines=True)`): its cancelation
    already written as JSON, without the model objects (a million-row file is checked
    without building three million of them)."""

    row: int
    line: int
    order_id: str
    #: The cancelation exactly as `cancelation_json` writes it.
    json: str
    quantity: int
    #: What the line refunds (price + shipping + taxes), in `currency`, as exact text.
    total: str
    currency: str


@attrs.frozen
class InvalidRow:
    """A row that failed checking, kept so the report still has one line per input row."""

    row: int
    line: int
    order_id: str | None
    order_line_id: str | None
    product_id: str | None
    quantity: int | None
    issues: tuple[InputIssue, ...]


@attrs.frozen
class ParsedInput:
    """Everything read from a file: valid rows, invalid rows and all issues found."""

    format: InputFormat
    rows: tuple[InputRow, ...]
    invalid: tuple[InvalidRow, ...]
    issues: tuple[InputIssue, ...]

    @property
    def errors(self) -> tuple[InputIssue, ...]:
        """Issues that block sending (unless invalid rows are skipped)."""
        return tuple(issue for issue in self.issues if not issue.warning)

    @property
    def warnings(self) -> tuple[InputIssue, ...]:
        """Issues worth a look that do not block sending (e.g. duplicate rows)."""
        return tuple(issue for issue in self.issues if issue.warning)

    @property
    def file_errors(self) -> tuple[InputIssue, ...]:
        """Errors not tied to one row (header): these block even `--skip-invalid`."""
        return tuple(issue for issue in self.errors if issue.row is None)

    @property
    def row_count(self) -> int:
        """Data rows in the file, valid or not."""
        return len(self.rows) + len(self.invalid)


def detect_format(path: Path, explicit: str | None = None) -> InputFormat:
    """The format named by `--format`, else by the file extension."""
    if explicit:
        try:
            return InputFormat(explicit.lower())
        except ValueError:
            raise InputError(f"unknown format {explicit!r}: use csv or jsonl") from None
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return InputFormat.CSV
    if suffix in (".jsonl", ".ndjson", ".json"):
        return InputFormat.JSONL
    raise InputError(f"cannot tell the format of {path.name} from its extension: "
                     "use --format csv or --format jsonl")


def read_input(path: Path, fmt: str | None = None, *, encoding: str | None = None,
               decimal_comma: bool | None = None) -> ParsedInput:
    """Read and check a whole file; raises InputError only when it cannot be read at all.

    `encoding`: the file's text encoding (default UTF-8, with or without a BOM), e.g.
    `cp1252` for a Windows spreadsheet export. `decimal_comma` (CSV): True reads amounts
    written `12,34` (and `1.234,56`); None detects it (see `parse_csv`); False never.
    Holds every row in memory: the job streams with `open_input` instead.
    """
    stream = open_input(path, fmt, encoding=encoding, decimal_comma=decimal_comma)
    return _finish(stream.format, list(stream), stream.issues)


#: Bytes read at a time (checking the encoding): memory does not grow with the file.
_BLOCK = 1 << 20


def _check_encoding(path: Path, encoding: str | None) -> str:
    """The codec to read `path` with, once a fast pass in blocks has decoded all of it;
    InputError naming the first byte that does not decode."""
    codec = encoding or "utf-8-sig"  # tolerate the BOM that spreadsheet exports add
    try:
        decoder = codecs.getincrementaldecoder(codec)()
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1)") \
            from None
    offset = 0
    try:
        with path.open("rb") as handle:
            while block := handle.read(_BLOCK):
                decoder.decode(block)
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        named = encoding or "UTF-8"
        raise InputError(f"{path} is not {named} text (byte {offset + exc.start}): save it "
                         "as UTF-8, or give its encoding, e.g. --encoding cp1252 for a "
                         "Windows spreadsheet export") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return codec


class RowStream:
    """The rows of one file, checked one at a time as they are read (bounded memory).

    Iterate it once; each item is an `InputRow` or an `InvalidRow` (or, if asked for, a
    `CheckedLine`), in file order.
    `issues` holds the issues not tied to one row (the CSV header's, the JSONL unknown
    keys): complete once the iteration is over. Identical duplicate rows are not looked
    for here (that needs every row: the job's store does it); `read_input` does.
    """

    def __init__(self, kind: InputFormat, rows: Iterator[InputRow | InvalidRow | CheckedLine],
                 issues: list[InputIssue]) -> None:
        self.format = kind
        self.issues = issues
        self._rows = rows

    def __iter__(self) -> Iterator[InputRow | InvalidRow | CheckedLine]:
        return self._rows


def open_input(path: Path, fmt: str | None = None, *, encoding: str | None = None,
               decimal_comma: bool | None = None, lines: bool = False) -> RowStream:
    """Check the encoding, then stream the file's rows (see `read_input` for the options);
    InputError if it cannot be read.

    `lines`: a valid CSV row of the plain shape most files have may come as a
    `CheckedLine` instead of an `InputRow` (see `_plain_csv_row`); every other row is
    checked, and comes, as without it."""
    kind = detect_format(path, fmt)
    codec = _check_encoding(path, encoding)
    issues: list[InputIssue] = []

    def text_lines() -> Iterator[str]:
        try:
            handle = path.open(encoding=codec, newline="")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
        with handle:
            first = True
            for line in handle:
                if first and encoding and line.startswith("\ufeff"):
                    line = line[1:]
                first = False
                yield line

    def rows() -> Iterator[InputRow | InvalidRow | CheckedLine]:
        if kind is InputFormat.CSV:
            # Detection reads every amount first: a second pass over the file, not memory.
            yield from _csv_rows(text_lines(), issues, decimal_comma=decimal_comma,
                                 peek=text_lines, plain=lines)
        else:
            yield from _jsonl_rows(text_lines(), issues)

    return RowStream(kind, rows(), issues)


# --- field checks shared by both formats ----------------------------------------------

class _Row:
    """Collects the issues of one row while its fields are checked."""

    def __init__(self, row: int, line: int) -> None:
        self.row = row
        self.line = line
        self.issues: list[InputIssue] = []

    def error(self, field: str | None, message: str) -> None:
        self.issues.append(InputIssue(message, self.row, self.line, field))


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(r: _Row, name: str, value: object, *, required: bool) -> str | None:
    if _blank(value):
        if required:
            r.error(name, "is required")
        return None
    if not isinstance(value, str):
        r.error(name, f"must be a string, not {_json_type(value)}")
        return None
    return value.strip()


def _quantity(r: _Row, value: object) -> int | None:
    if _blank(value):
        r.error("quantity", "is required")
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _INTEGER.fullmatch(text):
            try:
                Decimal(text)
            except InvalidOperation:
                r.error("quantity", f"{_shown(text)} is not a whole number")
            else:
                r.error("quantity", f"{_shown(text)} is not a whole number of units")
            return None
        if len(text.lstrip("+-").lstrip("0")) > len(str(QUANTITY_MAX)):
            # Checked on the text: int() of 5,000 digits raises (and 10**22 overflows
            # the journal's integer column); the number itself is bounded just below.
            r.error("quantity", f"{_shown(text)} is more than {QUANTITY_MAX}, the most the "
                                "API takes")
            return None
        number = int(text)
    elif isinstance(value, _HugeNumber):
        r.error("quantity", f"{_shown(value.text)} is out of range: the most the API takes is "
                            f"{QUANTITY_MAX}")
        return None
    elif isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Decimal):
            r.error("quantity", f"{value} is not a whole number of units")
        else:
            r.error("quantity", f"must be an integer, not {_json_type(value)}")
        return None
    else:
        number = value
    if number < 0:
        r.error("quantity", f"{number} is negative: the quantity to cancel must be 0 or more")
        return None
    if number > QUANTITY_MAX:
        r.error("quantity", f"{number} is more than {QUANTITY_MAX}, the most the API takes")
        return None
    return number


def _shown(text: str) -> str:
    """User text quoted for a message, cut when long (a message must stay one line)."""
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} chars)"


def _reason(r: _Row, value: object) -> CancelReason | None:
    if _blank(value):
        r.error("reason", "is required")
        return None
    if not isinstance(value, str):
        r.error("reason", f"must be a string, not {_json_type(value)}")
        return None
    reason = _REASONS.get(value.strip().upper())
    if reason is None:
        r.error("reason", f"unknown reason {value.strip()!r}; expected one of "
                          + ", ".join(_REASONS))
    return reason


def _amount(r: _Row, name: str, value: object, *, required: bool = True) -> Decimal | None:
    if _blank(value):
        if required:
            r.error(name, "is required")
        return None
    if isinstance(value, _HugeNumber):
        r.error(name, f"{_shown(value.text)} is out of range: an amount has at most "
                      f"{AMOUNT_MAX_DIGITS} digits")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        r.error(name, f"must be a number, not {_json_type(value)}")
        return None
    # The model's rule (ASCII digits, at most AMOUNT_MAX_DIGITS digits, finite): one home.
    amount = coerce_amount(value)
    if isinstance(amount, str):
        if amount.endswith("greater than or equal to 0"):
            amount = f"{value} is negative: amounts must be 0 or more"
        r.error(name, amount)
        return None
    return amount


def _currency(r: _Row, name: str, value: object, default: str | None) -> str | None:
    if _blank(value):
        if default is None:
            r.error(name, "is required")
        return default
    if not isinstance(value, str):
        r.error(name, f"must be a string, not {_json_type(value)}")
        return None
    code = value.strip().upper()
    if not _CURRENCY.fullmatch(code):
        r.error(name, f"{value.strip()!r} is not an ISO-4217 currency code (e.g. EUR)")
        return None
    return code


def _csv_taxes(r: _Row, name: str, value: object) -> list[tuple[str, Decimal, str | None]]:
    """`CODE:AMOUNT;CODE:AMOUNT` (blank: no taxes)."""
    if _blank(value):
        return []
    assert isinstance(value, str)
    taxes: list[tuple[str, Decimal, str | None]] = []
    for i, part in enumerate(p.strip() for p in value.split(";")):
        if not part:
            continue
        code, sep, amount_text = part.partition(":")
        if not sep or not code.strip():
            r.error(name, f"tax {i + 1} {part!r} must be CODE:AMOUNT (e.g. TVA:1.99)")
            continue
        amount = _amount(r, f"{name}[{i + 1}] amount", amount_text)
        if amount is not None:
            taxes.append((code.strip(), amount, None))
    return taxes


def _json_taxes(r: _Row, name: str, value: object) -> list[tuple[str, Decimal, str | None]]:
    """`[{code, amount: {amount, currency?}}]`; a bare amount takes the price currency."""
    if value is None:
        return []
    if not isinstance(value, list):
        r.error(name, f"must be an array of {{code, amount}}, not {_json_type(value)}")
        return []
    taxes: list[tuple[str, Decimal, str | None]] = []
    for i, item in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping):
            r.error(where, "must be an object {code, amount: {amount, currency}}")
            continue
        code = _text(r, f"{where}.code", item.get("code"), required=True)
        money = item.get("amount")
        currency: str | None = None
        if isinstance(money, Mapping):
            amount = _amount(r, f"{where}.amount.amount", money.get("amount"))
            currency = _currency(r, f"{where}.amount.currency", money.get("currency"), "")
            currency = currency or None
        else:
            amount = _amount(r, f"{where}.amount", money)
        if code is not None and amount is not None:
            taxes.append((code, amount, currency))
    return taxes


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, Decimal, _HugeNumber)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _check_row(r: _Row, fields: Mapping[str, Any], *, jsonl: bool) -> InputRow | InvalidRow:
    """Check every field of one row and build its Cancelation, or say what is wrong."""
    oversized = [(name, len(value)) for name, value in fields.items()
                 if isinstance(value, str) and len(value) > FIELD_MAX_CHARS]
    if oversized:  # nothing else of such a row is worth checking (or quoting)
        for name, size in oversized:
            r.error(printable(name, 80), f"is {size} characters long, more than the "
                                         f"{FIELD_MAX_CHARS} a field may have")
        return InvalidRow(r.row, r.line, None, None, None, None, tuple(r.issues))
    order_id = _text(r, "order_id", fields.get("order_id"), required=True)
    line_id = _text(r, "order_line_id", fields.get("order_line_id"), required=False)
    product_id = _text(r, "product_id", fields.get("product_id"), required=False)
    if line_id is None and product_id is None and not any(
            i.field in ("order_line_id", "product_id") for i in r.issues):
        r.error("order_line_id", "neither order_line_id nor product_id is given: one is needed "
                                 "to say which line to cancel")
    quantity = _quantity(r, fields.get("quantity"))
    reason = _reason(r, fields.get("reason"))

    price_amount_raw: object = fields.get("price_amount")
    price_currency_raw: object = fields.get("price_currency")
    shipping_amount_raw: object = fields.get("shipping_amount")
    shipping_currency_raw: object = fields.get("shipping_currency")
    if jsonl:  # the API's nested Money objects are accepted as well as the flat keys
        for key, names in (("price", ("price_amount", "price_currency")),
                           ("shipping_price", ("shipping_amount", "shipping_currency"))):
            nested = fields.get(key)
            if nested is None:
                continue
            if not isinstance(nested, Mapping):
                r.error(key, "must be an object {amount, currency}")
                continue
            if any(fields.get(n) is not None for n in names):
                r.error(key, f"give either {key} or {' and '.join(names)}, not both")
                continue
            if key == "price":
                price_amount_raw, price_currency_raw = nested.get("amount"), nested.get("currency")
            else:
                shipping_amount_raw = nested.get("amount")
                shipping_currency_raw = nested.get("currency")
    price_amount = _amount(r, "price_amount", price_amount_raw)
    currency = _currency(r, "price_currency", price_currency_raw, None)
    shipping_amount = _amount(r, "shipping_amount", shipping_amount_raw)
    shipping_currency = _currency(r, "shipping_currency", shipping_currency_raw, currency)
    if currency and shipping_currency and shipping_currency != currency:
        r.error("shipping_currency", f"{shipping_currency} differs from price_currency "
                                     f"{currency}: one row must use one currency")
    parse_taxes = _json_taxes if jsonl else _csv_taxes
    tax_groups: dict[str, list[Tax]] = {}
    for group in ("taxes", "shipping_taxes"):
        tax_groups[group] = []
        for code, amount, tax_currency in parse_taxes(r, group, fields.get(group)):
            if tax_currency and currency and tax_currency != currency:
                r.error(group, f"tax {code} is in {tax_currency} but price_currency is "
                               f"{currency}: one row must use one currency")
            elif currency:
                tax_groups[group].append(Tax(code, Money(amount, currency)))

    if not r.issues:
        assert order_id is not None and quantity is not None and reason is not None
        assert price_amount is not None and shipping_amount is not None and currency
        try:
            cancelation = Cancelation(
                quantity=quantity, reason=reason, price=Money(price_amount, currency),
                shipping_price=Money(shipping_amount, currency), order_line_id=line_id,
                product_id=product_id, taxes=tax_groups["taxes"],
                shipping_taxes=tax_groups["shipping_taxes"])
        except ValidationError as exc:  # a rule of the model this reader did not foresee
            for issue in exc.issues:
                r.error(issue.path, issue.message)
        else:
            return InputRow(r.row, r.line, order_id, cancelation)
    return InvalidRow(r.row, r.line, order_id, line_id, product_id, quantity, tuple(r.issues))


def _finish(kind: InputFormat, results: Sequence[InputRow | InvalidRow | CheckedLine],
            issues: list[InputIssue]) -> ParsedInput:
    rows: list[InputRow] = []
    invalid: list[InvalidRow] = []
    seen: dict[tuple[str, Cancelation], InputRow] = {}
    for result in results:
        assert not isinstance(result, CheckedLine)  # only asked for by the job's stream
        if isinstance(result, InvalidRow):
            invalid.append(result)
            issues.extend(result.issues)
            continue
        rows.append(result)
        key = (result.order_id, result.cancelation)
        first = seen.setdefault(key, result)
        if first is not result:
            issues.append(InputIssue(
                f"identical to row {first.row} (line {first.line}); both will be sent, which "
                "cancels the line twice: remove one unless that is intended",
                result.row, result.line, None, warning=True))
    issues.sort(key=lambda i: (i.row or 0, i.line or 0))
    return ParsedInput(kind, tuple(rows), tuple(invalid), tuple(issues))


# --- CSV -------------------------------------------------------------------------------

#: The csv module's field limit while this module reads one record: high enough that no
#: real cell reaches it. Cells over FIELD_MAX_CHARS are then refused by the row check.
_CSV_READ_LIMIT = 2**31 - 1


def _next_record(reader: Any) -> list[str]:
    """The next record, read whole however long its cells are.

    With the csv module's default limit (128 KiB) an oversized cell raises in the middle
    of its record and the reader restarts at the next physical line: inside a quoted
    cell, that turns the rest of the file into garbage. The limit is process-wide, so it
    is raised only for the synchronous read of one record, and always restored.
    """
    previous = csv.field_size_limit(_CSV_READ_LIMIT)
    try:
        cells: list[str] = next(reader)
    finally:
        csv.field_size_limit(previous)
    return cells

def _delimiter(header_line: str) -> str:
    """`,` unless the header is clearly separated by `;` or tabs (spreadsheet exports)."""
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


#: Amount columns of a CSV, and those holding `CODE:AMOUNT;...` tax lists.
_AMOUNT_COLUMNS = ("price_amount", "shipping_amount")
_TAX_COLUMNS = ("taxes", "shipping_taxes")
#: `12,34` / `1234` / `1.234,56`: an amount written with a decimal comma.
_COMMA_AMOUNT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{3})+(?:,[0-9]+)?|[0-9]+(?:,[0-9]+)?")
_COMMA_ONLY = re.compile(r"[0-9]+,[0-9]+")
_PLAIN_INTEGER = re.compile(r"[0-9]+")


def _amount_texts(fields: Mapping[str, str | None]) -> Iterator[str]:
    """Every amount written in one CSV row (prices and each tax amount)."""
    for name in _AMOUNT_COLUMNS:
        value = (fields.get(name) or "").strip()
        if value:
            yield value
    for name in _TAX_COLUMNS:
        for part in (fields.get(name) or "").split(";"):
            amount = part.partition(":")[2].strip()
            if amount:
                yield amount


def _comma_decimal(text: str) -> str | None:
    """`1.234,56` -> `1234.56`; None when `text` is not a decimal-comma amount (then the
    usual amount check reports it). A bare `1.234` is refused: with decimal commas the
    dot only groups thousands, and a refund of 1.234 or of 1234 must not be a guess."""
    value = text.strip()
    if not _COMMA_AMOUNT.fullmatch(value) or ("." in value and "," not in value):
        return None
    return value.replace(".", "").replace(",", ".")


def _detect_decimal_comma(delimiter: str, rows: Iterable[dict[str, str | None]]) -> bool:
    """Safe detection: a `;`-separated file whose every amount is a whole number or
    uses a decimal comma (`12,34`), and at least one uses it. Anything with a dot, or a
    grouped `1.234,5`, is left to the explicit `--decimal-comma`."""
    if delimiter != ";":
        return False
    seen_comma = False
    for fields in rows:
        for value in _amount_texts(fields):
            if _COMMA_ONLY.fullmatch(value):
                seen_comma = True
            elif not _PLAIN_INTEGER.fullmatch(value):
                return False
    return seen_comma


def _apply_decimal_comma(r: _Row, fields: dict[str, str | None]) -> None:
    """Rewrite the amounts of one row from decimal commas to the dot the checks read."""
    for name in _AMOUNT_COLUMNS:
        value = fields.get(name)
        if value and value.strip():
            converted = _comma_decimal(value)
            if converted is None:
                r.error(name, f"{value.strip()!r} is not an amount with a decimal comma "
                              "(--decimal-comma: 12,34 or 1.234,56)")
            else:
                fields[name] = converted
    for name in _TAX_COLUMNS:
        value = fields.get(name)
        if not value or not value.strip():
            continue
        parts = []
        for part in value.split(";"):
            code, sep, amount = part.partition(":")
            converted = _comma_decimal(amount) if sep and amount.strip() else amount
            if converted is None:
                r.error(name, f"{amount.strip()!r} is not an amount with a decimal comma "
                              "(--decimal-comma: 12,34 or 1.234,56)")
                converted = amount
            parts.append(f"{code}{sep}{converted}")
        fields[name] = ";".join(parts)


def parse_csv(text: str, *, decimal_comma: bool | None = False) -> ParsedInput:
    """Check a CSV document with a header row (see `COLUMNS`).

    `decimal_comma`: True reads amounts written with a decimal comma (`12,34`, also
    grouped `1.234,56`); None detects it, safely (`_detect_decimal_comma`); False: dots.
    """
    issues: list[InputIssue] = []
    results = list(_csv_rows(io.StringIO(text, newline=""), issues, decimal_comma=decimal_comma,
                             peek=lambda: io.StringIO(text, newline="")))
    return _finish(InputFormat.CSV, results, issues)


def _csv_rows(lines: Iterable[str], issues: list[InputIssue], *,
              decimal_comma: bool | None, peek: Callable[[], Iterable[str]],
              plain: bool = False) -> Iterator[InputRow | InvalidRow | CheckedLine]:
    """The rows of a CSV document, one at a time; header issues go to `issues` first
    (and when one of them is an error, there are no rows). `peek` reads the document
    again from its start (decimal-comma detection looks at every amount first).
    `plain`: rows `_plain_csv_row` vouches for come as `CheckedLine`s."""
    lines = iter(lines)
    head = list(itertools.islice(lines, 1))
    first_line = head[0].split("\n", 1)[0] if head else ""
    delimiter = _delimiter(first_line)
    reader = csv.reader(itertools.chain(head, lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"line 1: unreadable CSV header: {exc}") from None
    if not header or not any(cell.strip() for cell in header):
        raise InputError("the file is empty: a CSV needs a header row (line 1) naming the "
                         "columns: " + ", ".join(COLUMNS))
    names = [cell.strip().lower() for cell in header]
    for name in sorted({n for n in names if names.count(n) > 1 and n}):
        issues.append(InputIssue(f"column {name!r} appears more than once", None, 1))
    for name in REQUIRED_COLUMNS:
        if name not in names:
            issues.append(InputIssue(f"missing column {name!r}", None, 1))
    if "order_line_id" not in names and "product_id" not in names:
        issues.append(InputIssue("missing column 'order_line_id' or 'product_id' (at least one "
                                 "is needed)", None, 1))
    unknown = [n for n in names if n and n not in COLUMNS]
    if unknown:
        issues.append(InputIssue("ignoring unknown column(s): " + ", ".join(unknown),
                                 None, 1, warning=True))
    if any(not i.warning for i in issues):
        return
    if decimal_comma is None:
        decimal_comma = _detect_decimal_comma(delimiter, _peek_rows(peek(), delimiter, names))
        if decimal_comma:
            issues.append(InputIssue(
                "amounts read with a decimal comma (12,34 = 12.34): the file is "
                "semicolon-separated and every amount uses one; --decimal-comma says so "
                "explicitly", None, None, warning=True))

    fast = _plain_csv_row(names) if plain and not decimal_comma else None
    row_number = 0
    previous_line = reader.line_num
    while True:
        try:
            cells = _next_record(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # The reader cannot resynchronise after a broken quote: what follows could be
            # read as rows that are not. A file error, so even --skip-invalid sends nothing
            # rather than silently dropping (or misreading) the rows after it.
            issues.append(InputIssue(
                f"unreadable CSV in row {row_number + 1}: {exc}; the rows after it cannot be "
                "read reliably, so the file is refused: fix it (a broken quote?)",
                None, previous_line + 1))
            break
        start_line, previous_line = previous_line + 1, reader.line_num
        if not "".join(cells).strip():
            continue  # blank lines are not rows
        row_number += 1
        if fast is not None:
            checked = fast(cells, row_number, start_line)
            if checked is not None:
                yield checked
                continue
        r = _Row(row_number, start_line)
        if len(cells) > len(names):
            r.error(None, f"has {len(cells)} fields but the header has {len(names)} "
                          "(an unquoted separator in a value?)")
        fields = {name: cells[i] if i < len(cells) else None for i, name in enumerate(names)}
        if decimal_comma:
            _apply_decimal_comma(r, fields)
        result = _check_row(r, fields, jsonl=False)
        if r.issues and isinstance(result, InputRow):  # the field-count error
            result = InvalidRow(r.row, r.line, result.order_id,
                                result.cancelation.order_line_id, result.cancelation.product_id,
                                result.cancelation.quantity, tuple(r.issues))
        yield result


#: Amounts the plain-row check vouches for: at most 18 ASCII digits (AMOUNT_MAX_DIGITS),
#: no sign, no exponent, a dot only between digits.
_PLAIN_AMOUNT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


def _plain_csv_row(names: list[str]) -> Callable[[list[str], int, int], CheckedLine | None]:
    """A fast first check for the header `names`: a row of the plain shape most files
    have comes back as a `CheckedLine`, anything else as None, for `_check_row`.

    It adds no rule and judges no row invalid: it accepts only rows that every check of
    `_check_row` and of the models certainly accepts (a cell per column, none
    oversized; ASCII ids; a quantity of at most 9 digits; a known reason; amounts of
    plain digits; one currency; no taxes), and writes what they would give (the same
    JSON, through `plain_cancelation_json`). tests/jobs/test_streaming.py checks both paths
    agree. It exists because a million-row file must be checked in seconds: the full
    check builds four model objects per row.
    """
    assert AMOUNT_MAX_DIGITS >= 18 and QUANTITY_MAX > 999_999_999  # what the patterns assume
    width = len(names)
    at = {name: names.index(name) for name in COLUMNS if name in names}
    order, quantity, reason = at["order_id"], at["quantity"], at["reason"]
    price, currency, shipping = at["price_amount"], at["price_currency"], at["shipping_amount"]
    line_at, product_at = at.get("order_line_id"), at.get("product_id")
    shipping_currency = at.get("shipping_currency")
    taxes = [at[name] for name in _TAX_COLUMNS if name in at]
    amount_ok = _PLAIN_AMOUNT.fullmatch
    reasons = {text: reason.value for text, reason in _REASONS.items()}
    make = tuple.__new__  # a CheckedLine without NamedTuple's Python-level __new__

    def check(cells: list[str], row: int, line: int) -> CheckedLine | None:
        # The cells together within the limit: none of them is over it.
        if len(cells) != width or len("".join(cells)) > FIELD_MAX_CHARS:
            return None
        order_id = cells[order].strip()
        line_id = cells[line_at].strip() if line_at is not None else ""
        product_id = cells[product_at].strip() if product_at is not None else ""
        if not order_id or not (line_id or product_id) or not (
                order_id.isascii() and line_id.isascii() and product_id.isascii()):
            return None
        units = cells[quantity].strip()
        code = reasons.get(cells[reason].strip().upper())
        price_text = cells[price].strip()
        shipping_text = cells[shipping].strip()
        money = cells[currency].strip().upper()
        # (Quantity: 1-9 ASCII digits; currency: three ASCII capitals, as _CURRENCY says.)
        if (code is None or not (units.isdigit() and units.isascii() and len(units) <= 9)
                or not amount_ok(price_text) or not amount_ok(shipping_text)
                or not (len(money) == 3 and money.isascii() and money.isalpha())):
            return None
        if shipping_currency is not None:
            other = cells[shipping_currency].strip()
            if other and other.upper() != money:
                return None
        for tax in taxes:
            if cells[tax].strip():
                return None
        count = int(units)
        price_json, shipping_json = _plain_json(price_text), _plain_json(shipping_text)
        # The total as `str(price + shipping)` writes it. A plain amount plus a zero is
        # that amount (same digits, same exponent, written the same way: at most 6
        # decimals), so most rows need no Decimal at all.
        if shipping_json == "0":
            total = price_json
        elif price_json == "0":
            total = shipping_json
        else:
            total = str(Decimal(price_text) + Decimal(shipping_text))
        return make(CheckedLine, (row, line, order_id, plain_cancelation_json(
            count, code, price_json, shipping_json, money, line_id or None,
            product_id or None), count, total, money))

    return check


def _plain_json(text: str) -> str:
    """How `cancelation_json` writes the amount `text` (which `_PLAIN_AMOUNT` matched):
    `format(Decimal(text), "f")`, which is `text` itself unless it has a leading zero to
    drop."""
    if text[0] != "0" or len(text) == 1 or text[1] == ".":
        return text
    return format(Decimal(text), "f")


def _peek_rows(lines: Iterable[str], delimiter: str,
               names: list[str]) -> Iterator[dict[str, str | None]]:
    """The data rows as dicts, for detection only (a broken row ends the peek: the real
    pass reports it)."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    try:
        next(reader, None)
        for cells in reader:
            yield {name: cells[i] if i < len(cells) else None for i, name in enumerate(names)}
    except csv.Error:
        return


# --- JSONL -----------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid amount")


@attrs.frozen
class _HugeNumber:
    """A JSON number too long or too large to convert; never a valid amount or quantity.

    int() refuses 4,300+ digits (ValueError) and Decimal an exponent past 10**18
    (InvalidOperation, not even a ValueError): both would fail the whole line, or escape.
    """

    text: str


def _parse_int(text: str) -> int | _HugeNumber:
    return int(text) if len(text) <= 40 else _HugeNumber(text)


def _parse_float(text: str) -> Decimal | _HugeNumber:
    try:
        return Decimal(text)
    except InvalidOperation:
        return _HugeNumber(text)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice is an error, not "the last one wins"."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _json_problem(data: object) -> str | None:
    """Why a decoded line cannot be used as it is: nested too deeply, or a lone surrogate.

    A lone surrogate (`"\\ud800"`) is valid JSON but not text: it cannot be journaled,
    printed or sent. Iterative, so no depth can raise RecursionError here.
    """
    stack: list[tuple[object, str, int]] = [(data, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > JSONL_MAX_DEPTH:
                return f"nested more than {JSONL_MAX_DEPTH} levels deep"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _has_surrogate(key):
                    return f"key {printable(key, 40)!r} contains a lone surrogate"
                where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
                stack.append((item, where.lstrip("."), depth + 1))
        elif isinstance(value, str) and _has_surrogate(value):
            return f"{printable(path, 80) or 'the line'}: contains a lone surrogate, not text"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decode_line(r: _Row, line: str) -> object:
    """The line's JSON value, or None with the reason recorded on `r`."""
    try:
        data = json.loads(line, parse_float=_parse_float, parse_int=_parse_int,
                          parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        r.error(printable(exc.key, 80), "appears more than once in one object: give it once")
        return None
    except RecursionError:
        r.error(None, f"not valid JSON: nested more than {JSONL_MAX_DEPTH} levels deep")
        return None
    except ValueError as exc:
        r.error(None, f"not valid JSON: {exc}")
        return None
    problem = _json_problem(data)
    if problem is not None:
        r.error(None, problem)
        return None
    return data


def _json_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            yield number, line


def parse_jsonl(text: str) -> ParsedInput:
    """Check a JSON Lines document: one object per line, blank lines ignored."""
    issues: list[InputIssue] = []
    results = list(_jsonl_rows(io.StringIO(text, newline=""), issues))
    return _finish(InputFormat.JSONL, results, issues)


def _jsonl_rows(lines: Iterable[str],
                issues: list[InputIssue]) -> Iterator[InputRow | InvalidRow]:
    """The rows of a JSON Lines document, one at a time; the unknown-keys warning goes
    to `issues` at the end."""
    unknown: set[str] = set()
    known = set(COLUMNS) | set(_JSONL_EXTRA_KEYS)
    for row_number, (line_number, line) in enumerate(_json_lines(lines), start=1):
        r = _Row(row_number, line_number)
        data = _decode_line(r, line)
        if r.issues:
            yield InvalidRow(r.row, r.line, None, None, None, None, tuple(r.issues))
            continue
        if not isinstance(data, dict):
            r.error(None, f"must be a JSON object, not {_json_type(data)}")
            yield InvalidRow(r.row, r.line, None, None, None, None, tuple(r.issues))
            continue
        unknown.update(key for key in data if key not in known)
        yield _check_row(r, data, jsonl=True)
    if unknown:
        issues.append(InputIssue("ignoring unknown key(s): " + ", ".join(sorted(unknown)),
                                 warning=True))
