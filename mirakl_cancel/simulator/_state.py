"""The simulated back office: orders, actions and the cancel business rules.

Everything here is synchronous and runs on the event loop thread, so each
request's effect is atomic without locks.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from ._auth import TokenStore
from ._clock import Clock
from ._config import SimulatorConfig
from ._faults import FaultPlan
from ._generate import generate_orders
from ._model import CANCELLABLE_STATUSES, SimAction, SimAdjustment, SimLine, SimOrder
from ._ratelimit import TokenBucket
from ._stats import SimulatorStats

__all__ = ["SimState"]


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


class SimState:
    """All mutable simulator state behind the HTTP routes."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.clock = Clock(self.config.time_scale)
        seed = self.config.seed
        # Independent streams: adding a fault rate must not reshuffle the
        # generated orders or the processing delays of a recorded scenario.
        self._gen_rng = random.Random(f"{seed}:orders")
        self._delay_rng = random.Random(f"{seed}:delays")
        self.latency_rng = random.Random(f"{seed}:latency")
        self.faults = FaultPlan(self.config.fault_rates, random.Random(f"{seed}:faults"))
        self.tokens = TokenStore(self.clock, self.config.token_ttl)
        self.stats = SimulatorStats()
        self.bucket = (
            TokenBucket(self.config.rate_limit, self.clock.now())
            if self.config.rate_limit is not None
            else None
        )
        self.orders: dict[str, SimOrder] = {}
        self.actions: dict[str, SimAction] = {}
        self._seen_posts: set[tuple[str, str]] = set()
        self._last_listing: dict[str, float] = {}
        self._generated = 0
        self._adjustments = 0

    # -- order book -------------------------------------------------------

    def add_order(self, order: SimOrder) -> SimOrder:
        """Register (or replace) an order; missing timestamps default to now."""
        if order.created_at is None:
            order.created_at = self.clock.wall()
        if order.updated_at is None:
            order.updated_at = order.created_at
        self.orders[order.id] = order
        return order

    def add_orders(self, orders: Iterable[SimOrder]) -> list[SimOrder]:
        return [self.add_order(order) for order in orders]

    def generate_orders(
        self,
        n_orders: int,
        lines_per_order: tuple[int, int] = (1, 5),
        wrong_state_ratio: float = 0.05,
    ) -> list[SimOrder]:
        orders = generate_orders(
            self._gen_rng,
            n_orders,
            lines_per_order,
            wrong_state_ratio,
            start_number=3_200_000 + self._generated,
        )
        self._generated += n_orders
        return self.add_orders(orders)

    def load_orders(self, path: str | Path) -> list[SimOrder]:
        """Load a JSON list of orders, or ``{"orders": [...]}``; see ``SimOrder.from_dict``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = data.get("orders", [])
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of orders")
        return self.add_orders(SimOrder.from_dict(item) for item in data)

    # -- cancel ------------------------------------------------------------

    def note_post(self, order_id: str, canonical_body: str) -> None:
        key = (order_id, canonical_body)
        duplicate = key in self._seen_posts
        if not duplicate:
            self._seen_posts.add(key)
        self.stats.count_post(order_id, duplicate)

    def submit_cancel(self, order: SimOrder, cancelations: list[dict[str, Any]]) -> SimAction:
        """Create the action for a schema-valid cancel and settle its outcome now.

        Deciding at submission reserves quantities in arrival order, which is
        what makes a lost-response retry visibly cancel *more* units.
        """
        cfg = self.config
        now = self.clock.now()
        wall = self.clock.wall()
        delay = self.clock.scaled(self._delay_rng.uniform(*cfg.processing_delay))
        action_id = str(uuid.uuid4())
        errors = self._apply(order, cancelations, now + delay, wall + timedelta(seconds=delay))
        action = SimAction(
            id=action_id,
            order_id=order.id,
            created_at=wall,
            created_mono=now,
            due_mono=now + delay,
            outcome="FAILED" if errors else "SUCCESS",
            errors=errors,
        )
        self.actions[action_id] = action
        self.stats.actions_created += 1
        return action

    @staticmethod
    def _find_line(order: SimOrder, line_id: Any, product_id: Any) -> SimLine | None:
        for line in order.lines:
            if (line_id is None or line.id == line_id) and (
                product_id is None or line.product_id == product_id
            ):
                return line
        return None

    def _apply(
        self,
        order: SimOrder,
        cancelations: list[dict[str, Any]],
        visible_from: float,
        processed_at: Any,
    ) -> list[dict[str, str]]:
        """Apply all cancelations or none; return one error per bad cancelation."""
        if order.status not in CANCELLABLE_STATUSES:
            return [
                _error(
                    "ORDER_IN_WRONG_STATE",
                    f"The order was not in the expected status (it is {order.status}).",
                )
            ]
        errors: list[dict[str, str]] = []
        tentative: dict[str, int] = {}
        plan: list[tuple[SimLine, dict[str, Any]]] = []
        for index, item in enumerate(cancelations):
            where = f"cancelations[{index}]"
            line_id, product_id = item.get("order_line_id"), item.get("product_id")
            if line_id is None and product_id is None:
                errors.append(
                    _error("INVALID_INPUT", f"{where}: order_line_id or product_id is required.")
                )
                continue
            line = self._find_line(order, line_id, product_id)
            if line is None:
                wanted = line_id if line_id is not None else f"product {product_id}"
                errors.append(
                    _error(
                        "DATA_NOT_FOUND",
                        f"{where}: order line {wanted} not found in order {order.id}.",
                    )
                )
                continue
            currencies = {item["price"]["currency"], item["shipping_price"]["currency"]}
            for key in ("taxes", "shipping_taxes"):
                currencies.update(tax["amount"]["currency"] for tax in item.get(key) or ())
            if currencies != {line.currency}:
                errors.append(
                    _error(
                        "INVALID_INPUT",
                        f"{where}: currency {', '.join(sorted(currencies))} does not match "
                        f"the order line currency {line.currency}.",
                    )
                )
                continue
            remaining = tentative.get(line.id, line.remaining_quantity)
            quantity: int = item["quantity"]
            if quantity > remaining:
                errors.append(
                    _error(
                        "INVALID_INPUT",
                        f"{where}: cannot cancel {quantity} of order line {line.id}: "
                        f"only {remaining} left.",
                    )
                )
                continue
            tentative[line.id] = remaining - quantity
            plan.append((line, item))
        if errors:
            return errors
        for line, item in plan:
            line.remaining_quantity -= item["quantity"]
            self._adjustments += 1
            line.adjustments.append(
                SimAdjustment(
                    id=str(5_000_000 + self._adjustments),
                    adjustment_id=f"{line.id}_C{self._adjustments}",
                    created_at=processed_at,
                    visible_from=visible_from,
                    quantity=item["quantity"],
                    reason=item["reason"],
                    price=_money(item["price"]),
                    shipping_price=_money(item["shipping_price"]),
                    taxes=_taxes(item.get("taxes")),
                    shipping_taxes=_taxes(item.get("shipping_taxes")),
                )
            )
        return []

    # -- status ------------------------------------------------------------

    def accept_poll(self, action: SimAction, now: float) -> float:
        """Record a poll; return 0 if allowed, else the real seconds still to wait."""
        self.stats.count_poll(action.id)
        action.polls += 1
        interval = self.clock.scaled(self.config.min_poll_interval)
        last = action.last_accepted_poll
        if last is not None and now - last < interval:
            self.stats.poll_violations += 1
            return interval - (now - last)
        action.last_accepted_poll = now
        return 0.0

    def accept_listing(self, credential: str, now: float) -> float:
        """Record a v2-listOrders call; 0 if allowed, else the real seconds still to wait.

        Like a poll: a refused call does not move the window, so a client that retries
        as soon as Retry-After says gets through.
        """
        self.stats.list_calls += 1
        interval = self.clock.scaled(self.config.min_list_interval)
        last = self._last_listing.get(credential)
        if last is not None and now - last < interval:
            self.stats.list_violations += 1
            return interval - (now - last)
        self._last_listing[credential] = now
        return 0.0


def _money(value: dict[str, Any]) -> dict[str, Any]:
    amount = value["amount"]
    return {"amount": Decimal(amount), "currency": value["currency"]}


def _taxes(value: Any) -> list[dict[str, Any]]:
    return [{"code": tax["code"], "amount": _money(tax["amount"])} for tax in value or ()]
