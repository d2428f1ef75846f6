"""Fleet goodput: 1, 2 and 4 worker processes sharing `rate_limit=R` against a server
limited to R, with the shared PostgreSQL store and without it (each worker pacing itself).

    python -m benchmarks.fleet [--rate R] [--requests N]

Uses MIRAKL_CANCEL_TEST_PG when set, else starts a throwaway PostgreSQL (tests/_pg.py).
Goodput is accepted cancels per wall second of the fleet (first send to last answer,
on the wall clock shared by the processes); the 429 share is counted by the simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    directory = None
    dsn = os.environ.get(_pg.ENV)
    if not dsn:
        directory = tempfile.mkdtemp(prefix="mirakl-pg-")
        dsn = _pg.start(directory)
    try:
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
