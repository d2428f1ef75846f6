"""Figure 3 — tracker scale: 100,000 pending actions in one process.

No network: a fake client stands in for `MiraklConnectClient`. Pending actions are
tracked with a `first_delay` so long that none falls due, to measure what waiting
costs; then actions whose first read answers SUCCESS at once are tracked with no delay,
to measure what a poll dispatch costs. The same-run baseline is the naive design, one
asyncio task per action sleeping until its next read.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable

from mirakl_cancel import ActionState, ActionStatus
from mirakl_cancel._http.pollguard import PollGuard
from mirakl_cancel.tracker import ActionTracker, PollPolicy

from ._common import Figure, Sizes, fmt_ratio
from ._procs import REPO_ROOT

__all__ = ["run"]

GOAL_BYTES = 1024
CONCURRENCY = 8
NEVER = PollPolicy(min_interval=60.0, interval=300.0, first_delay=10_000_000.0)
AT_ONCE = PollPolicy(min_interval=0.0, interval=0.0, first_delay=0.0)


class FakeClient:
    """Answers every status read with SUCCESS immediately (one loop turn, no I/O)."""

    def __init__(self, min_poll_interval: float) -> None:
        self.min_poll_interval = min_poll_interval
        self.guard = PollGuard(min_poll_interval)
        self.reads = 0
        self.max_tasks = 0

    def poll_ready_in(self, action_id: str) -> float:
        return self.guard.ready_in(action_id)

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        self.guard.record_ago(action_id, seconds_ago)

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        self.reads += 1
        if self.reads % 256 == 1:  # all_tasks() is O(tasks): sample it
            self.max_tasks = max(self.max_tasks, len(asyncio.all_tasks()))
        await asyncio.sleep(0)
        return ActionStatus(id=action_id, state=ActionState.SUCCESS, raw_status="SUCCESS")


def _rss_bytes() -> int:
    """Resident set size of this process (Linux `/proc`; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _ids(prefix: str, n: int) -> list[str]:
    # UUID-shaped, like the API's; created before any baseline: the caller holds them anyway.
    return [f"{prefix}{i:08x}-0000-4000-8000-{i:012x}" for i in range(n)]


async def _pending_cost(track: Callable[[list[str]], object], n: int,
                        cleanup: Callable[[], object]) -> tuple[float, float, int]:
    """(tracemalloc B/action, µs/action to track, asyncio tasks) for `n` pending actions."""
    ids = _ids("p", n)
    gc.collect()
    started = time.perf_counter()
    track(ids)
    elapsed = time.perf_counter() - started
    await asyncio.sleep(0)
    tasks = len(asyncio.all_tasks())
    await _await(cleanup())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    track(ids)
    await asyncio.sleep(0)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await _await(cleanup())
    return traced / n, elapsed / n * 1e6, tasks


async def _await(value: object) -> None:
    if asyncio.iscoroutine(value):
        await value


def _rss_in_fresh_process(design: str, n: int) -> float:
    """RSS growth per action, measured in a new interpreter (no reused heap)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.fig_tracker", design, str(n)], cwd=REPO_ROOT,
        env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    return float(out.strip().splitlines()[-1])


async def _rss_probe(design: str, n: int) -> float:
    ids = _ids("p", n)
    client = FakeClient(60.0)
    keep: list[object] = []
    gc.collect()
    rss = _rss_bytes()
    if design == "tracker":
        tracker = ActionTracker(client, NEVER, concurrency=CONCURRENCY)
        keep.extend(tracker.track(action_id) for action_id in ids)
    else:
        async def naive_poller(action_id: str) -> None:
            await asyncio.sleep(NEVER.first_delay)
        keep.extend(asyncio.create_task(naive_poller(i)) for i in ids)
    await asyncio.sleep(0)
    return (_rss_bytes() - rss) / n


async def run(sizes: Sizes) -> Figure:
    n = sizes.tracker_actions
    client = FakeClient(60.0)
    trackers: list[ActionTracker] = []

    def track_all(ids: list[str]) -> None:
        tracker = ActionTracker(client, NEVER, concurrency=CONCURRENCY)
        trackers.append(tracker)
        for action_id in ids:
            tracker.track(action_id)

    async def close_trackers() -> None:
        while trackers:
            await trackers.pop().close(drain=False)

    tracked = await _pending_cost(track_all, n, close_trackers)

    naive_tasks: list[asyncio.Task[None]] = []

    async def naive_poller(action_id: str) -> None:
        await asyncio.sleep(NEVER.first_delay)
        await client.get_action_status(action_id)

    def spawn_all(ids: list[str]) -> None:
        naive_tasks.extend(asyncio.create_task(naive_poller(i)) for i in ids)

    async def cancel_naive() -> None:
        for task in naive_tasks:
            task.cancel()
        await asyncio.gather(*naive_tasks, return_exceptions=True)
        naive_tasks.clear()

    naive = await _pending_cost(spawn_all, n, cancel_naive)

    # Dispatch: every action due at once, each read answering SUCCESS.
    m = sizes.tracker_dispatch
    fast = FakeClient(0.0)
    ids = _ids("d", m)
    cpu = time.process_time()
    async with ActionTracker(fast, AT_ONCE, concurrency=CONCURRENCY) as tracker:
        futures = [tracker.track(action_id) for action_id in ids]
    cpu = time.process_time() - cpu
    if fast.reads != m or not all(f.done() and not f.exception() for f in futures):
        raise RuntimeError(f"dispatch run: {fast.reads} reads for {m} actions")
    dispatch_us = cpu / m * 1e6

    per_action, track_us, tasks = tracked
    rss = _rss_in_fresh_process("tracker", n)
    naive_rss = _rss_in_fresh_process("naive", n)
    ok = per_action <= GOAL_BYTES and fast.max_tasks <= CONCURRENCY + 4 and tasks <= 4
    return Figure(
        number=3, title=f"Tracker scale ({n:,} pending actions)",
        result=f"{per_action:,.0f} B/action; {tasks} tasks pending, ≤ {fast.max_tasks} polling",
        baseline=f"task per action: {naive[0]:,.0f} B/action, {naive[2]:,} tasks",
        ratio=fmt_ratio(per_action / naive[0]),
        goal=f"≤ 1 KB/action; tasks ≤ concurrency ({CONCURRENCY}) + a few", met=ok,
        header=["design", "tracemalloc B/action", "RSS B/action", "µs to track one",
                "asyncio tasks"],
        rows=[[f"`ActionTracker` (concurrency {CONCURRENCY}), `track()`", f"{per_action:,.0f}",
               f"{rss:,.0f}", f"{track_us:.1f}", f"{tasks:,}"],
              ["one task per action (`create_task` + `sleep`)", f"{naive[0]:,.0f}",
               f"{naive_rss:,.0f}", f"{naive[1]:.1f}", f"{naive[2]:,}"],
              [f"dispatch: {m:,} actions due at once, SUCCESS on first read",
               "—", "—", f"{dispatch_us:.1f} CPU µs/poll", f"≤ {fast.max_tasks:,} (sampled)"]],
        notes=["Action ids (UUID-sized strings) are created before the baseline: the caller "
               "holds them anyway. `track()` returns a future per action. RSS growth is "
               "measured in a fresh interpreter per design, without tracemalloc.",
               "Task counts include the benchmark's own task; the dispatch run counts tasks "
               "while the reads are in flight."])


if __name__ == "__main__":  # the RSS probe: python -m benchmarks.fig_tracker DESIGN N
    print(asyncio.run(_rss_probe(sys.argv[1], int(sys.argv[2]))))
