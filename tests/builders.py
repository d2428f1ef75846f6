"""One home for the test data builders: a line cancel, a request, money, a simulator order.

Defaults describe a plain, valid cancel (one unit of line `O1-1`, 19.99 EUR, out of
stock); a test names only what it is about. Tests import these rather than writing
their own `Cancelation(...)` helpers, so that a model change is one edit here.
"""

from __future__ import annotations

from decimal import Decimal

from mirakl_cancel import Cancelation, CancelReason, CancelRequest, Money
from mirakl_cancel.simulator import SimLine, SimOrder


def money(amount: Decimal | int | str = "19.99", currency: str = "EUR") -> Money:
    return Money(amount, currency)


def line(line_id: str = "O1-1", quantity: int = 1, *, price: Decimal | int | str = "19.99",
         currency: str = "EUR", shipping: Decimal | int | str = 0,
         reason: CancelReason = CancelReason.OUT_OF_STOCK) -> Cancelation:
    """A cancel of `quantity` units of one line, `price` being the amount refunded."""
    return Cancelation(quantity=quantity, reason=reason, price=Money(price, currency),
                       shipping_price=Money(shipping, currency), order_line_id=line_id)


def request(order_id: str = "O1", lines: int = 1, **options: object) -> CancelRequest:
    """A request for lines `ORDER-1` … `ORDER-n` of one order (`options` go to `line`)."""
    return CancelRequest(order_id, [line(f"{order_id}-{n}", **options)  # type: ignore[arg-type]
                                    for n in range(1, lines + 1)])


def sim_order(order_id: str = "O1", *, quantity: int = 3,
              price: Decimal | int | str = "9.99") -> SimOrder:
    """A simulator order with one line `ORDER-1` of `quantity` units at `price` each."""
    return SimOrder(id=order_id, lines=[
        SimLine(id=f"{order_id}-1", product_id="P1", quantity=quantity, price=Decimal(price))])


def request_for(order_id: str, lines: int = 1) -> CancelRequest:
    """One unit of `sim_order(order_id)`'s line, refunded at its price (`lines` times)."""
    return CancelRequest(order_id, [line(f"{order_id}-1", price="9.99")] * lines)
