"""Worker fleets on a real PostgreSQL, over the wire against the simulator.

Several real processes (tests/_fleet_worker.py) share one credential: one rate-limit
schedule, one read ceiling per action, one tracker whose actions survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mirakl_cancel import (
    ActionState,
    ActionTimeoutError,
    ActionTracker,
    Cancelation,
    CancelReason,
    MiraklConnectClient,
    Money,
    NotFoundError,
    PollPolicy,
    PostgresStore,
    RetryPolicy,
    StaticToken,
)
from mirakl_cancel._stores.pgtracker import SharedActionTracker
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

WORKER = str(Path(__file__).parents[1] / "_fleet_worker.py")
MIN = 0.06  # the simulator's 60 s ceiling at time_scale 0.001
POLICY = {"min_interval": MIN, "interval": 0.1, "first_delay": MIN, "timeout": 30.0}


def spawn(tmp_path: Path, name: str, job: dict[str, Any]) -> subprocess.Popen[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, WORKER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def orders_for(sim: ThreadedSimulator, count: int) -> list[list[str]]:
    orders = sim.generate_orders(n_orders=count, lines_per_order=(1, 1), wrong_state_ratio=0.0)
    return [[o.id, o.lines[0].id, o.lines[0].currency, str(o.lines[0].price)] for o in orders]


def run_fleet(tmp_path: Path, sim: ThreadedSimulator, dsn: str | None, rate: float,
              workers: int, per_worker: int) -> list[dict[str, Any]]:
    orders = orders_for(sim, workers * per_worker)
    procs = [spawn(tmp_path, f"cancel{n}", {
        "mode": "cancel", "dsn": dsn, "base_url": sim.base_url, "token": sim.token,
        "rate": rate, "orders": orders[n * per_worker:(n + 1) * per_worker]})
        for n in range(workers)]
    return [finish(proc) for proc in procs]


def test_three_workers_share_one_rate_limit(tmp_path: Path, pg_dsn: str) -> None:
    rate, workers, per_worker = 30.0, 3, 30
    config = SimulatorConfig(time_scale=0.001, processing_delay=(1, 2), rate_limit=rate)
    with ThreadedSimulator(config) as sim:
        shared = run_fleet(tmp_path, sim, pg_dsn, rate, workers, per_worker)
        shared_429 = sim.stats.responses_429
        sim.reset_stats()
        alone = run_fleet(tmp_path, sim, None, rate, workers, per_worker)
        assert sum(s["accepted"] + s["errors"] for s in alone) == workers * per_worker
        alone_429 = sim.stats.responses_429
    sent = workers * per_worker
    assert sum(s["accepted"] for s in shared) == sent
    # One schedule for the fleet: at most 1 % of the requests meet a 429 ...
    assert shared_429 <= sent // 100
    # ... where the same fleet pacing itself per process sends three times the quota.
    assert alone_429 > shared_429
    print(f"\n429s: shared store {shared_429}, per-process pacing {alone_429} "
          f"({sent} cancels each)")


def test_reads_of_one_action_are_spaced_across_processes(tmp_path: Path, pg_dsn: str) -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(10_000, 10_000))
    with ThreadedSimulator(config) as sim:
        action_ids = asyncio.run(send_cancels(sim, pg_dsn, 2))
        procs = [spawn(tmp_path, f"track{n}", {
            "mode": "track", "dsn": pg_dsn, "base_url": sim.base_url, "token": sim.token,
            "policy": {**POLICY, "interval": MIN, "timeout": 1.0}, "lease": 0.2,
            "actions": action_ids}) for n in range(3)]
        results = [finish(proc) for proc in procs]
        violations = sim.stats.poll_violations
        polls = dict(sim.stats.polls_per_action)
    # Three workers, each free to read every action at the ceiling: never faster overall.
    assert violations == 0
    assert sum(r["polls"] for r in results) == sum(polls.values()) >= 4


async def send_cancels(sim: ThreadedSimulator, dsn: str, count: int) -> list[str]:
    orders = orders_for(sim, count)
    async with PostgresStore(dsn) as store, MiraklConnectClient(
            auth=StaticToken(sim.token), base_url=sim.base_url, store=store,
            min_poll_interval=MIN) as client:
        accepted = [await client.cancel_order_lines(order_id, [Cancelation(
            quantity=1, reason=CancelReason.OUT_OF_STOCK, price=Money(price, currency),
            shipping_price=Money(0, currency), order_line_id=line_id)])
            for order_id, line_id, currency, price in orders]
    return [a.action_id for a in accepted]


def test_a_shared_tracker_survives_a_killed_worker(tmp_path: Path, pg_dsn: str) -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(200, 600))
    with ThreadedSimulator(config) as sim:
        action_ids = asyncio.run(send_cancels(sim, pg_dsn, 240))
        # A read the victim had in flight holds its action for the attempt's bound: 2 s.
        job = {"mode": "track", "dsn": pg_dsn, "base_url": sim.base_url, "token": sim.token,
               "policy": POLICY, "lease": 1.0, "actions": [], "answer_timeout": 2.0}
        victim = spawn(tmp_path, "victim", {**job, "actions": action_ids})
        assert victim.stdout is not None
        assert json.loads(victim.stdout.readline()) == {"added": len(action_ids)}
        survivors = [spawn(tmp_path, f"worker{n}", {**job, "wait": action_ids[n]})
                     for n in range(2)]
        time.sleep(0.4)  # the victim has claimed actions and reads some: kill it there
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        results = [finish(proc) for proc in survivors]
        violations = sim.stats.poll_violations
    assert violations == 0
    assert [r["waited"] for r in results] == ["SUCCESS", "SUCCESS"]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT result->'status'->>'status', owner FROM "
                            "mirakl_cancel_tracked").fetchall()
    assert len(rows) == len(action_ids)
    assert {state for state, _ in rows} <= {"SUCCESS", "FAILED"}
    assert all(owner is None for _, owner in rows)


# --- in one process: two workers, each with its own store connection ----------------

def client_for(sim: ThreadedSimulator, store: PostgresStore) -> MiraklConnectClient:
    return MiraklConnectClient(auth=StaticToken(sim.token), base_url=sim.base_url,
                               store=store, min_poll_interval=MIN,
                               retry=RetryPolicy(base_delay=0.01, max_delay=0.05))


async def test_wait_resolves_in_a_worker_that_did_not_read(pg_dsn: str) -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(100, 200))
    policy = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN)
    with ThreadedSimulator(config) as sim:
        [action_id] = await send_cancels(sim, pg_dsn, 1)
        async with PostgresStore(pg_dsn) as one, PostgresStore(pg_dsn) as two, \
                client_for(sim, one) as reader, client_for(sim, two) as waiter:
            working = ActionTracker(reader, policy, store=one, idle_poll=0.05)
            waiting = ActionTracker(waiter, policy, store=two, idle_poll=0.05, claims=False)
            assert isinstance(waiting, SharedActionTracker)
            async with working:
                await working.add_shared(action_id)
                status = await asyncio.wait_for(waiting.wait(action_id), 30)
                assert status.state is ActionState.SUCCESS
                assert waiting.stats.polls == 0 and working.stats.polls >= 1
            await waiting.close(drain=False)
        assert sim.stats.poll_violations == 0


async def test_timeouts_unknown_actions_and_results(pg_dsn: str) -> None:
    config = SimulatorConfig(time_scale=0.001, processing_delay=(1e6, 1e6))
    policy = PollPolicy(min_interval=MIN, interval=MIN, first_delay=MIN, timeout=0.3)
    with ThreadedSimulator(config) as sim:
        [action_id] = await send_cancels(sim, pg_dsn, 1)
        async with PostgresStore(pg_dsn) as store, client_for(sim, store) as client:
            tracker = ActionTracker(client, policy, store=store, idle_poll=0.05)
            seen: list[str] = []
            tracker.subscribe(lambda result: seen.append(result.action_id))
            events: list[str] = []
            client.hooks.on("action_tracked", lambda event: events.append("tracked"))
            client.hooks.on("action_final", lambda event: events.append("final"))
            async with tracker:
                with pytest.raises(ActionTimeoutError):
                    await tracker.wait(action_id)
                with pytest.raises(NotFoundError):
                    await tracker.wait("no-such-action")
                assert tracker.pending == 0
                assert await tracker.fleet_pending() == 0
            assert sorted(seen) == sorted([action_id, "no-such-action"])
            assert sorted(events) == ["final", "final", "tracked", "tracked"]
            with pytest.raises(RuntimeError, match="closed"):
                tracker.track("another")
            with pytest.raises(RuntimeError, match="store"):
                tracker.export_pending()


async def test_the_client_must_share_the_trackers_store(pg_dsn: str) -> None:
    async with PostgresStore(pg_dsn) as store:
        plain = MiraklConnectClient(auth=StaticToken("t"), base_url="http://127.0.0.1:9")
        with pytest.raises(ValueError, match="same store"):
            ActionTracker(plain, store=store)
        with pytest.raises(TypeError, match="PostgresStore"):
            ActionTracker(plain, store=object())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="PostgresStore"):
            MiraklConnectClient(auth=StaticToken("t"), base_url="http://127.0.0.1:9",
                                store="postgresql://x")  # type: ignore[arg-type]
        await plain.close()
