"""Figure 5 — goodput under a server rate limit R.

The simulator runs with `--rate-limit R` (a token bucket of R requests per real second,
bursts up to R) and answers the excess with 429 + Retry-After. The same cancels are
sent twice, each time to a fresh simulator: with the client's `rate_limit=R`, then
without it (the client then relies on its 429 handling: a shared pause, retries).
Goodput is accepted cancels per wall second; the 429 share is counted by the server.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ._clients import run_library
from ._common import Figure, Sizes, fmt_ratio, load_sim_orders, make_requests
from ._procs import fetch_json, simulator

__all__ = ["run"]

GOAL_GOODPUT = 0.95
GOAL_429 = 0.01
CONCURRENCY = 16


async def _one_run(n: int, rate: float, client_limit: float | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        orders_file = Path(tmp) / "orders.json"
        options = ["--rate-limit", str(rate), "--orders", str(int(n / 0.9) + 10),
                   "--orders-out", str(orders_file)]
        with simulator(*options) as sim:
            orders = load_sim_orders(orders_file)[:n]
            if len(orders) < n:
                raise RuntimeError(f"the simulator made only {len(orders)} cancellable orders")
            requests = make_requests([o[0] for o in orders], [o[1] for o in orders],
                                     [o[2] for o in orders])
            started = time.perf_counter()
            accepted = await run_library(sim.info["base_url"], sim.info["token"], requests,
                                         CONCURRENCY, rate_limit=client_limit)
            elapsed = time.perf_counter() - started
            stats = await fetch_json("GET", sim.info["stats_url"])
    assert isinstance(stats, dict)
    api_requests = stats["requests_by_route"].get("cancel", 0)
    return {"accepted": accepted, "goodput": accepted / elapsed, "seconds": elapsed,
            "requests": api_requests, "share_429": stats["responses_429"] / max(api_requests, 1),
            "failed": n - accepted}


async def run(sizes: Sizes) -> Figure:
    n, rate = sizes.rate_limit_requests, sizes.rate_limit
    limited = await _one_run(n, rate, rate)
    unlimited = await _one_run(n, rate, None)
    rows = []
    for label, result in ((f"client `rate_limit={rate:g}`", limited),
                          ("no client rate limit (429 handling only)", unlimited)):
        rows.append([label, f"{result['goodput']:.1f}", fmt_ratio(result["goodput"] / rate),
                     f"{result['share_429']:.1%}", f"{result['requests']:,.0f}",
                     f"{result['failed']:,.0f}", f"{result['seconds']:.1f}"])
    ratio = limited["goodput"] / rate
    met = ratio >= GOAL_GOODPUT and limited["share_429"] <= GOAL_429
    return Figure(
        number=5, title=f"Goodput under a server rate limit R = {rate:g}/s",
        result=f"{limited['goodput']:.1f} accepted/s, {limited['share_429']:.1%} 429s",
        baseline=f"R; no client limit: {unlimited['goodput']:.1f}/s, "
                 f"{unlimited['share_429']:.1%} 429s",
        ratio=fmt_ratio(ratio), goal=f">= {GOAL_GOODPUT:.2f} R, <= 1 % 429s", met=met,
        header=["client", "accepted/s", "of R", "429 share", "requests sent", "not accepted",
                "seconds"],
        rows=rows,
        notes=[f"{n:,} cancels per run, concurrency {CONCURRENCY}, default RetryPolicy; "
               "each run gets a fresh simulator (full bucket). The server's bucket allows a "
               "burst of R at the start, which an unlimited client spends at once."])
