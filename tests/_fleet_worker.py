"""One worker process of a fleet, for tests/stores/test_fleet.py (run as a script).

    python tests/_fleet_worker.py JOB.json

JOB.json: {"mode": "cancel" | "track", "dsn": ... or null, "base_url", "token", ...}.
It prints one JSON line with what it did, and exits. `cancel` sends one cancel per
order (shared pacing when a dsn is given); `track` puts its actions on the fleet's
schedule and works the fleet's queue until nothing is pending.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from mirakl_cancel import (
    ActionTracker,
    Cancelation,
    CancelReason,
    CancelRequest,
    MiraklConnectClient,
    Money,
    PollPolicy,
    PostgresStore,
    RetryPolicy,
    StaticToken,
    Timeout,
    UncertainDeliveryError,
)
from mirakl_cancel._stores.pgtracker import SharedActionTracker


def client_for(job: dict[str, Any], store: PostgresStore | None) -> MiraklConnectClient:
    return MiraklConnectClient(
        auth=StaticToken(job["token"]), base_url=job["base_url"], store=store,
        rate_limit=job.get("rate"), max_concurrency=job.get("concurrency", 8),
        min_poll_interval=job.get("min_interval", 0.06),
        retry=RetryPolicy(base_delay=0.01, max_delay=0.1, max_attempts=8),
        # A read in flight holds its action's slot for the attempt's bound: a worker
        # killed mid-read frees it after that (scaled with the simulator's time).
        timeout=Timeout(answer=job.get("answer_timeout", 60.0)))


async def cancel(job: dict[str, Any], store: PostgresStore | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"accepted": 0, "uncertain": 0, "errors": 0,
                               "first": time.time(), "last": time.time()}
    async with client_for(job, store) as client:
        queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        for order in job["orders"]:
            queue.put_nowait(order)

        async def one() -> None:
            while not queue.empty():
                order_id, line_id, currency, price = queue.get_nowait()
                request = CancelRequest(order_id, [Cancelation(
                    quantity=1, reason=CancelReason.CUSTOMER_CANCELATION,
                    price=Money(Decimal(price), currency), shipping_price=Money(0, currency),
                    order_line_id=line_id)])
                try:
                    await client.cancel(request)
                    summary["accepted"] += 1
                    summary["last"] = time.time()  # wall clock: comparable across workers
                except UncertainDeliveryError:
                    summary["uncertain"] += 1
                except Exception:
                    summary["errors"] += 1

        await asyncio.gather(*(one() for _ in range(client.max_concurrency)))
        summary["rate_limited"] = client.stats.rate_limited
        summary["requests"] = client.stats.requests
    return summary


async def track(job: dict[str, Any], store: PostgresStore) -> dict[str, Any]:
    policy = PollPolicy(**job["policy"])
    async with client_for(job, store) as client:
        tracker = ActionTracker(client, policy, store=store, concurrency=job.get("slots", 8),
                                lease=job["lease"], idle_poll=job.get("idle_poll", 0.05))
        assert isinstance(tracker, SharedActionTracker)
        async with tracker:
            for action_id in job["actions"]:
                await tracker.add_shared(action_id)
            print(json.dumps({"added": len(job["actions"])}), flush=True)
            waited = None
            if job.get("wait"):
                waited = (await tracker.wait(job["wait"])).state.value
            await tracker.work()
        return {"polls": tracker.stats.polls, "resolved": tracker.stats.resolved,
                "waited": waited}


async def main(job: dict[str, Any]) -> None:
    store = PostgresStore(job["dsn"]) if job.get("dsn") else None
    try:
        if job["mode"] == "cancel":
            summary = await cancel(job, store)
        else:
            assert store is not None
            summary = await track(job, store)
    finally:
        if store is not None:
            await store.close()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
