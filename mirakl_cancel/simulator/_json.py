"""JSON in and out with exact money.

Requests are parsed with ``parse_float=Decimal`` so ``19.99`` stays 19.99;
responses that carry ``Decimal`` amounts are written as plain JSON numbers
with every digit kept, which the stdlib encoder cannot do (it would either
quote them or go through ``float``).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

__all__ = ["InvalidJSON", "dumps", "loads"]

_encode_str = json.encoder.encode_basestring


class InvalidJSON(ValueError):
    """The body is not strict JSON (bad syntax, bad UTF-8, NaN/Infinity)."""


def _reject_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON")


#: Deeper bodies are refused: no request of the API nests more than 5 levels.
MAX_DEPTH = 64


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests deeper than `limit` (iterative: no RecursionError)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def loads(raw: bytes) -> Any:
    """Parse a request body; anything a hostile client can send becomes InvalidJSON (a 400).

    Beyond syntax: too deep a nesting (RecursionError), an integer of 4,300+ digits
    (ValueError from int()) and an exponent Decimal cannot hold (InvalidOperation) would
    otherwise surface as 500s.
    """
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_float=Decimal, parse_constant=_reject_constant
        )
    except RecursionError:
        raise InvalidJSON(f"nested more than {MAX_DEPTH} levels deep") from None
    except (ValueError, ArithmeticError) as exc:  # JSONDecodeError, UnicodeDecodeError too
        raise InvalidJSON(str(exc) or type(exc).__name__) from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise InvalidJSON(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _write(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_encode_str(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, Decimal):
        out.append(format(value, "f"))
    elif isinstance(value, dict):
        out.append("{")
        first = True
        for key, item in value.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_str(str(key)))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, float):
        out.append(json.dumps(value))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode to UTF-8 JSON bytes; ``Decimal`` becomes an exact JSON number."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def canonical(value: Any) -> str:
    """A stable text form of a parsed body, to recognise a re-sent POST."""
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
