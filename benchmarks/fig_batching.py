"""Figure 6 — batching: POSTs for 10,000 line cancels spread over 2,000 orders.

The lines arrive in a shuffled (seeded) order, as they would from a file or an event
stream. They are sent once as one request per line, once through `group_by_order`
(one request per order); the fixed-answer server counts the POSTs it receives.
"""

from __future__ import annotations

import random
import time
from decimal import Decimal

from mirakl_cancel import Cancelation, CancelReason, CancelRequest, Money
from mirakl_cancel.batching import LineCancel, group_by_order

from ._clients import run_library
from ._common import Figure, Sizes, fmt_ratio
from ._procs import fetch_json, fixed_server

__all__ = ["run"]

TOKEN = "bench-token"
CONCURRENCY = 32


def make_lines(n_lines: int, n_orders: int, seed: int = 7) -> list[LineCancel]:
    """`n_lines` line cancels, as evenly spread over `n_orders` orders as possible."""
    price, shipping = Money(Decimal("9.99"), "EUR"), Money(Decimal("0"), "EUR")
    lines = [
        LineCancel(f"0003_{3_400_000 + i % n_orders}-A", Cancelation(
            quantity=1, reason=CancelReason.OUT_OF_STOCK, price=price, shipping_price=shipping,
            order_line_id=f"0003_{3_400_000 + i % n_orders}-A-{i // n_orders + 1}"))
        for i in range(n_lines)]
    random.Random(seed).shuffle(lines)
    return lines


async def run(sizes: Sizes) -> Figure:
    n_lines, n_orders = sizes.batching_lines, sizes.batching_orders
    lines = make_lines(n_lines, n_orders)
    variants = {
        "one request per line": [CancelRequest(line.order_id, [line.cancelation])
                                 for line in lines],
        "`group_by_order(lines)`": group_by_order(lines),
    }
    rows = []
    posts: dict[str, int] = {}
    with fixed_server() as server:
        base = f"http://127.0.0.1:{server.info['port']}"
        for name, requests in variants.items():
            await fetch_json("POST", f"{base}/_reset")
            cpu, wall = time.process_time(), time.perf_counter()
            accepted = await run_library(base, TOKEN, requests, CONCURRENCY)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            counts = await fetch_json("GET", f"{base}/_stats")
            assert isinstance(counts, dict)
            posts[name] = counts["cancel"]
            if accepted != len(requests):
                raise RuntimeError(f"{name}: {accepted} of {len(requests)} accepted")
            rows.append([name, f"{counts['cancel']:,}", f"{n_lines / counts['cancel']:.1f}",
                         f"{wall:.2f}", f"{cpu:.2f}"])
    grouped, single = posts["`group_by_order(lines)`"], posts["one request per line"]
    return Figure(
        number=6, title=f"Batching ({n_lines:,} line cancels, {n_orders:,} orders)",
        result=f"{grouped:,} POSTs with `group_by_order`",
        baseline=f"{single:,} POSTs, one per line", ratio=fmt_ratio(grouped / single),
        goal=f"one POST per order ({n_orders:,})", met=grouped == n_orders,
        header=["requests built with", "POSTs (server count)", "lines/POST", "wall s",
                "client CPU s"],
        rows=rows,
        notes=["Each POST is also one action to poll later, so grouping divides the "
               "status reads by the same factor. Concurrency "
               f"{CONCURRENCY}, fixed-answer server."])
