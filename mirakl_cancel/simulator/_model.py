"""The simulator's live records: orders, lines, adjustments and actions.

These are plain mutable dataclasses rather than the client's attrs models on
purpose: the simulator must not share code with the client it is meant to
second-guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ._clock import Clock, format_rfc3339

__all__ = [
    "CANCELLABLE_STATUSES",
    "SimAction",
    "SimAdjustment",
    "SimLine",
    "SimOrder",
]

#: Order statuses in which Mirakl still accepts a cancelation; anything later
#: (SHIPPED, DELIVERED, CLOSED, ...) makes the action fail with
#: ``ORDER_IN_WRONG_STATE``.
CANCELLABLE_STATUSES = frozenset(
    {"AWAITING_FRAUD_CHECK", "AWAITING_ACCEPTANCE", "AWAITING_PAYMENT", "AWAITING_SHIPMENT"}
)


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal, float)):
        raise ValueError(f"{what}: expected a number, got {value!r}")
    try:
        # str() first so a float read from JSON keeps its printed digits.
        return Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{what}: not a number: {value!r}") from exc


@dataclass
class SimAdjustment:
    """A processed cancelation, as ``v2-listOrders`` shows it on the line.

    ``visible_from`` is the monotonic instant the owning action completes:
    before that the adjustment is reserved (it counts against the remaining
    quantity for new cancels) but not yet listed, like an asynchronous
    backend whose read model lags.
    """

    id: str
    adjustment_id: str
    created_at: datetime
    visible_from: float
    quantity: int
    reason: str
    price: dict[str, Any]
    shipping_price: dict[str, Any]
    taxes: list[dict[str, Any]] = field(default_factory=list)
    shipping_taxes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SimLine:
    """An order line. ``price`` is the unit price, ``shipping_price`` the line's total shipping."""

    id: str
    product_id: str
    quantity: int
    price: Decimal
    shipping_price: Decimal = Decimal("0")
    currency: str = "EUR"
    title: str | None = None
    status: str | None = None
    adjustments: list[SimAdjustment] = field(default_factory=list)
    #: Ordered quantity minus every accepted cancel, including still-pending ones.
    remaining_quantity: int = -1

    def __post_init__(self) -> None:
        self.price = _decimal(self.price, f"line {self.id} price")
        self.shipping_price = _decimal(self.shipping_price, f"line {self.id} shipping_price")
        if self.remaining_quantity < 0:
            self.remaining_quantity = self.quantity

    def visible_adjustments(self, now: float) -> list[SimAdjustment]:
        return [adj for adj in self.adjustments if adj.visible_from <= now]

    def to_dict(self) -> dict[str, Any]:
        """The seed-file form read by :meth:`from_dict` (not the API shape)."""
        data: dict[str, Any] = {
            "id": self.id,
            "product_id": self.product_id,
            "quantity": self.quantity,
            "price": str(self.price),
            "shipping_price": str(self.shipping_price),
            "currency": self.currency,
        }
        if self.title is not None:
            data["title"] = self.title
        if self.status is not None:
            data["status"] = self.status
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimLine:
        quantity = data["quantity"]
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise ValueError(f"line {data.get('id')!r}: quantity must be an integer >= 0")
        return cls(
            id=str(data["id"]),
            product_id=str(data["product_id"]),
            quantity=quantity,
            price=_decimal(data["price"], "price"),
            shipping_price=_decimal(data.get("shipping_price", 0), "shipping_price"),
            currency=str(data.get("currency", "EUR")),
            title=data.get("title"),
            status=data.get("status"),
        )


@dataclass
class SimOrder:
    """An order known to the simulator; ``status`` decides whether it can be canceled."""

    id: str
    status: str = "AWAITING_SHIPMENT"
    lines: list[SimLine] = field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "lines": [line.to_dict() for line in self.lines],
        }
        if self.created_at is not None:
            data["created_at"] = format_rfc3339(self.created_at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimOrder:
        created = data.get("created_at")
        return cls(
            id=str(data["id"]),
            status=str(data.get("status", "AWAITING_SHIPMENT")),
            lines=[SimLine.from_dict(line) for line in data.get("lines", [])],
            created_at=(
                datetime.fromisoformat(created.replace("Z", "+00:00"))
                if isinstance(created, str)
                else None
            ),
        )


@dataclass
class SimAction:
    """One asynchronous cancel action.

    The outcome is decided when the POST is accepted (so quantities are
    reserved in arrival order, deterministically) but only revealed once the
    processing delay has elapsed; until then the action reads as PENDING.
    """

    id: str
    order_id: str
    created_at: datetime
    created_mono: float
    due_mono: float
    outcome: str
    errors: list[dict[str, str]] = field(default_factory=list)
    polls: int = 0
    last_accepted_poll: float | None = None

    @property
    def status(self) -> str:
        """The status a poll would see right now."""
        return self.status_at(Clock.now())

    def status_at(self, now: float) -> str:
        return self.outcome if now >= self.due_mono else "PENDING"

    def to_api(self, now: float) -> dict[str, Any]:
        """The ``ActionResponse`` body; ``errors`` only once FAILED, as Mirakl does."""
        status = self.status_at(now)
        created = format_rfc3339(self.created_at)
        if status == "PENDING":
            return {"id": self.id, "status": status, "created_at": created, "updated_at": created}
        updated = self.created_at + timedelta(seconds=self.due_mono - self.created_mono)
        body: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "created_at": created,
            "updated_at": format_rfc3339(updated),
        }
        if status == "FAILED":
            body["errors"] = list(self.errors)
        return body
