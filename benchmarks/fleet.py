"""Fleet goodput: 1, 2 and 4 worker processes sharing `rate_limit=R` against a server
limited to R, with the shared PostgreSQL store and without it (each worker pacing itself).

    python -m benchmarks.fleet [--rate R] [--requests N] [--tracker ACTIONS]

`--tracker ACTIONS` measures the shared tracker instead: ACTIONS cancels, then 3 worker
processes tracking them together, one SIGKILLed after 2 s; it reports whether every
action was resolved, the reads made and the simulator's poll-ceiling violations.

Uses MIRAKL_CANCEL_TEST_PG when set, else starts a throwaway PostgreSQL (tests/_pg.py).
Goodput is accepted cancels per wall second of the fleet (first send to last answer,
on the wall clock shared by the processes); the 429 share is counted by the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import _pg  # noqa: E402

WORKER = str(ROOT / "tests" / "_fleet_worker.py")


def fleet(sim: ThreadedSimulator, dsn: str | None, rate: float, workers: int,
          total: int, tmp: Path) -> dict[str, float]:
    orders = sim.generate_orders(n_orders=total, lines_per_order=(1, 1), wrong_state_ratio=0.0)
    rows = [[o.id, o.lines[0].id, o.lines[0].currency, str(o.lines[0].price)] for o in orders]
    share = total // workers
    sim.reset_stats()
    procs = []
    for n in range(workers):
        job = {"mode": "cancel", "dsn": dsn, "base_url": sim.base_url, "token": sim.token,
               "rate": rate, "concurrency": 16, "orders": rows[n * share:(n + 1) * share]}
        path = tmp / f"w{n}.json"
        path.write_text(json.dumps(job))
        procs.append(subprocess.Popen([sys.executable, WORKER, str(path)],
                                      stdout=subprocess.PIPE, text=True))
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        results.append(json.loads(out.strip().splitlines()[-1]))
    accepted = sum(r["accepted"] for r in results)
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    cancels = sim.stats.requests_by_route.get("cancel", 0)
    return {"goodput": accepted / span, "share_429": sim.stats.responses_429 / max(cancels, 1),
            "accepted": accepted, "sent": share * workers}


def _spawn(job: dict[str, Any], path: Path) -> subprocess.Popen[str]:
    path.write_text(json.dumps(job))
    return subprocess.Popen([sys.executable, WORKER, str(path)], stdout=subprocess.PIPE,
                            text=True)


async def _send(sim: ThreadedSimulator, count: int) -> list[str]:
    from mirakl_cancel import (
        Cancelation,
        CancelReason,
        CancelRequest,
        MiraklConnectClient,
        Money,
        StaticToken,
    )

    orders = sim.generate_orders(n_orders=count, lines_per_order=(1, 1), wrong_state_ratio=0.0)
    requests = [CancelRequest(o.id, [Cancelation(
        quantity=1, reason=CancelReason.OUT_OF_STOCK,
        price=Money(o.lines[0].price, o.lines[0].currency),
        shipping_price=Money(0, o.lines[0].currency), order_line_id=o.lines[0].id)])
        for o in orders]
    async with MiraklConnectClient(auth=StaticToken(sim.token), base_url=sim.base_url,
                                   max_concurrency=32) as client:
        return [outcome.accepted.action_id async for outcome in client.cancel_many(requests)
                if outcome.accepted is not None]


def tracker(dsn: str, count: int) -> None:
    # Actions take 3-10 s to end and are read every 2 s: several reads each, and the
    # kill lands mid-work.
    config = SimulatorConfig(time_scale=0.001, processing_delay=(3000, 10000))
    policy = {"min_interval": 0.06, "interval": 2.0, "first_delay": 0.06, "timeout": 900.0}
    with ThreadedSimulator(config) as sim, tempfile.TemporaryDirectory() as tmp:
        action_ids = asyncio.run(_send(sim, count))
        job = {"mode": "track", "dsn": dsn, "base_url": sim.base_url, "token": sim.token,
               "policy": policy, "lease": 5.0, "slots": 32, "concurrency": 32,
               "idle_poll": 0.2, "actions": []}
        started = time.monotonic()
        victim = _spawn({**job, "actions": action_ids}, Path(tmp) / "victim.json")
        assert victim.stdout is not None
        victim.stdout.readline()  # {"added": N}: every action is on the schedule
        survivors = [_spawn(job, Path(tmp) / f"w{n}.json") for n in range(2)]
        time.sleep(2.0)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        results = [json.loads(p.communicate(timeout=900)[0].strip().splitlines()[-1])
                   for p in survivors]
        elapsed = time.monotonic() - started
        violations, reads = sim.stats.poll_violations, sum(sim.stats.polls_per_action.values())
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), count(result) FROM mirakl_cancel_tracked"
                           ).fetchone()
    assert row is not None
    print(f"| {len(action_ids):,} actions, 3 workers, 1 killed | resolved {row[1]:,}/{row[0]:,} "
          f"| reads {reads:,} (survivors {sum(r['polls'] for r in results):,}) "
          f"| poll-ceiling violations {violations} | {elapsed:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--tracker", type=int, default=0)
    args = parser.parse_args()
    directory = None
    dsn = os.environ.get(_pg.ENV)
    if not dsn:
        directory = tempfile.mkdtemp(prefix="mirakl-pg-")
        dsn = _pg.start(directory)
    try:
        if args.tracker:
            tracker(dsn, args.tracker)
            return
        config = SimulatorConfig(time_scale=0.001, processing_delay=(1, 2),
                                 rate_limit=args.rate)
        print(f"| workers | store | goodput (/s) | vs R={args.rate:g} | 429 share | accepted |")
        print("|---|---|---|---|---|---|")
        with ThreadedSimulator(config) as sim, tempfile.TemporaryDirectory() as tmp:
            for workers in (1, 2, 4):
                for label, store in (("PostgreSQL", dsn), ("none", None)):
                    r = fleet(sim, store, args.rate, workers, args.requests, Path(tmp))
                    print(f"| {workers} | {label} | {r['goodput']:.1f} | "
                          f"{r['goodput'] / args.rate:.2f} | {r['share_429']:.1%} | "
                          f"{r['accepted']:.0f}/{r['sent']:.0f} |", flush=True)
    finally:
        if directory is not None:
            _pg.stop(directory)
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
