"""The bulk job when its journal fails: it must stop, never hang, never lose an action id."""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from cli_support import SCALE, write_csv

from mirakl_cancel import StaticToken
from mirakl_cancel._jobs.job import EXIT_OK, JobOptions, run_job
from mirakl_cancel._stores.sqlite import Journal, RequestState
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator
from mirakl_cancel.tracker import PollPolicy


def _run_in_thread(options: JobOptions, auth: StaticToken) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(
        target=lambda: codes.append(run_job(options, auth, out=io.StringIO(),
                                            err=io.StringIO())),
        daemon=True)
    thread.start()
    thread.join(timeout=60)
    return thread, codes


@pytest.mark.parametrize("failure", [sqlite3.OperationalError("disk I/O error"),
                                     RuntimeError("a bug")], ids=["sqlite", "bug"])
def test_a_journal_failure_after_acceptance_stops_the_run_and_keeps_the_action_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        failure: Exception) -> None:
    """Regression: an exception out of `mark_accepted` (or any non-Mirakl failure of a
    send) killed its sender task without resolving the request: the run waited forever,
    and the accepted action id was nowhere."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=3)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(3, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)

        def broken(self: Journal, key: str, action_id: str, at: Any = None) -> None:
            raise failure

        monkeypatch.setattr(Journal, "mark_accepted", broken)
        ceiling = 60 * SCALE
        options = JobOptions(input_path=source, base_url=sim.base_url, concurrency=1,
                             policy=PollPolicy(min_interval=ceiling, interval=ceiling,
                                               first_delay=ceiling),
                             quiet=True)
        with caplog.at_level(logging.ERROR, logger="mirakl_cancel"):
            thread, codes = _run_in_thread(options, StaticToken(sim.token))
        assert not thread.is_alive(), "the run hung after a journal failure"
        assert codes and codes[0] != EXIT_OK
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert sum(stats["posts_per_order"].values()) == 1  # stopped after the first
    if isinstance(failure, sqlite3.Error):
        [accepted] = [r for r in caplog.records if "was accepted as action" in r.getMessage()]
        assert "could not record it" in accepted.getMessage()
    with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
        counts = journal.counts()
    # Never recorded as accepted: a re-run reports it UNCERTAIN, and never resends it.
    assert counts[RequestState.SENDING] == 1
    assert counts[RequestState.PENDING] == 2


def test_with_mark_ahead_a_journal_failure_stops_the_run_with_every_post_guarded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--mark-ahead: a mark made ahead may be durable before the journal fails, so one more
    POST (at most `concurrency`) may leave, each on its own durable SENDING mark; none is
    sent twice, none is lost (each stays SENDING: UNCERTAIN on a re-run), and what was
    marked ahead but refused stays PENDING."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=3)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(4, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)

        def broken(self: Journal, key: str, action_id: str, at: Any = None) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(Journal, "mark_accepted", broken)
        ceiling = 60 * SCALE
        options = JobOptions(input_path=source, base_url=sim.base_url, concurrency=1,
                             policy=PollPolicy(min_interval=ceiling, interval=ceiling,
                                               first_delay=ceiling),
                             quiet=True, mark_ahead=True)
        thread, codes = _run_in_thread(options, StaticToken(sim.token))
        assert not thread.is_alive(), "the run hung after a journal failure"
        assert codes and codes[0] != EXIT_OK
        stats = sim.stats_snapshot()
        posts = sum(stats["posts_per_order"].values())
        assert stats["duplicate_posts"] == 0
        assert 1 <= posts <= 2  # the first, and at most one marked ahead (concurrency 1)
    with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
        counts = journal.counts()
    assert counts[RequestState.SENDING] == posts
    assert counts[RequestState.PENDING] == 4 - posts
