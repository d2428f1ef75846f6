"""`mirakl-cancel run --mark-ahead`: SENDING marks made ahead of their POSTs.

What the option changes is only what a crash leaves behind: the requests marked and not
yet sent are UNCERTAIN with the POSTs in flight (at most `--concurrency` more), and
reconciliation proves them not applied, so that each order is still processed once. A
clean stop puts them back to PENDING. The tests judge by what the simulator received.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cli_support import cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel._jobs import job as job_module
from mirakl_cancel._jobs.job import _Run
from mirakl_cancel._stores.base import JournalError
from mirakl_cancel._stores.sqlite import Journal, RequestState
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

SCALE = 0.02  # a 1.2 s poll ceiling; every answer takes 20 ms: still sending when stopped
CONCURRENCY = 2


def _simulator(seed: int) -> ThreadedSimulator:
    return ThreadedSimulator(SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0),
                                             latency=(1.0, 1.0), seed=seed))


def _start(args: list[str], sim: ThreadedSimulator) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                            env=env_for(sim), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _when_posted(sim: ThreadedSimulator, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(sim.stats.posts_per_order) < count:
        time.sleep(0.005)


def test_sigkill_leaves_at_most_concurrency_more_uncertain_and_reconcile_sends_each_once(
        tmp_path: Path) -> None:
    with _simulator(5) as sim:
        orders = sim.generate_orders(60, (1, 2), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        n_rows = write_csv(source, orders)
        report = tmp_path / "report.jsonl"
        args = ["run", str(source), "--report", str(report), "--concurrency",
                str(CONCURRENCY), "--mark-ahead", *poll_flags(SCALE)]
        proc = _start(args, sim)
        _when_posted(sim, 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert 0 < len(sim.stats_snapshot()["posts_per_order"]) < len(orders)

        resumed = cli(*args, env=env_for(sim))
        assert resumed.returncode in (0, 1), resumed.stderr
        lines = read_report(report)
        assert sorted(int(str(line["row"])) for line in lines) == list(range(1, n_rows + 1))
        uncertain = {line["order_id"] for line in lines if line["outcome"] == "UNCERTAIN"}
        # The POSTs in flight at the kill, and what was marked ahead of them.
        assert len(uncertain) <= 2 * CONCURRENCY
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0 and stats["poll_violations"] == 0
        assert set(stats["posts_per_order"].values()) == {1}

        # Reconciled: the ones marked ahead were never sent (NOT_APPLIED), so they are
        # sent now; the ones in flight were processed (APPLIED). Each order exactly once.
        settled = cli(*args, "--reconcile", "--settle", "0.6", "--skew", str(120 * SCALE),
                      "--resend-unapplied", env=env_for(sim), timeout=120)
        assert settled.returncode == 0, settled.stderr
        assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0 and stats["poll_violations"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}


def test_a_clean_stop_puts_what_was_marked_ahead_back_to_pending(tmp_path: Path) -> None:
    with _simulator(6) as sim:
        orders = sim.generate_orders(80, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "report.jsonl"
        args = ["run", str(source), "--report", str(report), "--concurrency", "4",
                "--mark-ahead", *poll_flags(SCALE)]
        proc = _start(args, sim)
        _when_posted(sim, 20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
        posted = sim.stats_snapshot()["posts_per_order"]
        assert 0 < len(posted) < len(orders)
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            counts = journal.counts()
            pending = [r for r in journal.requests() if r.state is RequestState.PENDING]
        # Nothing left SENDING: the POSTs in flight were answered and journaled, the
        # requests marked ahead went back to PENDING, as if never marked.
        assert counts[RequestState.SENDING] == 0
        assert counts[RequestState.UNCERTAIN] == 0
        assert len(pending) == len(orders) - len(posted)
        assert all(r.sent_at is None and r.attempts == 0 for r in pending)

        again = cli(*args, env=env_for(sim))
        assert again.returncode == 0, again.stderr
        assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}


class _Store:
    """What `before_attempt` asks of a store: the marks it makes, and its failure."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.failure = failure
        self.calls: list[str] = []

    async def mark_sending(self, key: str, *, resend: bool = False) -> None:
        self.calls.append(f"sending {key}")

    async def mark_send_attempt(self, key: str) -> None:
        self.calls.append(f"attempt {key}")


async def _done() -> None:
    return None


def _run(store: _Store, ahead: dict[str, tuple[Any, float]]) -> Any:
    return SimpleNamespace(store=store, _marked_ahead=ahead, posts_sent=0,
                           progress=SimpleNamespace(sent=0))


@pytest.mark.parametrize(("made_ago", "marks"), [
    (None, ["sending K"]),  # not marked ahead: its mark is made now, and awaited
    (0.0, []),  # marked ahead, fresh: nothing more before the POST
    (job_module.AHEAD_FRESH + 5, ["attempt K"]),  # stale: sent_at moves to the POST
], ids=["own-mark", "fresh", "stale"])
async def test_the_first_attempt_of_a_request_marked_ahead(made_ago: float | None,
                                                           marks: list[str]) -> None:
    store = _Store()
    ahead = {} if made_ago is None else {"K": (_done(), time.monotonic() - made_ago)}
    run = _run(store, ahead)
    item = SimpleNamespace(key="K")
    await _Run.before_attempt(run, item, first=True, resend=False)  # type: ignore[arg-type]
    assert store.calls == marks
    assert ahead == {} and run.posts_sent == 1


async def test_a_request_marked_ahead_is_not_sent_once_the_journal_failed() -> None:
    store = _Store(failure=OSError("disk I/O error"))
    run = _run(store, {"K": (_done(), time.monotonic())})
    with pytest.raises(JournalError, match="failed earlier"):
        await _Run.before_attempt(run, SimpleNamespace(key="K"),  # type: ignore[arg-type]
                                  first=True, resend=False)
    # Kept, so that the end of the pass puts it back to PENDING (it never left).
    assert list(run._marked_ahead) == ["K"] and run.posts_sent == 0


async def test_a_sender_cancelled_while_its_mark_flushes_leaves_it_to_be_undone() -> None:
    # (A second signal cancels the senders.) The mark is shielded from the cancellation
    # and stays listed, so that the end of the pass puts the request back to PENDING
    # once its mark is made, instead of leaving it SENDING (UNCERTAIN on the next run).
    flushing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    run = _run(_Store(), {"K": (flushing, time.monotonic())})
    sender = asyncio.create_task(_Run.before_attempt(
        run, SimpleNamespace(key="K"), first=True, resend=False))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    assert not flushing.cancelled() and list(run._marked_ahead) == ["K"]
    assert run.posts_sent == 0


class _UndoStore:
    def __init__(self) -> None:
        self.undone: list[str] = []

    def mark_not_sent(self, key: str) -> Any:
        self.undone.append(key)
        return _done()


async def test_the_end_of_a_pass_undoes_every_mark_made_ahead_and_not_taken() -> None:
    loop = asyncio.get_running_loop()
    made, refused, cancelled = (loop.create_future() for _ in range(3))
    made.set_result(None)
    refused.set_exception(JournalError("refused"))
    cancelled.cancel()  # its waiter was cancelled: the mark itself may stand
    store = _UndoStore()
    run = SimpleNamespace(store=store, _marked_ahead={
        "made": (made, 0.0), "refused": (refused, 0.0), "cancelled": (cancelled, 0.0)})
    await _Run._undo_ahead(run)  # type: ignore[arg-type]
    assert store.undone == ["made", "cancelled"] and run._marked_ahead == {}


async def test_undoing_a_cancelled_wait_warns_of_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.get_running_loop().create_future()
    cancelled.cancel()
    run = SimpleNamespace(store=_UndoStore(), _marked_ahead={"K": (cancelled, 0.0)})
    await _Run._undo_ahead(run)  # type: ignore[arg-type]
    assert run.store.undone == ["K"] and not caplog.records
