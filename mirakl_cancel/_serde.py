"""The one converter: models to wire JSON and back.

Requests are written exactly (Decimal amounts become JSON numbers with the same digits:
`Decimal("19.99")` is sent as `19.99`, never as a binary float). Responses are read
tolerantly: unknown fields are ignored, unknown enum values kept raw, odd timestamps
left as None rather than failing a whole poll.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._constants import DEFAULT_MAX_JSON_DEPTH

if TYPE_CHECKING:
    import aiohttp
from .errors import ErrorItem, ValidationError, ValidationIssue
from .models import (
    ActionAccepted,
    ActionError,
    ActionState,
    ActionStatus,
    Adjustment,
    AdjustmentType,
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
    Order,
    OrderLine,
    Tax,
    prefix_issues,
    scalar_issues,
)

__all__ = [
    "AnswerTooLarge",
    "JSONDepthError",
    "cancelation_fields_json",
    "cancelation_json",
    "check_json_depth",
    "converter",
    "dumps",
    "loads",
    "money_json",
    "parse_action_accepted",
    "parse_action_status",
    "parse_datetime",
    "parse_error_body",
    "parse_orders_page",
    "plain_cancelation_json",
    "read_bounded",
    "read_complete",
    "request_body",
    "structure_cancelation",
    "structure_request",
    "unsendable_text",
]

T = TypeVar("T")

converter = cattrs.Converter()
converter.register_unstructure_hook(Decimal, lambda d: d)
converter.register_unstructure_hook(CancelReason, lambda r: r.value)
converter.register_unstructure_hook(
    Money, make_dict_unstructure_fn(Money, converter))
converter.register_unstructure_hook(
    Tax, make_dict_unstructure_fn(Tax, converter))
# Optional fields are left out of the JSON when unset, as the spec's examples do.
converter.register_unstructure_hook(
    Cancelation, make_dict_unstructure_fn(Cancelation, converter, _cattrs_omit_if_default=True))
converter.register_unstructure_hook(
    CancelRequest,
    make_dict_unstructure_fn(CancelRequest, converter, order_id=override(omit=True)))


def unsendable_text(value: object, path: str) -> list[ValidationIssue]:
    """Strings in `value` (nested in mappings and lists) that have no UTF-8 form.

    A lone surrogate (e.g. from a file decoded with `surrogateescape`) cannot go into
    a URL and would be sent as an invalid `\\udXXX` escape in JSON: refused up front,
    with the field named, instead of an UnicodeEncodeError halfway through a send.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return [ValidationIssue(path, "contains a lone surrogate (not valid Unicode text)")]
        return []
    if isinstance(value, Mapping):
        return [issue for key, item in value.items()
                for issue in unsendable_text(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple)):
        return [issue for i, item in enumerate(value)
                for issue in unsendable_text(item, f"{path}[{i}]")]
    return []


def request_body(request: CancelRequest) -> bytes:
    """The exact POST body for a request (the order id travels in the path).

    A `CancelRequest` itself (every request the client sends) is written line by line
    by `cancelation_json`, the writer a planned job uses, at about half the cost of
    unstructuring it first; anything else (a subclass) takes the generic path. Both
    give the same bytes (tests/test_serde.py)."""
    if type(request) is CancelRequest:
        return ('{"cancelations":['
                + ",".join([cancelation_json(c) for c in request.cancelations])
                + "]}").encode()
    return dumps(converter.unstructure(request)).encode()


def cancelation_json(cancelation: Cancelation) -> str:
    """One cancelation exactly as `request_body` writes it inside `cancelations`: a body
    is `{"cancelations":[` + these, joined by commas, + `]}` (how the job plans a file
    of any size without holding its requests).

    Written directly for the exact model types (a million-row file writes a million of
    them; the generic unstructure-and-encode costs several times more), in the order and
    with the omissions of `converter`; anything else takes the generic path. The two are
    checked equal in tests/jobs/test_streaming.py."""
    c = cancelation
    if (type(c) is not Cancelation or type(c.quantity) is not int
            or type(c.reason) is not CancelReason):
        return dumps(converter.unstructure(c))
    if not c.taxes and not c.shipping_taxes:  # most lines: nothing to join
        return cancelation_fields_json(c.quantity, c.reason.value, _money_json(c.price),
                                       _money_json(c.shipping_price), c.order_line_id,
                                       c.product_id)
    taxes = [",".join(['{"code":' + _encode_str(t.code) + ',"amount":' + _money_json(t.amount)
                       + "}" for t in group]) for group in (c.taxes, c.shipping_taxes)]
    return cancelation_fields_json(c.quantity, c.reason.value, _money_json(c.price),
                                   _money_json(c.shipping_price), c.order_line_id,
                                   c.product_id, *taxes)


def cancelation_fields_json(quantity: int, reason: str, price: str, shipping_price: str,
                            order_line_id: str | None, product_id: str | None,
                            taxes: str = "", shipping_taxes: str = "") -> str:
    """A cancelation's JSON from its fields (the amounts already as `money_json`, the
    taxes as their joined objects): the one place the layout of `cancelation_json` is
    written, also used by the input's fast path, which never builds a model object."""
    parts = ['{"quantity":', int.__repr__(quantity), ',"reason":', _encode_str(reason),
             ',"price":', price, ',"shipping_price":', shipping_price]
    if order_line_id is not None:
        parts += [',"order_line_id":', _encode_str(order_line_id)]
    if product_id is not None:
        parts += [',"product_id":', _encode_str(product_id)]
    if taxes:
        parts += [',"taxes":[', taxes, "]"]
    if shipping_taxes:
        parts += [',"shipping_taxes":[', shipping_taxes, "]"]
    parts.append("}")
    return "".join(parts)


def plain_cancelation_json(quantity: int, reason: str, price: str, shipping_price: str,
                           currency: str, order_line_id: str | None,
                           product_id: str | None) -> str:
    """`cancelation_fields_json` of a line without taxes whose amounts share `currency`,
    in one format (the input's fast path writes a million of them). `reason` and
    `currency` must need no escaping (an enum value, three letters): the ids are escaped.
    tests/jobs/test_streaming.py checks it equals the general writer."""
    ids = ""
    if order_line_id is not None:
        ids = ',"order_line_id":' + _encode_str(order_line_id)
    if product_id is not None:
        ids += ',"product_id":' + _encode_str(product_id)
    return (f'{{"quantity":{quantity:d},"reason":"{reason}","price":{{"amount":{price},'
            f'"currency":"{currency}"}},"shipping_price":{{"amount":{shipping_price},'
            f'"currency":"{currency}"}}{ids}}}')


def _money_json(money: Money) -> str:
    amount = money.amount
    return money_json(_decimal_json(amount) if type(amount) is Decimal else dumps(amount),
                      money.currency)


def _decimal_json(amount: Decimal) -> str:
    """Fixed-point text of `amount`, which keeps every digit given and is a valid JSON
    number: `str()` already is, unless it chose an exponent (`1E+2`, `1E-7`), and costs
    a quarter of `format(amount, "f")`, which is used then (the same text otherwise)."""
    text = str(amount)
    return text if "E" not in text and "e" not in text else format(amount, "f")


def money_json(amount: str, currency: str) -> str:
    """`{"amount":..,"currency":..}` from an amount already written as JSON."""
    return '{"amount":' + amount + ',"currency":' + _encode_str(currency) + "}"


# --- JSON with exact decimals ---------------------------------------------------------

_encode_str: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _encode_object(value: Mapping[Any, Any], parts: list[str]) -> None:
    parts.append("{")
    first = True
    for key, item in value.items():
        if not first:
            parts.append(",")
        first = False
        parts.append(_encode_str(str(key)))
        parts.append(":")
        _encode(item, parts)
    parts.append("}")


def _encode_array(value: list[Any] | tuple[Any, ...], parts: list[str]) -> None:
    parts.append("[")
    for i, item in enumerate(value):
        if i:
            parts.append(",")
        _encode(item, parts)
    parts.append("]")


def _encode(value: object, parts: list[str]) -> None:
    # Exact types first: a request body holds nothing else, and `type(x) is` costs far
    # less than isinstance against an ABC (or json.dumps for an int). The isinstance
    # chain after them handles subclasses, bools, None and floats, with the same output.
    kind = type(value)
    if kind is str:
        parts.append(_encode_str(value))  # type: ignore[arg-type]
    elif kind is dict:
        _encode_object(value, parts)  # type: ignore[arg-type]
    elif kind is list or kind is tuple:
        _encode_array(value, parts)  # type: ignore[arg-type]
    elif kind is Decimal:
        parts.append(_decimal_json(value))  # type: ignore[arg-type]
    elif kind is int:
        parts.append(int.__repr__(value))
    elif isinstance(value, str):
        parts.append(_encode_str(value))
    elif isinstance(value, Mapping):
        _encode_object(value, parts)
    elif isinstance(value, (list, tuple)):
        _encode_array(value, parts)
    elif isinstance(value, Decimal):
        # Fixed-point text keeps every digit the user gave and is a valid JSON number.
        parts.append(format(value, "f"))
    elif isinstance(value, float):
        raise TypeError("refusing to encode a float amount: use Decimal")
    else:
        parts.append(json.dumps(value))


def dumps(value: object) -> str:
    """JSON text for `value`, writing Decimal as an exact JSON number."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


#: One decoder for every call: `json.loads(..., parse_float=...)` builds a new one each time.
_DECODER = json.JSONDecoder(parse_float=Decimal)
#: Its C scanner: `scan(text, 0)` is (value, end), without `decode()`'s Python frames.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]

_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


class JSONDepthError(ValueError):
    """A JSON document nests deeper than allowed (refused before decoding it)."""


def check_json_depth(text: str, max_depth: int) -> None:
    """Refuse `text` if its arrays and objects nest deeper than `max_depth`.

    Done before decoding because the decoder recurses once per level: 100,000 nested
    brackets would raise RecursionError (or, in a thread with a small stack, worse).
    Every step is a C-level pass: strings are dropped (escaped backslashes, then escaped
    quotes, then every other quote-delimited piece: their brackets do not count), then
    everything but brackets, then each pass strips the innermost pairs, so a document of
    depth d is empty after d passes. Malformed text is left to the decoder.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return  # the common case: too few brackets to nest that deep
    outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = _NOT_BRACKET.sub("", outside)
    for _ in range(max_depth):
        if not brackets:
            return
        reduced = _INNERMOST.sub("", brackets)
        if reduced == brackets:
            return  # unbalanced: not JSON, the decoder will say so
        brackets = reduced
    if _INNERMOST.search(brackets):
        raise JSONDepthError(f"JSON nested deeper than {max_depth} levels")


class AnswerTooLarge(Exception):
    """An answer's body broke its size limit (`Limits.max_body_bytes`, or the token
    answer's): internal, mapped to a public error by whoever read it."""


def read_complete(response: aiohttp.ClientResponse, max_bytes: int) -> bytes | None:
    """`read_bounded` without awaiting when the whole body is in already (a small
    answer, mostly: no coroutine, no iterator), else None (then await `read_bounded`).
    The same limits and errors."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise AnswerTooLarge(f"the answer declares {declared} bytes, more than the "
                             f"{max_bytes} allowed")
    content = response.content
    if not content.is_eof():
        return None
    body = content.read_nowait()
    if len(body) > max_bytes:
        raise AnswerTooLarge(f"the answer is larger than the {max_bytes} bytes allowed")
    return body


async def read_bounded(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    """The body of `response`, decompressed, refusing more than `max_bytes` of it.

    Read chunk by chunk as it arrives (never `read()` unbounded): the memory an answer
    costs is bounded by the limit, whatever the server declares or sends.
    """
    body = read_complete(response, max_bytes)
    if body is not None:
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise AnswerTooLarge(f"the answer is larger than the {max_bytes} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def loads(text: str | bytes, *, max_depth: int | None = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """Parse JSON, reading non-integer numbers as Decimal so money stays exact.

    Only ValueError leaves (JSONDecodeError, UnicodeDecodeError, JSONDepthError, a
    too-long integer): never RecursionError, whatever the input.
    """
    if isinstance(text, (bytes, bytearray)):
        # An object whose second byte is not NUL is UTF-8 for `detect_encoding` too (a
        # BOM does not start with `{`; UTF-16/32 put a NUL in the first two bytes).
        utf8 = text[:1] == b"{" and text[1:2] != b"\0"
        text = text.decode("utf-8" if utf8 else json.detect_encoding(text), "surrogatepass")
    if max_depth is not None:
        check_json_depth(text, max_depth)
    try:
        if text[:1] == "{":  # an answer, mostly: the C scanner without decode()'s frames
            try:
                value, end = _SCAN(text, 0)
            except Exception:  # decode() below raises the usual error
                pass
            else:
                if end == len(text):
                    return value
        return _DECODER.decode(text)
    except RecursionError:
        raise JSONDepthError("JSON nested too deeply to decode") from None


# --- responses ------------------------------------------------------------------------

_FRACTION = re.compile(r"\.(\d+)")


def parse_datetime(value: object) -> datetime | None:
    """An aware datetime from RFC 3339 text, or None when it is absent or unreadable.

    Python 3.10's `fromisoformat` knows neither `Z` nor fractions of other than 3 or
    6 digits (the API sends `.32Z`), so the text is normalised first.
    """
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _objects(value: object) -> list[Mapping[str, Any]]:
    """The JSON objects of an array field, ignoring anything else (odd shapes never crash)."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def parse_action_accepted(data: object, order_id: str) -> ActionAccepted:
    """Read a 202 body; `action_id` is the identifier, `tracking_id` its deprecated twin."""
    if type(data) is not dict and not isinstance(data, Mapping):  # (the ABC check is slow)
        raise ValueError("202 body is not a JSON object")
    action_id = data.get("action_id") or data.get("tracking_id")
    if not isinstance(action_id, str) or not action_id:
        raise ValueError("202 body has no action_id")
    return ActionAccepted(action_id=action_id, order_id=order_id,
                          tracking_id=_str_or_none(data.get("tracking_id")))


def parse_action_status(data: object) -> ActionStatus:
    """Read a `v2-getActionStatus` body, tolerating new statuses and error codes."""
    if not isinstance(data, Mapping):
        raise ValueError("action status body is not a JSON object")
    action_id = data.get("id")
    raw_status = data.get("status")
    if not isinstance(action_id, str) or not isinstance(raw_status, str):
        raise ValueError("action status body lacks id or status")
    errors = tuple(
        ActionError(code=str(item.get("code") or ""), message=str(item.get("message") or ""))
        for item in _objects(data.get("errors"))
    )
    return ActionStatus(
        id=action_id,
        state=ActionState.parse(raw_status),
        created_at=parse_datetime(data.get("created_at")),
        updated_at=parse_datetime(data.get("updated_at")),
        errors=errors,
        raw_status=raw_status,
    )


@attrs.frozen
class ErrorBody:
    """The API's `Error` body, as parsed (tolerantly) from a 4xx/5xx answer.

    Internal: what users see of it is the `ApiError` it becomes (code, message,
    errors, extensions).
    """

    code: str | None
    message: str
    errors: tuple[ErrorItem, ...] = ()
    extensions: dict[str, Any] = attrs.field(factory=dict)


def parse_error_body(data: object) -> ErrorBody | None:
    """The API's Error body, or None when the answer is not one (HTML page, empty)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("message", data.get("code")), str):
        return None
    items = tuple(
        ErrorItem(message=str(item.get("message", "")), field=_str_or_none(item.get("field")),
                  extensions=_mapping(item.get("extensions")))
        for item in _objects(data.get("errors"))
    )
    return ErrorBody(
        code=_str_or_none(data.get("code")),
        message=str(data.get("message", "")),
        errors=items,
        extensions=_mapping(data.get("extensions")),
    )


# --- requests from plain data (files, dicts) ------------------------------------------

def _construct(factory: Callable[..., T], path: str, issues: list[ValidationIssue],
               **kwargs: Any) -> T | None:
    try:
        return factory(**kwargs)
    except ValidationError as exc:
        issues.extend(prefix_issues(path, exc.issues))
    except TypeError as exc:  # wrong or missing keyword from the data
        issues.append(ValidationIssue(path, str(exc)))
    return None


def _object(data: object, path: str, required: tuple[str, ...],
            issues: list[ValidationIssue]) -> Mapping[str, Any] | None:
    if not isinstance(data, Mapping):
        issues.append(ValidationIssue(path, "must be an object"))
        return None
    missing = [name for name in required if data.get(name) is None]
    for name in missing:
        issues.append(ValidationIssue(f"{path}.{name}", "is required"))
    return None if missing else data


def _money(data: object, path: str, issues: list[ValidationIssue]) -> Money | None:
    fields = _object(data, path, ("amount", "currency"), issues)
    if fields is None:
        return None
    return _construct(Money, path, issues, amount=fields["amount"], currency=fields["currency"])


def _taxes(data: object, path: str, issues: list[ValidationIssue]) -> list[Tax] | None:
    if data is None:
        return []
    if not isinstance(data, (list, tuple)):
        issues.append(ValidationIssue(path, "must be an array"))
        return None
    taxes: list[Tax] = []
    ok = True
    for i, item in enumerate(data):
        item_path = f"{path}[{i}]"
        fields = _object(item, item_path, ("code", "amount"), issues)
        amount = _money(fields["amount"], f"{item_path}.amount", issues) if fields else None
        tax = _construct(Tax, item_path, issues, code=fields["code"], amount=amount) \
            if fields and amount else None
        if tax is None:
            ok = False
        else:
            taxes.append(tax)
    return taxes if ok else None


def structure_cancelation(data: object, path: str = "",
                          issues: list[ValidationIssue] | None = None) -> Cancelation | None:
    """A Cancelation from a JSON-like mapping, collecting every problem under `path`.

    With no `issues` list given, problems raise ValidationError at once.
    """
    collected: list[ValidationIssue] = [] if issues is None else issues
    start = len(collected)
    fields = _object(data, path or "$", ("quantity", "reason", "price", "shipping_price"),
                     collected)
    result: Cancelation | None = None
    if isinstance(data, Mapping):
        child = (path + ".") if path else ""
        price = _money(data.get("price"), f"{child}price", collected) \
            if data.get("price") is not None else None
        shipping = _money(data.get("shipping_price"), f"{child}shipping_price", collected) \
            if data.get("shipping_price") is not None else None
        taxes = _taxes(data.get("taxes"), f"{child}taxes", collected)
        shipping_taxes = _taxes(data.get("shipping_taxes"), f"{child}shipping_taxes", collected)
        if fields is not None and len(collected) == start:
            result = _construct(
                Cancelation, path, collected,
                quantity=fields["quantity"], reason=fields["reason"], price=price,
                shipping_price=shipping, order_line_id=fields.get("order_line_id"),
                product_id=fields.get("product_id"), taxes=taxes, shipping_taxes=shipping_taxes)
        else:
            # The amounts failed; still report the line's own fields in the same error.
            present = {k: data[k] for k in ("quantity", "reason") if data.get(k) is not None}
            own = scalar_issues(present.get("quantity", 0), present.get("reason", "RETURN"),
                                data.get("order_line_id"), data.get("product_id"))
            collected.extend(prefix_issues(path, own))
    if issues is None and collected:
        raise ValidationError(collected)
    return result


def structure_request(order_id: object, cancelations: object) -> CancelRequest:
    """A CancelRequest from plain data, naming every offending field by its full path."""
    issues: list[ValidationIssue] = []
    items: list[Cancelation] = []
    if not isinstance(cancelations, (list, tuple)):
        issues.append(ValidationIssue("cancelations", "must be an array"))
    else:
        for i, item in enumerate(cancelations):
            if isinstance(item, Cancelation):
                items.append(item)
                continue
            built = structure_cancelation(item, f"cancelations[{i}]", issues)
            if built is not None:
                items.append(built)
    if not issues:
        built_request = _construct(CancelRequest, "", issues, order_id=order_id,
                                   cancelations=items)
        if built_request is not None:
            return built_request
    else:
        # Report request-level problems alongside the per-line ones.
        if not isinstance(order_id, str) or not order_id.strip():
            issues.insert(0, ValidationIssue("order_id", "must be a non-empty string"))
    raise ValidationError(issues)


def _structure_request_hook(data: Mapping[str, Any], _: type) -> CancelRequest:
    return structure_request(data.get("order_id"), data.get("cancelations"))


converter.register_structure_hook(CancelRequest, _structure_request_hook)
converter.register_structure_hook(
    Cancelation, lambda data, _: structure_cancelation(data))


# --- orders (v2-listOrders) -----------------------------------------------------------

def _money_or_none(data: object) -> Money | None:
    if not isinstance(data, Mapping):
        return None
    try:
        return Money(data.get("amount"), data.get("currency"))  # type: ignore[arg-type]
    except ValidationError:
        return None


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():  # the spec's example is "10"
        return int(value)
    return None


def _adjustment(data: Mapping[str, Any]) -> Adjustment:
    raw_type = str(data.get("type", ""))
    try:
        kind = AdjustmentType(raw_type)
    except ValueError:
        kind = AdjustmentType.UNKNOWN
    return Adjustment(
        id=str(data.get("adjustment_id") or data.get("id") or ""),
        type=kind,
        raw_type=raw_type,
        created_at=parse_datetime(data.get("created_at")),
        quantity=_int_or_none(data.get("quantity")),
        reason=_str_or_none(data.get("reason")),
        price=_money_or_none(data.get("price")),
        shipping_price=_money_or_none(data.get("shipping_price")),
    )


def _order_line(data: Mapping[str, Any]) -> OrderLine:
    product = data.get("product")
    adjustments = data.get("adjustments") or ()
    return OrderLine(
        id=str(data.get("id", "")),
        product_id=_str_or_none(product.get("id")) if isinstance(product, Mapping) else None,
        quantity=_int_or_none(data.get("quantity")),
        status=_str_or_none(data.get("status")),
        adjustments=tuple(_adjustment(a) for a in adjustments if isinstance(a, Mapping)),
        raw=dict(data),
    )


def parse_orders_page(data: object) -> tuple[list[Order], str | None]:
    """Orders of one `v2-listOrders` page and the next page's token (None on the last)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise ValueError("orders page has no data array")
    orders = [
        Order(
            id=str(item.get("id", "")),
            status=_str_or_none(item.get("status")),
            lines=tuple(_order_line(line) for line in item.get("order_lines") or ()
                        if isinstance(line, Mapping)),
            raw=dict(item),
        )
        for item in data["data"] if isinstance(item, Mapping)
    ]
    token = data.get("next_page_token")
    return orders, token if isinstance(token, str) and token else None
