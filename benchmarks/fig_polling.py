"""Figure 4 — polling economy against the simulator (scaled time).

Cancels are sent to `python -m mirakl_cancel.simulator` (time scale 0.01: an API
minute lasts 0.6 s; 0.001 with `--quick`) and each accepted action is tracked at once
with `PollPolicy(min_interval=60 s, interval=..., first_delay=60 s)` in scaled seconds.
The baseline is the fewest reads that schedule allows for each action, computed from the
action's real processing delay (`updated_at - created_at` of its final status) less the
time between its creation and the start of tracking (same machine, same wall clock):
`1 + ceil((delay - lag - first_delay) / interval)`, at least 1. Reads are counted by the
simulator, which also counts every read closer than 60 API seconds to the previous one
(`poll_violations`, answered 429).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from pathlib import Path

from mirakl_cancel import ActionStatus, MiraklConnectClient, StaticToken
from mirakl_cancel.tracker import ActionTracker, PollPolicy

from ._common import Figure, Sizes, load_sim_orders, make_requests, median
from ._procs import fetch_json, simulator

__all__ = ["run"]

MIN_POLL = 60.0
DELAY = (60.0, 400.0)


def fewest_reads(delay: float, first_delay: float, interval: float) -> int:
    """Reads a fixed schedule needs to see an action that completes after `delay`."""
    if delay <= first_delay:
        return 1
    return 1 + math.ceil((delay - first_delay) / interval - 1e-9)


async def _one_policy(n: int, interval_api: float, scale: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        orders_file = Path(tmp) / "orders.json"
        options = ["--time-scale", str(scale), "--min-poll-interval", str(MIN_POLL),
                   "--processing-delay", f"{DELAY[0]},{DELAY[1]}", "--token-ttl", "1e9",
                   "--orders", str(int(n / 0.9) + 10), "--orders-out", str(orders_file)]
        with simulator(*options) as sim:
            orders = load_sim_orders(orders_file)[:n]
            requests = make_requests([o[0] for o in orders], [o[1] for o in orders],
                                     [o[2] for o in orders])
            policy = PollPolicy(min_interval=MIN_POLL * scale, interval=interval_api * scale,
                                first_delay=MIN_POLL * scale)
            statuses: list[ActionStatus] = []
            tracked_at: dict[str, float] = {}
            client = MiraklConnectClient(
                auth=StaticToken(sim.info["token"]), base_url=sim.info["base_url"],
                max_concurrency=16, min_poll_interval=MIN_POLL * scale)
            async with client, ActionTracker(client, policy, concurrency=16) as tracker:
                futures = []
                async for outcome in client.cancel_many(requests):
                    if outcome.accepted is None:
                        raise RuntimeError(f"cancel refused: {outcome.error}")
                    action_id = outcome.accepted.action_id
                    tracked_at[action_id] = time.time()
                    futures.append(tracker.track(action_id))
                statuses = list(await asyncio.gather(*futures))
            stats = await fetch_json("GET", sim.info["stats_url"])
    assert isinstance(stats, dict)
    polls: dict[str, int] = stats["polls_per_action"]
    actual = sum(polls.get(status.id, 0) for status in statuses)
    fewest = 0
    lags: list[float] = []
    for status in statuses:
        if status.created_at is None or status.updated_at is None:
            raise RuntimeError(f"action {status.id} has no timestamps")
        delay = (status.updated_at - status.created_at).total_seconds()
        lag = max(0.0, tracked_at[status.id] - status.created_at.timestamp())
        lags.append(lag / scale)
        fewest += fewest_reads(delay - lag, MIN_POLL * scale, interval_api * scale)
    return {"actions": len(statuses), "polls": actual, "fewest": fewest,
            "violations": stats["poll_violations"],
            "status_429": stats["status_codes"].get("429", 0), "lag": median(lags)}


async def run(sizes: Sizes) -> Figure:
    n, scale = sizes.polling_actions, sizes.polling_scale
    rows = []
    results = {}
    for interval in (300.0, 60.0):
        result = await _one_policy(n, interval, scale)
        results[interval] = result
        rows.append([f"min_interval 60 s, interval {interval:.0f} s, first_delay 60 s",
                     f"{result['actions']:,.0f}", f"{result['polls'] / result['actions']:.2f}",
                     f"{result['fewest'] / result['actions']:.2f}",
                     f"{result['polls'] / result['fewest']:.2f}x",
                     f"{result['violations']:,.0f}"])
    main = results[300.0]
    violations = sum(r["violations"] for r in results.values())
    ratio = main["polls"] / main["fewest"]
    return Figure(
        number=4, title="Polling economy (simulator, interval 300 s)",
        result=f"{main['polls'] / main['actions']:.2f} reads/action, "
               f"{violations:.0f} violations",
        baseline=f"fewest the schedule allows: {main['fewest'] / main['actions']:.2f}",
        ratio=f"{ratio:.2f}x", goal="about 1.00x; 0 violations",
        met=violations == 0 and ratio <= 1.05,
        header=["policy (API seconds)", "actions", "reads/action", "fewest/action",
                "ratio", "poll violations"],
        rows=rows,
        notes=[f"Simulator time scale {scale} (60 API s = {60 * scale * 1000:.0f} ms), "
               f"processing delay uniform {DELAY[0]:.0f}-{DELAY[1]:.0f} API s, "
               "`min_poll_interval` 60 on both sides; tracker concurrency 16; median lag "
               f"from creation to tracking {main['lag']:.2f} API s. "
               "A read can only be saved by luck (a late read that finds the action done), "
               "so a ratio below 1.00 is jitter, not a schedule better than the minimum."])
