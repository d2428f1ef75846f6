"""The orders that the repository's example files (`examples/cancel-lines.*`) cancel.

`mirakl-cancel simulator --example-orders` serves them, so that the README's commands
run as pasted: every example row is a cancel the simulator can accept and process to
SUCCESS. Quantities leave room for both example files (CSV and JSONL cancel the same
lines) to run once each against one simulator.
"""

from __future__ import annotations

from decimal import Decimal

from ._model import SimLine, SimOrder

__all__ = ["example_orders"]


def example_orders() -> list[SimOrder]:
    """Fresh copies (the simulator mutates its orders as cancels are applied)."""
    return [
        SimOrder(id="0001_3200000-A", lines=[
            SimLine(id="0001_3200000-A-1", product_id="SKU-10417", quantity=2,
                    price=Decimal("19.99"), shipping_price=Decimal("9.80"), currency="EUR",
                    title="Eco Kettle"),
            SimLine(id="0001_3200000-A-2", product_id="SKU-22950", quantity=4,
                    price=Decimal("29.99"), currency="EUR", title="Classic Mug"),
        ]),
        SimOrder(id="0002_3200001-A", lines=[
            SimLine(id="0002_3200001-A-1", product_id="SKU-48211", quantity=2,
                    price=Decimal("129.00"), currency="GBP", title="Wireless Headphones"),
        ]),
        SimOrder(id="0003_3200002-A", lines=[
            SimLine(id="0003_3200002-A-1", product_id="SKU-77120", quantity=6,
                    price=Decimal("9.99"), shipping_price=Decimal("10.00"), currency="USD",
                    title="Compact Tent Peg Set"),
        ]),
    ]
