"""The fleet job: `mirakl-cancel run FILE --store postgresql://... --job NAME` on several
real CLI processes at once, over the wire against the simulator, on a real PostgreSQL.

Everything the API sees is counted by the simulator (POSTs per order, duplicates, reads
sooner than the ceilings); everything the operator sees is the report.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
from cli_support import SCALE, cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel._stores.pgjob import DIED_WHILE_SENDING
from mirakl_cancel.simulator import Fault, SimulatorConfig, ThreadedSimulator

SETTLE = 0.6


def fleet_env(sim: ThreadedSimulator, dsn: str) -> dict[str, str]:
    return {**env_for(sim), "MIRAKL_CANCEL_STORE": dsn}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen[bytes]], logs: Path,
             timeout: float = float(os.environ.get("FLEET_TEST_TIMEOUT", 240))) -> list[int]:
    """Every worker's exit code; on a hang, kill them all and show their logs' ends."""
    deadline = time.monotonic() + timeout
    try:
        return [proc.wait(max(1.0, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        _dump_stacks(procs, logs)
        for proc in procs:
            proc.kill()
        tails = {p.name: p.read_text()[-2000:] for p in logs.glob("*.log")}
        raise AssertionError(f"a worker did not exit: {tails}") from None


def _dump_stacks(procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """The stuck workers' stacks (py-spy, when installed) next to their logs."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    for proc in procs:
        if spy is not None and proc.poll() is None:
            dump = subprocess.run([spy, "dump", "--locals", "--pid", str(proc.pid)],
                                  capture_output=True, text=True, timeout=60, check=False)
            (logs / f"stack-{proc.pid}.txt").write_text(dump.stdout + dump.stderr)
            print(f"worker {proc.pid} stack:\n{dump.stdout}{dump.stderr}")


def job_name(tmp_path: Path) -> str:
    return f"job-{tmp_path.name}"


def test_two_workers_share_one_job_and_the_report_command_writes_it_whole(
        tmp_path: Path, pg_dsn: str) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=3)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(60, (1, 2), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        rows = write_csv(source, orders)
        name = job_name(tmp_path)
        env = fleet_env(sim, pg_dsn)
        procs = [start(["run", str(source), "--job", name, "--concurrency", "4",
                        "--report", str(tmp_path / f"r{n}.jsonl"), *poll_flags(SCALE)], env,
                       tmp_path / f"w{n}.log") for n in range(2)]
        codes = wait_all(procs, tmp_path)
        logs = [(tmp_path / f"w{n}.log").read_text() for n in range(2)]
        assert codes == [0, 0], logs
        assert sum("created" in log for log in logs) == 1
        assert sum("joining fleet job" in log for log in logs) == 1
        for n in range(2):  # each worker reports the whole job
            lines = read_report(tmp_path / f"r{n}.jsonl")
            assert [line["row"] for line in lines] == list(range(1, rows + 1))
            assert {line["outcome"] for line in lines} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}
        assert stats["duplicate_posts"] == stats["poll_violations"] == 0
        # The password never reaches the printed commands or the database.
        password = pg_dsn.split(":")[2].split("@")[0]
        assert all(password not in log for log in logs)

        again = cli("report", "--job", name, "--report", str(tmp_path / "again.csv"), env=env)
        assert again.returncode == 0, again.stderr
        assert "SUCCEEDED" in again.stdout and f"report: {tmp_path / 'again.csv'}" in again.stdout
        assert len((tmp_path / "again.csv").read_text().splitlines()) == rows + 1

        # The same name with another file is refused; nothing is sent.
        other = tmp_path / "other.csv"
        write_csv(other, orders[:5])
        before = sim.stats_snapshot()["requests"]
        refused = cli("run", str(other), "--job", name, env=env)
        assert refused.returncode == 2
        assert "created on" in refused.stderr and "from another file" in refused.stderr
        assert sim.stats_snapshot()["requests"] == before
    with psycopg.connect(pg_dsn) as conn:
        for table in ("mirakl_cancel_job_requests", "mirakl_cancel_jobs",
                      "mirakl_cancel_job_rows"):
            dump = str(conn.execute(f"SELECT * FROM {table}").fetchall())
            assert config.client_secret not in dump and password not in dump


def test_report_from_a_journal_and_usage_errors(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 2.0), seed=4)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(5, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        env = env_for(sim)
        assert cli("run", str(source), *poll_flags(SCALE), env=env).returncode == 0
        out = cli("report", "--journal", str(tmp_path / "lines.csv.journal.sqlite"),
                  "--report", str(tmp_path / "r.jsonl"), env=env)
        assert out.returncode == 0, out.stderr
        assert len(read_report(tmp_path / "r.jsonl")) == 5
        assert "requests" in out.stdout and "HTTP" not in out.stdout
        missing = cli("report", "--journal", str(tmp_path / "nope.sqlite"), env=env)
        assert missing.returncode == 2 and "no such journal" in missing.stderr
        for args, message in (
                (["run", str(source), "--job", "x"], "--job needs --store"),
                (["run", str(source), "--store", "postgresql://h/db"], "--store needs --job"),
                (["run", str(source), "--store", "postgresql://h/db", "--job", "x",
                  "--journal", str(tmp_path / "j")], "no --journal"),
                (["run", str(source), "--store", "postgresql://h/db", "--job", "x",
                  "--resend-uncertain"], "not for a fleet job"),
                (["run", str(source), "--store", "postgresql://h/db", "--job", "x",
                  "--mark-ahead"], "--mark-ahead is not for a fleet job"),
                (["report"], "give --journal PATH")):
            result = cli(*args, env=env)
            assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        unreachable = cli("run", str(source), "--store",
                          "postgresql://u:s3cret@127.0.0.1:1/db", "--job", "x", env=env)
        assert unreachable.returncode == 2 and "s3cret" not in unreachable.stderr
        assert "PostgreSQL store" in unreachable.stderr


def test_three_workers_one_killed_and_restarted_send_each_row_once(
        tmp_path: Path, pg_dsn: str) -> None:
    """The issue's show: 3 CLI workers on one 3,000-row job against a faulty simulator,
    one SIGKILLed mid-run and restarted. Each row once in the report, no duplicate POST,
    no read sooner than either ceiling, and every UNCERTAIN row says why; then two
    workers with --reconcile settle them, one at a time."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=15,
                             fault_rates={"drop": 0.005, "500": 0.005, "503": 0.01})
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(3000, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        rows = write_csv(source, orders)
        name = job_name(tmp_path)
        env = fleet_env(sim, pg_dsn)
        args = ["run", str(source), "--job", name, "--lease", "3", "--concurrency", "8",
                *poll_flags(SCALE)]
        started = time.monotonic()
        procs = [start([*args, "--report", str(tmp_path / f"r{n}.jsonl")], env,
                       tmp_path / f"w{n}.log") for n in range(3)]
        deadline = time.monotonic() + 120
        while len(sim.stats.posts_per_order) < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        procs[0].send_signal(signal.SIGKILL)
        assert procs[0].wait(10) == -signal.SIGKILL
        at_kill = len(sim.stats.posts_per_order)
        assert at_kill < len(orders), "the job ended before the kill"
        procs[0] = start([*args, "--report", str(tmp_path / "r0.jsonl")], env,
                         tmp_path / "w0-again.log")
        codes = wait_all(procs, tmp_path)
        elapsed = time.monotonic() - started
        logs = {p.name: p.read_text() for p in tmp_path.glob("w*.log")}
        assert all(code in (0, 1) for code in codes), (codes, logs)

        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == 0
        assert max(stats["posts_per_order"].values()) == 1
        assert stats["poll_violations"] == 0
        assert stats["list_violations"] == 0
        for n in range(3):
            lines = read_report(tmp_path / f"r{n}.jsonl")
            assert [line["row"] for line in lines] == list(range(1, rows + 1))  # once each
        outcomes = Counter(str(line["outcome"]) for line in lines)
        assert outcomes["SUCCEEDED"] >= rows * 0.9, outcomes
        uncertain = [line for line in lines if line["outcome"] == "UNCERTAIN"]
        for line in uncertain:  # the dead worker's, or an answer the faults lost
            assert DIED_WHILE_SENDING in str(line["errors"]) or \
                "may have been processed" in str(line["errors"]), line
        died = [line for line in uncertain if DIED_WHILE_SENDING in str(line["errors"])]
        assert died, "the kill left nothing mid-POST"
        for line in lines:
            if line["outcome"] == "SUCCEEDED":
                assert line["action_id"], line

        # Two workers reconcile the finished job: one does, the other waits and exits.
        settle = [*args, "--reconcile", "--settle", str(SETTLE), "--skew", str(120 * SCALE),
                  "--report", str(tmp_path / "final.jsonl")]
        procs = [start(settle, env, tmp_path / f"rec{n}.log") for n in range(2)]
        codes = wait_all(procs, tmp_path)
        logs = {p.name: p.read_text() for p in tmp_path.glob("rec*.log")}
        assert all(code in (0, 1) for code in codes), (codes, logs)
        # One of them judges the uncertain cancels. The other normally overlaps it and
        # waits for its turn, then has nothing to do; on a loaded machine it may start
        # only once the first has finished and left the fleet: it then begins a fleet run
        # of its own and finds nothing left to reconcile. Never do both judge.
        judged = [log for log in logs.values() if "verdict(s) on uncertain cancels" in log]
        assert len(judged) == 1, logs
        other = next(log for log in logs.values() if log is not judged[0])
        assert ("another worker of the fleet reconciled" in other
                or "no uncertain cancel to reconcile" in other), logs
        final = read_report(tmp_path / "final.jsonl")
        assert len(final) == rows
        settled = {str(line["order_id"]): line for line in final}
        for line in uncertain:
            assert settled[str(line["order_id"])]["reconciliation"], settled[line["order_id"]]
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == stats["poll_violations"] == 0
        assert stats["list_violations"] == 0 and stats["list_calls"] >= 1
        assert max(stats["posts_per_order"].values()) == 1
        print(f"3 workers, {rows} rows, killed at {at_kill} POSTs: {elapsed:.1f}s, "
              f"{dict(outcomes)}, {len(died)} died mid-send, faults {stats['faults_injected']}")


def test_a_later_fleet_run_resends_what_an_earlier_reconcile_proved_not_applied(
        tmp_path: Path, pg_dsn: str) -> None:
    """A fleet job's `--reconcile` run proves three cancels NOT_APPLIED (a 502 before
    processing) without resending them; a later `--reconcile --resend-unapplied` run of
    the same job sends exactly those again, once each, as a single-process job does."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=11)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(8, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        report = tmp_path / "r.jsonl"
        env = fleet_env(sim, pg_dsn)
        # One sender: POSTs go out in file order, so the 502s hit the first three orders.
        sim.inject(Fault.http(502), route="cancel", count=3)
        args = ["run", str(source), "--job", job_name(tmp_path), "--report", str(report),
                "--concurrency", "1", "--reconcile", "--settle", str(SETTLE), "--skew",
                str(120 * SCALE), *poll_flags(SCALE)]
        first = cli(*args, env=env)
        assert first.returncode == 1, first.stderr
        refused = {o.id for o in orders[:3]}
        outcomes = {line["order_id"]: line["outcome"] for line in read_report(report)}
        assert outcomes == {o.id: "NOT_APPLIED" if o.id in refused else "SUCCEEDED"
                            for o in orders}
        assert sim.stats_snapshot()["posts_per_order"] == {
            o.id: 1 for o in orders if o.id not in refused}

        # Without --resend-unapplied a rerun sends nothing again.
        quiet = cli(*args, env=env)
        assert quiet.returncode == 1, quiet.stderr
        assert sim.stats_snapshot()["posts_per_order"] == {
            o.id: 1 for o in orders if o.id not in refused}

        again = cli(*args, "--resend-unapplied", env=env)
        assert again.returncode == 0, again.stderr + again.stdout
        assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
        stats = sim.stats_snapshot()
        assert stats["posts_per_order"] == {o.id: 1 for o in orders}
        assert stats["duplicate_posts"] == stats["poll_violations"] == 0


def test_a_worker_that_lost_its_lease_says_the_job_is_not_finished(
        tmp_path: Path, pg_dsn: str) -> None:
    """A worker frozen (SIGSTOP) longer than its lease loses its work to a second worker;
    woken, it sends nothing more, and its summary says the job is not finished instead of
    passing rows still PENDING off as its result. The second worker finishes the job,
    each row sent once."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=21)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(150, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        rows = write_csv(source, orders)
        env = fleet_env(sim, pg_dsn)
        args = ["run", str(source), "--job", job_name(tmp_path), "--lease", "2",
                "--concurrency", "2", "--rate-limit", "25", *poll_flags(SCALE)]
        first = start([*args, "--report", str(tmp_path / "r0.jsonl")], env,
                      tmp_path / "w0.log")
        deadline = time.monotonic() + 60
        while len(sim.stats.posts_per_order) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        try:
            time.sleep(3)  # past its 2 s lease
            second = start([*args, "--report", str(tmp_path / "r1.jsonl")], env,
                           tmp_path / "w1.log")
            time.sleep(1)  # the second worker has taken the first one's claims over
        finally:
            first.send_signal(signal.SIGCONT)
        codes = wait_all([first, second], tmp_path)
        logs = [(tmp_path / f"w{n}.log").read_text() for n in range(2)]
        assert codes[0] == 1, logs[0]
        assert "the job is not finished" in logs[0], logs[0]
        assert "This worker stopped (this worker's lease lapsed" in logs[0], logs[0]
        assert "Traceback" not in logs[0], logs[0]
        assert codes[1] in (0, 1), logs[1]
        assert "the job is not finished" not in logs[1]
        lines = read_report(tmp_path / "r1.jsonl")
        assert [line["row"] for line in lines] == list(range(1, rows + 1))
        for line in lines:  # frozen mid-POST: UNCERTAIN, and why
            assert line["outcome"] == "SUCCEEDED" or DIED_WHILE_SENDING in str(
                line["errors"]), line
        stats = sim.stats_snapshot()
        assert stats["duplicate_posts"] == stats["poll_violations"] == 0
        assert max(stats["posts_per_order"].values()) == 1
