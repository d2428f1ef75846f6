"""Request-body validation for ``v2-cancelOrderLines``, on raw JSON.

Written independently of the client's models (that independence is the whole
point of a second opinion) and exhaustive: every problem is reported with its
JsonPath, like Mirakl's ``400 INVALID_INPUT`` does, so a client test can
assert on the exact field.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

__all__ = ["REASONS", "validate_cancel_body"]

REASONS = frozenset(
    {
        "CUSTOMER_CANCELATION",
        "OUT_OF_STOCK",
        "RETURN",
        "ITEM_NOT_RECEIVED",
        "AGREEMENT",
        "DEFECT",
        "UNABLE_TO_DELIVER",
    }
)
_CURRENCY = re.compile(r"[A-Z]{3}\Z")

ErrorItems = list[dict[str, str]]


def _err(errors: ErrorItems, field: str, message: str) -> None:
    errors.append({"field": field, "message": message})


def _is_text(value: str) -> bool:
    # A lone surrogate ("\ud800" in the JSON) parses, but is no text: it has no UTF-8
    # form, so echoing it in an answer would fail. Refused like any malformed string.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_NOT_TEXT = "must be valid Unicode text (no lone surrogates)"


def _is_number(value: Any) -> bool:
    # JSON numbers arrive as int or Decimal (parse_float=Decimal); bool is an
    # int subclass in Python but never a JSON number.
    return isinstance(value, (int, Decimal)) and not isinstance(value, bool)


def _money(value: Any, path: str, errors: ErrorItems) -> None:
    if value is None:
        _err(errors, path, "must not be null")
        return
    if not isinstance(value, dict):
        _err(errors, path, "must be an object {amount, currency}")
        return
    amount = value.get("amount")
    if amount is None:
        _err(errors, f"{path}.amount", "must not be null")
    elif not _is_number(amount):
        _err(errors, f"{path}.amount", "must be a number")
    elif amount < 0:
        _err(errors, f"{path}.amount", "must be greater than or equal to 0")
    currency = value.get("currency")
    if currency is None:
        _err(errors, f"{path}.currency", "must not be null")
    elif not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        _err(errors, f"{path}.currency", "must be an ISO 4217 currency code (3 upper-case letters)")


def _taxes(value: Any, path: str, errors: ErrorItems) -> None:
    if not isinstance(value, list):
        _err(errors, path, "must be an array")
        return
    for index, tax in enumerate(value):
        item = f"{path}[{index}]"
        if not isinstance(tax, dict):
            _err(errors, item, "must be an object {code, amount}")
            continue
        code = tax.get("code")
        if not isinstance(code, str) or not code:
            _err(errors, f"{item}.code", "must be a non-empty string")
        elif not _is_text(code):
            _err(errors, f"{item}.code", _NOT_TEXT)
        _money(tax.get("amount"), f"{item}.amount", errors)


def _optional_id(item: dict[str, Any], key: str, path: str, errors: ErrorItems) -> None:
    if key in item and item[key] is not None:
        value = item[key]
        if not isinstance(value, str):
            _err(errors, f"{path}.{key}", "must be a string")
        elif not value:
            _err(errors, f"{path}.{key}", "size must be at least 1")
        elif not _is_text(value):
            _err(errors, f"{path}.{key}", _NOT_TEXT)


def _cancelation(item: Any, path: str, errors: ErrorItems) -> None:
    if not isinstance(item, dict):
        _err(errors, path, "must be an object")
        return
    quantity = item.get("quantity")
    if quantity is None:
        _err(errors, f"{path}.quantity", "must not be null")
    elif isinstance(quantity, bool) or not isinstance(quantity, int):
        # Stricter than JSON Schema, which would take 1.0: a client sending a
        # float quantity has a bug worth surfacing.
        _err(errors, f"{path}.quantity", "must be an integer")
    elif quantity < 0:
        _err(errors, f"{path}.quantity", "must be greater than or equal to 0")
    reason = item.get("reason")
    if reason is None:
        _err(errors, f"{path}.reason", "must not be null")
    elif not isinstance(reason, str) or reason not in REASONS:
        # isinstance first: an object or array is unhashable, and `in` a set would raise.
        _err(errors, f"{path}.reason", f"must be one of {', '.join(sorted(REASONS))}")
    _money(item.get("price"), f"{path}.price", errors)
    _money(item.get("shipping_price"), f"{path}.shipping_price", errors)
    for key in ("taxes", "shipping_taxes"):
        if item.get(key) is not None:
            _taxes(item[key], f"{path}.{key}", errors)
    _optional_id(item, "order_line_id", path, errors)
    _optional_id(item, "product_id", path, errors)


def validate_cancel_body(body: Any) -> ErrorItems:
    """Return every schema problem of a parsed cancel body (empty list: valid)."""
    errors: ErrorItems = []
    if not isinstance(body, dict):
        _err(errors, "$", "request body must be a JSON object")
        return errors
    cancelations = body.get("cancelations")
    if cancelations is None:
        _err(errors, "$.cancelations", "must not be null")
    elif not isinstance(cancelations, list):
        _err(errors, "$.cancelations", "must be an array")
    elif not cancelations:
        _err(errors, "$.cancelations", "size must be at least 1")
    else:
        for index, item in enumerate(cancelations):
            _cancelation(item, f"$.cancelations[{index}]", errors)
    return errors
