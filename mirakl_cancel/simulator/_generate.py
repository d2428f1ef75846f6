"""Seeded, realistic order books for demos and benchmarks.

Ids follow Mirakl Connect's ``<channel>_<channel order id>`` shape and prices
have two decimals, so a client that mishandles either shows it here rather
than in production.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ._model import SimLine, SimOrder

__all__ = ["generate_orders"]

_CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")
_WRONG_STATES = ("SHIPPED", "DELIVERED", "CLOSED")
_ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Pro", "Vintage", "Wireless", "Organic")
_NOUNS = ("Backpack", "Blender", "Desk Lamp", "Headphones", "Kettle", "Mug", "Sneakers", "Tent")


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.randint(low * 100, high * 100)) / 100


def generate_orders(
    rng: random.Random,
    n_orders: int,
    lines_per_order: tuple[int, int] = (1, 5),
    wrong_state_ratio: float = 0.05,
    start_number: int = 3_200_000,
) -> list[SimOrder]:
    """Build ``n_orders`` orders; about ``wrong_state_ratio`` of them are past cancelation."""
    low, high = lines_per_order
    if not 1 <= low <= high:
        raise ValueError("lines_per_order must be (low, high) with 1 <= low <= high")
    if not 0 <= wrong_state_ratio <= 1:
        raise ValueError("wrong_state_ratio must be within [0, 1]")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    orders: list[SimOrder] = []
    for index in range(n_orders):
        channel = rng.choice(("0001", "0002", "0003"))
        order_id = f"{channel}_{start_number + index}-A"
        currency = rng.choice(_CURRENCIES)
        status = (
            rng.choice(_WRONG_STATES) if rng.random() < wrong_state_ratio else "AWAITING_SHIPMENT"
        )
        lines = [
            SimLine(
                id=f"{order_id}-{number}",
                product_id=f"SKU-{rng.randint(10_000, 99_999)}",
                quantity=rng.randint(1, 5),
                price=_money(rng, 2, 300),
                shipping_price=_money(rng, 0, 15),
                currency=currency,
                title=f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}",
            )
            for number in range(1, rng.randint(low, high) + 1)
        ]
        created = now - timedelta(minutes=rng.randint(5, 3 * 24 * 60))
        orders.append(
            SimOrder(
                id=order_id, status=status, lines=lines, created_at=created, updated_at=created
            )
        )
    return orders
