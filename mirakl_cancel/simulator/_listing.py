"""``v2-listOrders``: filters, seek pagination and the order read model.

The page shape follows ``OrdersPageResponse`` in the spec; fields the
simulator has no real data for are filled with plausible constants so every
page validates against the published schema.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from ._clock import format_rfc3339
from ._model import CANCELLABLE_STATUSES, SimLine, SimOrder
from ._state import SimState

__all__ = ["ListQuery", "ListQueryError", "list_orders", "parse_list_query", "render_order"]

ORDER_STATUSES = frozenset(
    {
        "AWAITING_FRAUD_CHECK",
        "AWAITING_ACCEPTANCE",
        "AWAITING_PAYMENT",
        "AWAITING_SHIPMENT",
        "SHIPPED",
        "DELIVERED",
        "CLOSED",
    }
)
_FULFILLMENT = frozenset({"FULFILLED_BY_SELLER", "FULFILLED_BY_PARTNER"})
_ADDRESS = {
    "first_name": "Paula",
    "last_name": "Johansson",
    "street": "12 Rue de la Paix",
    "city": "Paris",
    "zip_code": "75002",
    "country": "France",
    "country_iso_code": "FRA",
}


class ListQueryError(ValueError):
    """Bad query parameters; ``errors`` are ErrorItems for the 400 body."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


class ListQuery:
    """Validated filters; round-tripped inside page tokens so later pages keep them."""

    __slots__ = ("fulfillment_type", "limit", "order_ids", "statuses", "updated_from")

    def __init__(
        self,
        order_ids: Sequence[str],
        statuses: Sequence[str],
        updated_from: datetime | None,
        fulfillment_type: str | None,
        limit: int,
    ) -> None:
        self.order_ids = list(order_ids)
        self.statuses = list(statuses)
        self.updated_from = updated_from
        self.fulfillment_type = fulfillment_type
        self.limit = limit

    def to_token(self, direction: str, key: tuple[str, str]) -> str:
        payload = {
            "d": direction,
            "k": list(key),
            "o": self.order_ids,
            "s": self.statuses,
            "u": self.updated_from.isoformat() if self.updated_from else None,
            "f": self.fulfillment_type,
            "l": self.limit,
        }
        raw = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii")


def _parse_time(value: str, field: str, errors: list[dict[str, str]]) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        errors.append({"field": field, "message": "must be an RFC 3339 date-time"})
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _decode_token(token: str) -> tuple[ListQuery, str, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        direction, key = data["d"], data["k"]
        if direction not in ("next", "prev") or len(key) != 2:
            raise ValueError(direction)
        updated = data["u"]
        query = ListQuery(
            [str(i) for i in data["o"]],
            [str(s) for s in data["s"]],
            datetime.fromisoformat(updated) if updated else None,
            data["f"],
            int(data["l"]),
        )
        return query, direction, (str(key[0]), str(key[1]))
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise ListQueryError([{"field": "page_token", "message": "invalid page token"}]) from exc


def parse_list_query(
    params: Mapping[str, str], getall: Any
) -> tuple[ListQuery, str | None, tuple[str, str] | None]:
    """Validate query parameters; a ``page_token`` carries the original filters."""
    errors: list[dict[str, str]] = []
    limit = 10
    raw_limit = params.get("limit")
    if raw_limit is not None:
        # ASCII digits only: str.isdigit() takes "²", which int() then refuses (a 500).
        if re.fullmatch(r"[0-9]{1,3}", raw_limit.strip()) and 1 <= int(raw_limit) <= 100:
            limit = int(raw_limit)
        else:
            errors.append({"field": "limit", "message": "must be an integer between 1 and 100"})
    token = params.get("page_token")
    if token is not None:
        if errors:
            raise ListQueryError(errors)
        query, direction, key = _decode_token(token)
        if raw_limit is not None:
            query.limit = limit
        return query, direction, key
    statuses = list(getall("statuses", []))
    for status in statuses:
        if status not in ORDER_STATUSES:
            errors.append({"field": "statuses", "message": f"unknown order status {status!r}"})
    fulfillment = params.get("fulfillment_type")
    if fulfillment is not None and fulfillment not in _FULFILLMENT:
        errors.append(
            {
                "field": "fulfillment_type",
                "message": "must be FULFILLED_BY_SELLER or FULFILLED_BY_PARTNER",
            }
        )
    updated_from = None
    if (raw := params.get("updated_from")) is not None:
        updated_from = _parse_time(raw, "updated_from", errors)
    if errors:
        raise ListQueryError(errors)
    order_ids = list(getall("order_ids", []))
    return ListQuery(order_ids, statuses, updated_from, fulfillment, limit), None, None


def _money(amount: Decimal, currency: str) -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def _updated_at(order: SimOrder, now: float) -> datetime:
    assert order.updated_at is not None
    latest = order.updated_at
    for line in order.lines:
        for adj in line.adjustments:
            if adj.visible_from <= now and adj.created_at > latest:
                latest = adj.created_at
    return latest


def _render_line(order: SimOrder, line: SimLine, now: float) -> dict[str, Any]:
    visible = line.visible_adjustments(now)
    quantity = line.quantity - sum(adj.quantity for adj in visible)
    shipping = line.shipping_price - sum(
        (Decimal(adj.shipping_price["amount"]) for adj in visible), Decimal(0)
    )
    status = line.status or order.status
    body: dict[str, Any] = {
        "id": line.id,
        "channel_order_line_id": line.id.partition("_")[2] or line.id,
        "product": {"id": line.product_id, "title": line.title or f"Product {line.product_id}"},
        "quantity": quantity,
        "can_cancel": order.status in CANCELLABLE_STATUSES and line.remaining_quantity > 0,
        "can_refund": order.status in ("SHIPPED", "DELIVERED"),
        "price": _money(line.price * quantity, line.currency),
        "taxes": [],
        "total_shipping_price": _money(max(shipping, Decimal(0)), line.currency),
        "shipping_taxes": [],
        "status": status,
        "adjustments": [
            {
                "adjustment_id": adj.adjustment_id,
                "id": adj.id,
                "type": "CANCELATION",
                "created_at": format_rfc3339(adj.created_at),
                "quantity": adj.quantity,
                "reason": adj.reason,
                "price": dict(adj.price),
                "shipping_price": dict(adj.shipping_price),
                "taxes": list(adj.taxes),
                "shipping_taxes": list(adj.shipping_taxes),
            }
            for adj in visible
        ],
        "custom_attributes": [],
    }
    if quantity == 0 and line.quantity > 0:
        body["status"] = "CLOSED"
        body["status_reason"] = "CANCELED"
    return body


def render_order(order: SimOrder, now: float) -> dict[str, Any]:
    """The ``OrderResponse`` for one order as of monotonic instant ``now``."""
    assert order.created_at is not None
    updated = format_rfc3339(_updated_at(order, now))
    return {
        "id": order.id,
        "channel_order_id": order.id.partition("_")[2] or order.id,
        "origin": {
            "channel_id": order.id.partition("_")[0] if "_" in order.id else "0001",
            "channel_name": "Simulated channel",
            "channel_store_id": "1",
            "channel_store_name": "Simulator store",
        },
        "created_at": format_rfc3339(order.created_at),
        "channel_updated_at": updated,
        "updated_at": updated,
        "status": order.status,
        "order_lines": [_render_line(order, line, now) for line in order.lines],
        "billing_info": {"address": dict(_ADDRESS)},
        "shipping_info": {
            "email": "customer@example.com",
            "address": dict(_ADDRESS),
            "carrier": "UPS",
            "method": "Standard",
        },
        "fulfillment": {"type": "FULFILLED_BY_SELLER"},
        "custom_attributes": [],
    }


def list_orders(
    state: SimState, query: ListQuery, direction: str | None, key: tuple[str, str] | None
) -> dict[str, Any]:
    """One page, newest update first; seek tokens point at the page's edge items."""
    now = state.clock.now()
    if query.order_ids:
        candidates = [state.orders[i] for i in dict.fromkeys(query.order_ids) if i in state.orders]
        since = query.updated_from
    else:
        candidates = list(state.orders.values())
        # The spec: without order_ids, updated_from defaults to 30 days ago.
        since = query.updated_from or (state.clock.wall() - timedelta(days=30))
    rows: list[tuple[str, str, SimOrder]] = []
    for order in candidates:
        updated = _updated_at(order, now)
        if since is not None and updated < since:
            continue
        if query.statuses and order.status not in query.statuses:
            continue
        if query.fulfillment_type not in (None, "FULFILLED_BY_SELLER"):
            continue
        rows.append((format_rfc3339(updated), order.id, order))
    rows.sort(key=lambda row: (row[0], row[1]), reverse=True)
    keys = [(row[0], row[1]) for row in rows]
    if key is None:
        start = 0
    elif direction == "next":
        # First row strictly after the key in (desc) order.
        start = next((i for i, k in enumerate(keys) if k < key), len(keys))
    else:
        end = next((i for i, k in enumerate(keys) if k <= key), len(keys))
        start = max(0, end - query.limit)
    stop = start + query.limit
    if direction == "prev" and key is not None:
        stop = next((i for i, k in enumerate(keys) if k <= key), len(keys))
    page = rows[start:stop]
    body: dict[str, Any] = {"data": [render_order(row[2], now) for row in page]}
    if page and stop < len(rows):
        body["next_page_token"] = query.to_token("next", keys[stop - 1])
    if page and start > 0:
        body["previous_page_token"] = query.to_token("prev", keys[start])
    return body
