"""`--reconcile` and `mirakl-cancel reconcile`, end to end against the simulator.

The simulator tells the two kinds of lost answer apart, which is what reconciliation must
do from the outside: a dropped connection *after* the handler ran (the cancel was
processed: its adjustment exists) and a 502 from the gateway *before* it (never
processed: no adjustment, and no entry in `posts_per_order`). Each test judges the CLI
by what the server received, not by what the CLI says.

Timing: the simulator processes an action within 5 ms (scale 0.001), and a settling
window of SETTLE real seconds is more than a hundred times that, so the verdicts do not
depend on machine speed.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_support import SCALE, cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel._jobs.input import read_input
from mirakl_cancel._jobs.job import plan_requests
from mirakl_cancel._stores.sqlite import Journal, PlannedRow, RequestState
from mirakl_cancel.simulator import Fault, SimulatorConfig, ThreadedSimulator

SETTLE = 0.6


def reconcile_flags(scale: float = SCALE) -> list[str]:
    return ["--settle", str(SETTLE), "--skew", str(120 * scale)]


def by_order(report: Path) -> dict[str, dict[str, object]]:
    """One report line per order (the tests use one-line orders)."""
    return {str(line["order_id"]): line for line in read_report(report)}


def simulator(seed: int, **overrides: object) -> ThreadedSimulator:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=seed,
                             **overrides)  # type: ignore[arg-type]
    return ThreadedSimulator(config)


def test_reconcile_settles_dropped_and_502_cancels(tmp_path: Path) -> None:
    """Dropped after processing → SUCCEEDED without a resend; 502 → NOT_APPLIED, and sent
    again exactly once when a later run says --resend-unapplied."""
    with simulator(11) as sim:
        orders = sim.generate_orders(12, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        # One sender: POSTs go out in file order, so the scripted faults hit known orders.
        sim.inject(Fault.drop_after_read(), route="cancel", count=3)
        sim.inject(Fault.http(502), route="cancel", count=3)
        args = ["run", str(source), "--report", str(report), "--concurrency", "1",
                "--reconcile", *reconcile_flags(), *poll_flags(SCALE)]
        first = cli(*args, env=env_for(sim))
        assert first.returncode == 1, first.stderr  # three rows NOT_APPLIED
        dropped = {o.id for o in orders[:3]}
        refused = {o.id for o in orders[3:6]}
        lines = by_order(report)
        for order_id in dropped:
            line = lines[order_id]
            assert (line["outcome"], line["action_id"], line["reconciliation"]) == (
                "SUCCEEDED", None, "APPLIED")
            assert str(line["errors"]).startswith("['reconciled: cancelation adjustment(s)")
        for order_id in refused:
            assert (lines[order_id]["outcome"], lines[order_id]["reconciliation"]) == (
                "NOT_APPLIED", "NOT_APPLIED")
        for order in orders[6:]:
            assert lines[order.id]["outcome"] == "SUCCEEDED" and lines[order.id]["action_id"]
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders if o.id not in refused}
        assert "waiting" in first.stderr and "settling window" in first.stderr
        assert "NOT_APPLIED" in first.stdout
        assert "3 applied (no resend), 3 not applied, 0 still uncertain" in first.stdout
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            applied = [r for r in journal.requests() if r.order_id in dropped]
            assert all(r.reconcile_verdict == "APPLIED" and r.reconcile_adjustments
                       and r.action_id is None for r in applied)

        # A later run resends what was proven not applied, and only that.
        again = cli(*args, "--resend-unapplied", env=env_for(sim))
        assert again.returncode == 0, again.stderr
        assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}
        assert "3 cancel request(s) sent this run" in again.stdout


def test_resend_unapplied_in_the_same_run_with_a_second_round(tmp_path: Path) -> None:
    """--resend-unapplied resends within the run; a resend whose answer is lost too is
    reconciled again (round two) and resent again: each order processed exactly once."""
    with simulator(12) as sim:
        orders = sim.generate_orders(8, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        sim.inject(Fault.drop_after_read(), route="cancel", count=1)  # POST 1
        sim.inject(Fault.http(502), route="cancel", count=2)  # POSTs 2, 3
        sim.inject(Fault.delay(0), route="cancel", count=5)  # POSTs 4-8: answered normally
        sim.inject(Fault.http(502), route="cancel", count=1)  # POST 9: the first resend
        result = cli("run", str(source), "--report", str(report), "--concurrency", "1",
                     "--reconcile", "--resend-unapplied", *reconcile_flags(),
                     *poll_flags(SCALE), env=env_for(sim))
        assert result.returncode == 0, result.stderr
        lines = by_order(report)
        assert {str(line["outcome"]) for line in lines.values()} == {"SUCCEEDED"}
        assert lines[orders[0].id]["reconciliation"] == "APPLIED"
        for order in orders[1:3]:  # proven not applied, then sent again and tracked
            assert lines[order.id]["reconciliation"] == "NOT_APPLIED"
            assert lines[order.id]["action_id"]
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}
        assert "sent again (--resend-unapplied)" in result.stdout
        assert "1 applied (no resend), 3 not applied, 0 still uncertain; 3 sent again" \
            in result.stdout
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            attempts = {r.order_id: r.attempts for r in journal.requests()}
        assert sorted(attempts.values()) == [1] * 6 + [2, 3]


def test_sigkill_then_rerun_with_reconcile_leaves_nothing_uncertain(tmp_path: Path) -> None:
    """POSTs stalled after processing when the job is killed are SENDING in the journal;
    the re-run reconciles them (applied: not resent) and finishes the rest."""
    with simulator(13) as sim:
        orders = sim.generate_orders(16, (1, 2), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        n_rows = write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        # POSTs 1-4 answer at once; 5-8 are processed, then their answers stall for 1 s
        # (real), which holds all four senders: the kill finds exactly those in flight.
        sim.inject(Fault.delay(0), route="cancel", count=4)
        sim.inject(Fault.delay(1.0), route="cancel", count=4)
        args = ["run", str(source), "--report", str(report), "--concurrency", "4",
                *poll_flags(SCALE)]
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                                env=env_for(sim), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(sim.stats.posts_per_order) < 8 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert len(sim.stats_snapshot()["posts_per_order"]) == 8
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            sending = journal.requests(RequestState.SENDING)
            pending = journal.requests(RequestState.PENDING)
        assert len(sending) == 4 and len(pending) == len(orders) - 8

        result = cli(*args, "--reconcile", "--resend-unapplied", *reconcile_flags(),
                     env=env_for(sim))
        assert result.returncode == 0, result.stdout + result.stderr
        lines = read_report(report)
        assert len(lines) == n_rows
        assert {line["outcome"] for line in lines} == {"SUCCEEDED"}
        stalled = {r.order_id for r in sending}
        assert {str(line["order_id"]) for line in lines
                if line["reconciliation"] == "APPLIED"} == stalled
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}  # once each, overall
        assert stats["poll_violations"] == 0
        # Let the stalled handlers answer their dead client before the simulator stops.
        while sim.stats.status_codes.get("202", 0) < len(orders) and time.monotonic() < deadline:
            time.sleep(0.01)


def test_sending_is_marked_at_the_real_send(tmp_path: Path) -> None:
    """Requests waiting for the rate limit when the job is killed never left: they must
    be PENDING (sent by the re-run), not SENDING (which would make them UNCERTAIN)."""
    with simulator(14) as sim:
        orders = sim.generate_orders(20, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        # Eight senders, five POSTs a second: most senders are waiting for a slot.
        args = ["run", str(source), "--concurrency", "8", "--rate-limit", "5",
                *poll_flags(SCALE)]
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                                env=env_for(sim), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while len(sim.stats.posts_per_order) < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        posted = set(sim.stats_snapshot()["posts_per_order"])
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            states = {r.order_id: r.state for r in journal.requests()}
        marked = {o for o, state in states.items() if state is not RequestState.PENDING}
        # Everything marked was posted, but for at most one POST caught on the wire.
        assert len(marked - posted) <= 1, (marked, posted)
        assert sum(1 for s in states.values() if s is RequestState.PENDING) >= 8


def test_reconcile_command_on_an_earlier_job(tmp_path: Path) -> None:
    """`mirakl-cancel reconcile --journal J`: UNCERTAIN rows of a finished job, including
    one a killed run left SENDING without ever sending it."""
    with simulator(15) as sim:
        orders = sim.generate_orders(6, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        journal_path = tmp_path / "job.sqlite"
        parsed = read_input(source)
        planned, _ = plan_requests(parsed, None)
        with Journal.open(journal_path) as journal:  # a kill right after marking SENDING
            journal.create_job(
                input_path=str(source),
                input_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
                input_format="csv", base_url=sim.base_url, requests=planned,
                rows=[PlannedRow(r.row, r.line, r.order_id, r.cancelation.order_line_id, None,
                                 r.cancelation.quantity) for r in parsed.rows])
            journal.mark_sending(planned[0].key)
        sim.inject(Fault.drop_after_read(), route="cancel", count=2)
        env = env_for(sim)
        run = cli("run", str(source), "--journal", str(journal_path), "--concurrency", "1",
                  *poll_flags(SCALE), env=env)
        assert run.returncode == 1, run.stderr
        report = tmp_path / "r.jsonl"
        # planned[0] was left SENDING (never sent); POSTs 1-2 (orders 1-2) lost their answer.
        uncertain = {orders[0].id, orders[1].id, orders[2].id}

        # The orders must be read where the cancels went.
        elsewhere = cli("reconcile", "--journal", str(journal_path), "--base-url",
                        "http://127.0.0.1:9", env=env)
        assert elsewhere.returncode == 2 and "refusing to reconcile" in elsewhere.stderr
        missing = cli("reconcile", "--journal", str(tmp_path / "nope.sqlite"), env=env)
        assert missing.returncode == 2 and "no such journal" in missing.stderr

        result = cli("reconcile", "--journal", str(journal_path), "--report", str(report),
                     *reconcile_flags(), *poll_flags(SCALE), env=env)
        assert result.returncode == 1, result.stderr  # the never-sent one is NOT_APPLIED
        lines = by_order(report)
        assert {k for k, line in lines.items() if line["outcome"] != "SUCCEEDED"} == {
            orders[0].id}
        assert lines[orders[0].id]["outcome"] == "NOT_APPLIED"
        assert {lines[o]["reconciliation"] for o in uncertain - {orders[0].id}} == {"APPLIED"}
        assert "0 cancel request(s) sent this run" in result.stdout
        assert orders[0].id not in sim.stats_snapshot()["posts_per_order"]

        resent = cli("reconcile", "--journal", str(journal_path), "--report", str(report),
                     "--resend-unapplied", *reconcile_flags(), *poll_flags(SCALE), env=env)
        assert resent.returncode == 0, resent.stderr
        assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}


def test_reconcile_flags_need_reconcile(tmp_path: Path) -> None:
    source = tmp_path / "lines.csv"
    source.write_text("order_id,order_line_id,quantity,reason,price_amount,price_currency,"
                      "shipping_amount\nO1,L1,1,RETURN,1,EUR,0\n")
    env = {"MIRAKL_CONNECT_TOKEN": "t", "PATH": "/usr/bin:/bin"}
    alone = cli("run", str(source), "--resend-unapplied", env=env)
    assert alone.returncode == 2 and "need(s) --reconcile" in alone.stderr
    both = cli("run", str(source), "--reconcile", "--resend-uncertain", env=env)
    assert both.returncode == 2 and "one or the other" in both.stderr
    assert not (tmp_path / "lines.csv.journal.sqlite").exists()


def test_ctrl_c_during_the_settling_wait_leaves_rows_uncertain(tmp_path: Path) -> None:
    with simulator(16) as sim:
        orders = sim.generate_orders(3, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        sim.inject(Fault.drop_after_read(), route="cancel", count=1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirakl_cancel.cli", "run", str(source), "--report",
             str(report), "--reconcile", "--settle", "600", *poll_flags(SCALE)],
            env=env_for(sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # the run is over once it says it waits
            if "settling window" in line:
                break
        assert re.search(r"waiting (599|600)s", line), line
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        outcomes = {str(line["order_id"]): line["outcome"] for line in read_report(report)}
        assert outcomes[orders[0].id] == "UNCERTAIN"
        assert {outcomes[o.id] for o in orders[1:]} == {"SUCCEEDED"}
        assert "interrupted" in out and sim.stats_snapshot()["requests_by_route"].get(
            "orders", 0) == 0  # nothing was read, nothing decided


def test_retried_send_is_marked_once_and_a_failed_reconciliation_leaves_rows_uncertain(
        tmp_path: Path) -> None:
    """A POST refused with 429 and sent again is one send in the journal (on_send runs
    for each attempt); when the orders cannot be read, nothing is decided."""
    with simulator(17) as sim:
        orders = sim.generate_orders(2, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        sim.inject(Fault.http(429), route="cancel", count=1)
        sim.inject(Fault.delay(0), route="cancel", count=1)  # second attempt: accepted
        sim.inject(Fault.drop_after_read(), route="cancel", count=1)  # second order
        sim.inject(Fault.http(403), route="orders", count=1)  # not retried
        result = cli("run", str(source), "--report", str(report), "--concurrency", "1",
                     "--reconcile", *reconcile_flags(), *poll_flags(SCALE), env=env_for(sim))
        assert result.returncode == 1, result.stderr
        lines = by_order(report)
        assert lines[orders[0].id]["outcome"] == "SUCCEEDED"
        assert lines[orders[1].id]["outcome"] == "UNCERTAIN"
        assert lines[orders[1].id]["reconciliation"] == "UNCERTAIN"
        assert "reconciled: reconciliation failed: HTTP 403" in str(lines[orders[1].id]["errors"])
        assert "reconciliation failed" in result.stderr
        with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
            first = journal.request(f"{orders[0].id}#1")
        assert first.attempts == 1 and first.sent_at is not None
        assert first.accepted_at is not None and first.sent_at <= first.accepted_at
        assert sim.stats_snapshot()["posts_per_order"] == {o.id: 1 for o in orders}
