"""`mirakl-cancel` end to end: the CLI runs as a subprocess against a simulator on 127.0.0.1.

The simulator runs on a background thread of the test process (`ThreadedSimulator`), so
each test can read what the server actually received (POSTs per order, duplicates, poll
ceiling violations) and judge the CLI by that, not by what the CLI says about itself.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import SCALE, cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel._jobs.input import read_input
from mirakl_cancel._jobs.job import plan_requests
from mirakl_cancel._stores.sqlite import Journal, PlannedRow, RequestState
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    """The shipped `mirakl_simulator` fixture (our pytest plugin), configured for the CLI."""
    return SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=7)


@pytest.fixture
def sim(mirakl_simulator: ThreadedSimulator) -> ThreadedSimulator:
    return mirakl_simulator


def test_clean_run(sim: ThreadedSimulator, tmp_path: Path) -> None:
    orders = sim.generate_orders(25, (1, 4), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    n_rows = write_csv(source, orders)
    report = tmp_path / "report.jsonl"
    result = cli("run", str(source), "--report", str(report), *poll_flags(SCALE),
                 env=env_for(sim))
    assert result.returncode == 0, result.stderr
    lines = read_report(report)
    assert [line["row"] for line in lines] == list(range(1, n_rows + 1))
    assert {line["outcome"] for line in lines} == {"SUCCEEDED"}
    assert all(line["action_id"] for line in lines)
    assert "SUCCEEDED" in result.stdout and "rate-limited (429)" in result.stdout
    assert "progress:" in result.stderr  # not a terminal: plain progress lines
    stats = sim.stats_snapshot()
    assert stats["duplicate_posts"] == 0 and stats["poll_violations"] == 0
    assert sorted(stats["posts_per_order"]) == sorted(o.id for o in orders)
    assert (tmp_path / "lines.csv.journal.sqlite").exists()

    # Re-running a finished job sends nothing and reports every row again.
    again = cli("run", str(source), "--report", str(report), *poll_flags(SCALE),
                env=env_for(sim))
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "0 cancel request(s) sent" in again.stdout
    assert read_report(report) == lines
    assert sim.stats_snapshot()["posts_per_order"] == stats["posts_per_order"]


def test_sigkill_halfway_then_rerun_reports_every_row_once(tmp_path: Path) -> None:
    scale = 0.02  # a 1.2 s poll ceiling: a resume that ignored the last poll would break it
    # Every request takes 20 ms, so the job is still sending when it is killed.
    config = SimulatorConfig(time_scale=scale, processing_delay=(1.0, 5.0), latency=(1.0, 1.0),
                             seed=3)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(60, (1, 3), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        n_rows = write_csv(source, orders)
        report = tmp_path / "report.csv"
        # No first-poll delay: after the resume only the journaled poll times keep the
        # next read of an action a full ceiling after the killed process's last one.
        args = ["run", str(source), "--report", str(report), "--concurrency", "2",
                *poll_flags(scale), "--first-poll-delay", "0"]
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                                env=env_for(sim), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        # Kill once half the orders were posted and some actions were polled.
        while time.monotonic() < deadline:
            live = sim.stats
            if len(live.posts_per_order) >= 30 and live.polls_per_action:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        posted_before = len(sim.stats_snapshot()["posts_per_order"])
        assert 0 < posted_before < len(orders)

        result = cli(*args, env=env_for(sim))
        assert result.returncode in (0, 1), result.stderr
        with report.open(newline="") as handle:
            lines = list(csv.DictReader(handle))
        assert sorted(int(line["row"]) for line in lines) == list(range(1, n_rows + 1))
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert set(stats["posts_per_order"].values()) == {1}  # no order posted twice
        assert stats["poll_violations"] == 0
        outcomes = {line["outcome"] for line in lines}
        assert outcomes <= {"SUCCEEDED", "UNCERTAIN"}
        uncertain = {line["order_id"] for line in lines if line["outcome"] == "UNCERTAIN"}
        assert len(uncertain) <= 2  # at most the POSTs in flight at the kill
        # Every order not left uncertain was posted exactly once, across both runs.
        assert {o.id for o in orders} - uncertain <= set(stats["posts_per_order"])
        assert result.returncode == (1 if uncertain else 0)


def test_bad_input_sends_nothing(sim: ThreadedSimulator, tmp_path: Path) -> None:
    source = tmp_path / "bad.csv"
    source.write_text(
        "order_id,order_line_id,quantity,reason,price_amount,price_currency,shipping_amount\n"
        "O1,O1-1,1,RETURN,1.00,EUR,0\n"
        "O1,O1-2,-1,RETURN,1.00,EUR,0\n"
        "O2,,1,NOPE,1.00,EUR,0\n"
        ",O3-1,1,RETURN,1.0.0,EUR,0\n")
    result = cli("run", str(source), env=env_for(sim))
    assert result.returncode == 2
    err = result.stderr
    assert "row 2 (line 3), quantity" in err
    assert "row 3 (line 4), order_line_id" in err and "row 3 (line 4), reason" in err
    assert "row 4 (line 5), order_id" in err and "row 4 (line 5), price_amount" in err
    assert "nothing was sent" in err and "header is not a row" in err
    assert sim.stats_snapshot()["requests"] == 0
    assert not (tmp_path / "bad.csv.journal.sqlite").exists()


def test_skip_invalid_sends_the_rest_and_reports_invalid_rows(sim: ThreadedSimulator,
                                                              tmp_path: Path) -> None:
    (order,) = sim.generate_orders(1, (2, 2), wrong_state_ratio=0)
    source = tmp_path / "lines.jsonl"
    good = {"order_id": order.id, "order_line_id": order.lines[0].id, "quantity": 1,
            "reason": "RETURN", "price_amount": "1.00", "price_currency": order.lines[0].currency,
            "shipping_amount": 0}
    source.write_text(json.dumps(good) + "\n" + json.dumps({**good, "quantity": -1}) + "\n")
    report = tmp_path / "r.jsonl"
    result = cli("run", str(source), "--skip-invalid", "--report", str(report),
                 *poll_flags(SCALE), env=env_for(sim))
    assert result.returncode == 1, result.stderr  # one row INVALID: not all succeeded
    assert [line["outcome"] for line in read_report(report)] == ["SUCCEEDED", "INVALID"]
    assert "negative" in str(read_report(report)[1]["errors"])


def test_dry_run(sim: ThreadedSimulator, tmp_path: Path) -> None:
    orders = sim.generate_orders(3, (2, 2), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    write_csv(source, orders)
    result = cli("run", str(source), "--dry-run", "--max-lines-per-request", "1",
                 env={k: v for k, v in env_for(sim).items() if "CLIENT" not in k})
    assert result.returncode == 0, result.stderr
    assert "dry run: 6 request(s) for 3 order(s), 6 line(s); nothing sent" in result.stdout
    assert f"  {orders[0].id}: 1 line(s)" in result.stdout
    assert "total: 6 request(s), 6 line(s)" in result.stdout
    assert sim.stats_snapshot()["requests"] == 0
    assert not (tmp_path / "lines.csv.journal.sqlite").exists()


def test_resend_uncertain_semantics(sim: ThreadedSimulator, tmp_path: Path) -> None:
    orders = sim.generate_orders(3, (1, 2), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    write_csv(source, orders)
    journal_path = tmp_path / "job.sqlite"
    # A journal as a crash mid-POST leaves it: the first request SENDING.
    parsed = read_input(source)
    planned, _ = plan_requests(parsed, None)
    with Journal.open(journal_path) as journal:
        journal.create_job(
            input_path=str(source), input_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
            input_format="csv", base_url=sim.base_url, requests=planned,
            rows=[PlannedRow(r.row, r.line, r.order_id, r.cancelation.order_line_id, None,
                             r.cancelation.quantity) for r in parsed.rows])
        journal.mark_sending(planned[0].key)
    report = tmp_path / "r.jsonl"
    args = ["run", str(source), "--journal", str(journal_path), "--report", str(report),
            *poll_flags(SCALE)]
    first = cli(*args, env=env_for(sim))
    assert first.returncode == 1, first.stderr
    by_order = {line["order_id"]: line["outcome"] for line in read_report(report)}
    assert by_order == {orders[0].id: "UNCERTAIN", orders[1].id: "SUCCEEDED",
                        orders[2].id: "SUCCEEDED"}
    assert orders[0].id not in sim.stats_snapshot()["posts_per_order"]  # not re-sent

    again = cli(*args, env=env_for(sim))  # still not re-sent without the flag
    assert again.returncode == 1 and orders[0].id not in sim.stats_snapshot()["posts_per_order"]

    resent = cli(*args, "--resend-uncertain", env=env_for(sim))
    assert resent.returncode == 0, resent.stderr
    assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
    posts = sim.stats_snapshot()["posts_per_order"]
    assert posts == {o.id: 1 for o in orders}
    with Journal.open(journal_path) as journal:
        assert journal.request(planned[0].key).attempts == 2
        assert journal.counts()[RequestState.DONE] == len(planned)


def test_changed_input_refused_unless_forced(sim: ThreadedSimulator, tmp_path: Path) -> None:
    orders = sim.generate_orders(2, (1, 1), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    write_csv(source, orders)
    env = env_for(sim)
    assert cli("run", str(source), *poll_flags(SCALE), env=env).returncode == 0
    source.write_text(source.read_text() + "\n")
    refused = cli("run", str(source), *poll_flags(SCALE), env=env)
    assert refused.returncode == 2 and "changed since the journal was created" in refused.stderr
    forced = cli("run", str(source), "--force", *poll_flags(SCALE), env=env)
    assert forced.returncode == 0, forced.stderr
    assert sim.stats_snapshot()["duplicate_posts"] == 0


def test_sigterm_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=5)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(40, (1, 2), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        n_rows = write_csv(source, orders)
        args = ["run", str(source), "--rate-limit", "40", "--report", str(tmp_path / "r.jsonl"),
                *poll_flags(SCALE)]
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                                env=env_for(sim), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(sim.stats.posts_per_order) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "SIGTERM: stopping" in err and "interrupted in" in out
        lines = read_report(tmp_path / "r.jsonl")
        assert len(lines) == n_rows and "NOT_SENT" in {line["outcome"] for line in lines}
        # In-flight POSTs were answered and journaled: nothing was left mid-send.
        assert "UNCERTAIN" not in {line["outcome"] for line in lines}

        result = cli(*args, env=env_for(sim))
        assert result.returncode == 0, result.stderr
        assert {line["outcome"] for line in read_report(tmp_path / "r.jsonl")} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0 and set(stats["posts_per_order"].values()) == {1}
        assert len(stats["posts_per_order"]) == len(orders)


def test_missing_credentials(tmp_path: Path) -> None:
    source = tmp_path / "lines.csv"
    source.write_text("order_id,order_line_id,quantity,reason,price_amount,price_currency,"
                      "shipping_amount\nO1,L1,1,RETURN,1,EUR,0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    result = cli("run", str(source), env=env)
    assert result.returncode == 2 and "missing credentials" in result.stderr
    secret_env = {**env, "MIRAKL_CLIENT_SECRET": "s3cr3t-value"}
    result = cli("run", str(source), env=secret_env)
    assert result.returncode == 2 and "MIRAKL_CLIENT_ID is not set" in result.stderr
    assert "s3cr3t-value" not in result.stderr + result.stdout


def test_plain_http_token_url_is_refused_before_anything(tmp_path: Path) -> None:
    """Regression: a plain-http token URL would have carried the client secret in clear."""
    source = tmp_path / "lines.csv"
    source.write_text("order_id,order_line_id,quantity,reason,price_amount,price_currency,"
                      "shipping_amount\nO1,L1,1,RETURN,1,EUR,0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    env.update(MIRAKL_CLIENT_ID="id", MIRAKL_CLIENT_SECRET="s3cr3t-value",
               MIRAKL_TOKEN_URL="http://auth.example.com/oauth/token")
    result = cli("run", str(source), env=env)
    assert result.returncode == 2 and "plain http" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cr3t-value" not in result.stderr + result.stdout
    assert not (tmp_path / "lines.csv.journal.sqlite").exists()


def test_status_command(sim: ThreadedSimulator, tmp_path: Path) -> None:
    (order,) = sim.generate_orders(1, (1, 1), wrong_state_ratio=0)
    source = tmp_path / "lines.csv"
    write_csv(source, [order])
    report = tmp_path / "r.jsonl"
    env = env_for(sim)
    assert cli("run", str(source), "--report", str(report), *poll_flags(SCALE),
               env=env).returncode == 0
    action_id = str(read_report(report)[0]["action_id"])
    time.sleep(60 * SCALE)  # the poll ceiling, since the run's last read
    # The last-read time is shared on disk with the run, so `status` keeps the same
    # (scaled) ceiling the run kept.
    found = cli("status", action_id, "--min-poll-interval", str(60 * SCALE), env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith(f"{action_id}  SUCCESS  updated_at=")
    missing = cli("status", "no-such-action", "--json", env=env)
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["state"] == "NOT_FOUND"


def test_help_shows_no_secret() -> None:
    env = {**os.environ, "MIRAKL_CONNECT_TOKEN": "tok-very-secret"}
    result = cli("run", "--help", env=env)
    assert result.returncode == 0
    assert "tok-very-secret" not in result.stdout
    assert "process list" in result.stdout and "--resend-uncertain" in result.stdout


def test_simulator_subcommand_serves(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirakl_cancel.cli", "simulator", "--port", "0", "--orders", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("base_url=http://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_demo_runs_to_its_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    result = cli("demo", "--lines", "200", "--orders", "40", "--time-scale", "0.002",
                 "--dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout and "SUCCEEDED" in result.stdout
    assert "0 duplicate POSTs, 0 poll-ceiling violations" in result.stdout
    assert "demo: 0 request(s) left UNCERTAIN and 0 duplicate POSTs" in result.stdout
    # The job's "sent" next to the simulator's "observed" comes with the reason they differ.
    (figures,) = [line for line in result.stdout.splitlines()
                  if line.startswith("demo: figures: the job sent ")]
    assert "were answered 502 by the gateway before reaching it" in figures
    assert (tmp_path / "report.csv").exists()


@pytest.mark.parametrize("command", [["status", "act-1"], ["run", "examples/cancel-lines.csv"]])
def test_polling_faster_than_the_api_allows_is_a_usage_error(
        command: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mirakl_cancel.cli import main

    monkeypatch.setenv("MIRAKL_CONNECT_TOKEN", "tok-secret")
    code = main([*command, "--base-url", "https://connect.example.invalid/api",
                 "--min-poll-interval", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "60 s" in err
    assert "tok-secret" not in err
