"""The CLI as an operator lives with it (issue 12): early refusals, honest messages.

Each test is one bug an operator hit, run through the real CLI subprocess against the
simulator on 127.0.0.1, and judged by what the server saw (nothing sent, no second POST)
as well as by what the CLI printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from cli_support import SCALE, cli, env_for, poll_flags, read_report, write_csv

from mirakl_cancel import Cancelation, CancelReason, MiraklConnectClient, Money
from mirakl_cancel import cli as cli_module
from mirakl_cancel._http.auth import StaticToken
from mirakl_cancel._jobs import job as _job
from mirakl_cancel._jobs.input import parse_csv
from mirakl_cancel._jobs.job import JobOptions, run_job
from mirakl_cancel.simulator import Fault, Simulator, SimulatorConfig, ThreadedSimulator
from mirakl_cancel.tracker import PollPolicy


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    """The shipped `mirakl_simulator` fixture (our pytest plugin), configured for the CLI."""
    return SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=11)


@pytest.fixture
def sim(mirakl_simulator: ThreadedSimulator) -> ThreadedSimulator:
    return mirakl_simulator


@pytest.fixture
def source(sim: ThreadedSimulator, tmp_path: Path) -> Path:
    path = tmp_path / "lines.csv"
    write_csv(path, sim.generate_orders(4, (1, 2), wrong_state_ratio=0))
    return path


def _nothing_sent(sim: ThreadedSimulator) -> bool:
    return sim.stats_snapshot()["requests"] == 0


@pytest.mark.parametrize("where", ["missing-dir", "under-a-file", "a-directory"])
def test_an_unwritable_report_is_refused_before_any_cancel(
        sim: ThreadedSimulator, source: Path, tmp_path: Path, where: str) -> None:
    report = {"missing-dir": tmp_path / "nope" / "report.csv",
              "under-a-file": source / "report.csv",
              "a-directory": tmp_path / "dir.csv"}[where]
    if where == "a-directory":
        report.mkdir()
    result = cli("run", str(source), "--report", str(report), *poll_flags(SCALE),
                 env=env_for(sim))
    assert result.returncode == 2, result.stderr
    assert f"report {report}" in result.stderr
    assert _nothing_sent(sim)
    assert not (tmp_path / "lines.csv.journal.sqlite").exists()


def test_an_unwritable_journal_is_refused_before_any_cancel(
        sim: ThreadedSimulator, source: Path, tmp_path: Path) -> None:
    journal = tmp_path / "missing" / "job.sqlite"
    result = cli("run", str(source), "--journal", str(journal), *poll_flags(SCALE),
                 env=env_for(sim))
    assert result.returncode == 2
    assert f"journal {journal}: the directory" in result.stderr
    assert _nothing_sent(sim)


@pytest.mark.parametrize(("flags", "message"), [
    (["--report", "{input}"], "--report {input} is the same file as the input"),
    (["--journal", "{input}"], "the journal {input} is the same file as the input"),
    (["--journal", "{dir}/j.csv", "--report", "{dir}/sub/../j.csv"],
     "--report {dir}/sub/../j.csv is the same file as the journal"),
])
def test_report_and_journal_must_not_be_the_input_or_each_other(
        sim: ThreadedSimulator, source: Path, tmp_path: Path, flags: list[str],
        message: str) -> None:
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    values = {"input": str(source), "dir": str(tmp_path)}
    result = cli("run", str(source), *(f.format(**values) for f in flags), *poll_flags(SCALE),
                 env=env_for(sim))
    assert result.returncode == 2, result.stderr
    assert message.format(**values) in result.stderr
    assert source.read_bytes() == before
    assert _nothing_sent(sim)


def test_a_directory_as_input_says_so(sim: ThreadedSimulator, tmp_path: Path) -> None:
    result = cli("run", str(tmp_path), env=env_for(sim))
    assert result.returncode == 2
    assert "is a directory: give the CSV or JSONL file" in result.stderr
    assert "no such file" not in result.stderr
    missing = cli("run", str(tmp_path / "absent.csv"), env=env_for(sim))
    assert missing.returncode == 2 and "absent.csv: no such file" in missing.stderr


def test_a_report_lost_after_the_run_is_a_failure(
        sim: ThreadedSimulator, source: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def fail(self: object) -> None:
        raise OSError(28, "No space left on device")

    # The report is streamed row by row from the journal; the disk fills at the end.
    monkeypatch.setattr(_job.ReportWriter, "commit", fail)
    ceiling = 60 * SCALE
    options = JobOptions(
        input_path=source, base_url=sim.base_url, report_path=tmp_path / "r.csv",
        quiet=True, policy=PollPolicy(min_interval=ceiling, interval=ceiling,
                                      first_delay=ceiling))
    code = run_job(options, StaticToken(sim.token))
    captured = capsys.readouterr()
    assert code == 1  # every row SUCCEEDED, but the report the operator asked for is lost
    assert "cannot write the report" in captured.err and "No space left" in captured.err
    assert "report: " not in captured.out


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_wrong_base_url_then_the_fixed_one_resumes_without_force(
        sim: ThreadedSimulator, source: Path, tmp_path: Path) -> None:
    wrong = f"http://127.0.0.1:{_free_port()}"
    report = tmp_path / "r.jsonl"
    args = ["run", str(source), "--report", str(report), *poll_flags(SCALE)]
    env = env_for(sim)
    first = cli(*args, "--base-url", wrong, env=env)
    assert first.returncode == 1, first.stderr
    # The reason is on screen as it happens, not only in the report...
    assert f"(base URL {wrong})" in first.stderr and "Connect call failed" in first.stderr
    assert "stopping: no connection could be made" in first.stderr
    # ...nothing is counted as sent, and the summary says how to go on.
    assert "0 cancel request(s) sent this run" in first.stdout
    assert "to resume this job, run (with the base URL corrected): mirakl-cancel run" \
        in first.stdout
    assert not sim.stats_snapshot()["posts_per_order"]  # (the token came from the sim)

    fixed = cli(*args, "--base-url", sim.base_url, env=env)
    assert fixed.returncode == 0, fixed.stderr
    assert f"nothing of this job ever reached {wrong}" in fixed.stderr
    assert "refusing" not in fixed.stderr
    assert {line["outcome"] for line in read_report(report)} == {"SUCCEEDED"}
    stats = sim.stats_snapshot()
    assert stats["duplicate_posts"] == 0 and set(stats["posts_per_order"].values()) == {1}

    # Now that cancels did reach the API, the journal is tied to it.
    again = cli(*args, "--base-url", wrong, env=env)
    assert again.returncode == 2
    assert f"the journal's actions were sent to {sim.base_url}" in again.stderr


def test_an_interrupted_run_ends_with_the_command_to_resume(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=5)
    with ThreadedSimulator(config) as sim:
        source = tmp_path / "lines.csv"
        write_csv(source, sim.generate_orders(40, (1, 2), wrong_state_ratio=0))
        args = ["run", str(source), "--rate-limit", "40", "--token", "s3cr3t-token",
                *poll_flags(SCALE)]
        env = {k: v for k, v in env_for(sim).items() if "CLIENT" not in k}
        env["MIRAKL_TOKEN_URL"] = sim.token_url
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args,
                                 # "=" form: a random token may start with "-", which
                                 # argparse would read as the next option.
                                 f"--token={sim.token}"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while len(sim.stats.posts_per_order) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    (line,) = [x for x in out.splitlines() if x.startswith("to resume this job, run: ")]
    command = line.removeprefix("to resume this job, run: ")
    assert shlex.split(command)[:3] == ["mirakl-cancel", "run", str(source)]
    assert "--token '<TOKEN>'" in command or "--token <TOKEN>" in command
    assert sim.token not in out + err and "s3cr3t-token" not in out + err


def test_ctrl_c_in_the_settling_wait_says_what_stays_uncertain(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=16)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(3, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        sim.inject(Fault.drop_after_read(), route="cancel", count=1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirakl_cancel.cli", "run", str(source), "--reconcile",
             "--settle", "600", *poll_flags(SCALE)],
            env=env_for(sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "settling window" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "no uncertain cancel to reconcile" not in out
    journal = tmp_path / "lines.csv.journal.sqlite"
    assert ("reconciliation interrupted: 1 cancel(s) stay UNCERTAIN (not sent again); "
            "settle them later, once their settling window has passed, with: "
            f"mirakl-cancel reconcile --journal {journal} --settle 600") in out
    assert "to resume this job, run: mirakl-cancel run" in out


# --- European spreadsheet exports --------------------------------------------------------

_EU_HEADER = ("order_id;order_line_id;quantity;reason;price_amount;price_currency;"
              "shipping_amount;taxes\r\n")


def test_a_semicolon_export_with_decimal_commas_is_detected_and_exact() -> None:
    text = _EU_HEADER + "O1;O1-1;1;RETURN;19,99;EUR;4;TVA:3,33\r\nO2;O2-1;1;RETURN;5;EUR;0,5;\r\n"
    parsed = parse_csv(text, decimal_comma=None)
    assert parsed.errors == ()
    first, second = (row.cancelation for row in parsed.rows)
    assert str(first.price.amount) == "19.99" and str(first.taxes[0].amount.amount) == "3.33"
    assert str(second.shipping_price.amount) == "0.5"
    assert any("decimal comma" in w.message for w in parsed.warnings)
    # The same file without detection is refused amount by amount, as before.
    assert {i.field for i in parse_csv(text).errors} >= {"price_amount"}


@pytest.mark.parametrize("amount", ["1.234,5", "12.34", "1.234"])
def test_detection_never_guesses_at_a_dot(amount: str) -> None:
    """A dot with commas elsewhere is ambiguous (thousands? decimals?): not detected."""
    text = _EU_HEADER + f"O1;O1-1;1;RETURN;{amount};EUR;0;\r\nO2;O2-1;1;RETURN;2,50;EUR;0;\r\n"
    parsed = parse_csv(text, decimal_comma=None)
    assert not any("decimal comma" in w.message for w in parsed.warnings)
    assert any(i.row == 2 and i.field == "price_amount" for i in parsed.errors)


def test_the_option_reads_grouped_amounts_and_still_refuses_a_bare_dot() -> None:
    text = (_EU_HEADER + "O1;O1-1;1;RETURN;1.234,5;EUR;0;TVA:205,75\r\n"
            "O2;O2-1;1;RETURN;1.234;EUR;0;\r\nO3;O3-1;1;RETURN;12.5;EUR;0;\r\n")
    parsed = parse_csv(text, decimal_comma=True)
    (row,) = parsed.rows
    assert row.cancelation.price.amount == Decimal("1234.5")
    assert row.cancelation.taxes[0].amount.amount == Decimal("205.75")
    assert [(i.row, i.field) for i in parsed.errors] == [(2, "price_amount"),
                                                         (3, "price_amount")]
    assert "'1.234' is not an amount with a decimal comma" in str(parsed.errors[0])


def test_a_windows_1252_export_through_the_cli(sim: ThreadedSimulator, tmp_path: Path) -> None:
    (order,) = sim.generate_orders(1, (1, 1), wrong_state_ratio=0)
    line = order.lines[0]
    path = tmp_path / "export.csv"
    path.write_bytes((_EU_HEADER.replace("reason", "reason;note")
                      + f"{order.id};{line.id};1;RETURN;caf\u00e9 \u20ac;"
                      f"{str(line.price).replace('.', ',')};{line.currency};0;TVA:1,00\r\n")
                     .encode("cp1252"))
    as_utf8 = cli("run", str(path), "--dry-run", env=env_for(sim))
    assert as_utf8.returncode == 2 and "--encoding cp1252" in as_utf8.stderr
    result = cli("run", str(path), "--dry-run", "--encoding", "cp1252", env=env_for(sim))
    assert result.returncode == 0, result.stderr
    assert "amounts read with a decimal comma" in result.stderr
    assert f"{line.price + Decimal('1.00')} {line.currency}" in result.stdout
    bad = cli("run", str(path), "--encoding", "klingon", env=env_for(sim))
    assert bad.returncode == 2 and "unknown encoding 'klingon'" in bad.stderr
    assert _nothing_sent(sim)


# --- the README's commands, as pasted ------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]


def _readme_block(marker: str) -> list[str]:
    """The commands of the README's bash block containing `marker` (continuations joined,
    comments dropped)."""
    text = (_REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    (block,) = [b for b in blocks if marker in b]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        line = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def test_the_readme_example_runs_as_pasted_against_the_seeded_simulator(
        tmp_path: Path) -> None:
    commands = _readme_block("--example-orders")
    (serve,) = [c for c in commands if c.startswith("mirakl-cancel simulator")]
    (export,) = [c for c in commands if c.startswith("export ")]
    runs = [c for c in commands if c.startswith("mirakl-cancel run")]
    assert len(runs) == 2  # the CSV and the JSONL example
    words = shlex.split(serve)[1:]
    words[words.index("--port") + 1] = "0"
    proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *words],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = ""
        while not base_url:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if line.startswith("base_url="):
                base_url = line.strip().removeprefix("base_url=")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
        for assignment in shlex.split(export)[1:]:
            name, _, value = assignment.partition("=")
            env[name] = value.replace("http://127.0.0.1:8080", base_url)
        for run in runs:
            words = shlex.split(run)[1:]
            # The example files stay untouched: journal and report go to tmp_path.
            source = _REPO / words[1]
            words[1] = str(source)
            words[words.index("--report") + 1] = str(tmp_path / f"{source.name}.report.csv")
            words += ["--journal", str(tmp_path / f"{source.name}.journal.sqlite")]
            result = cli(*words, env=env)
            assert result.returncode == 0, result.stdout + result.stderr
            rows = source.read_text(encoding="utf-8").strip().splitlines()
            expected = len(rows) - (source.suffix == ".csv")
            assert f"SUCCEEDED  {expected:>7}" in result.stdout, result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["duplicate_posts"] == 0 and stats["poll_violations"] == 0


def test_the_readme_library_snippets_marked_runnable_run_in_scaled_time(
        tmp_path: Path) -> None:
    text = (_REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    runnable = [b for b in blocks if b.startswith("# Runs as is")]
    assert runnable  # the bulk run, at least
    for block in runnable:
        script = tmp_path / "snippet.py"
        script.write_text(block, encoding="utf-8")
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr


# --- status: one read per action per minute, fail fast -------------------------------------


def test_status_against_an_unreachable_api_fails_at_once_and_clearly(
        tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    env["MIRAKL_CONNECT_TOKEN"] = "t0ken"
    result = cli("status", "a-1", "a-2", "a-3", "--base-url", url, "--min-poll-interval",
                 "0.06", env=env, timeout=120)
    assert result.returncode == 1
    assert f"cannot reach {url}" in result.stderr and "Connect call failed" in result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["a-1", "NOT_READ"], ["a-2", "NOT_READ"], ["a-3", "NOT_READ"]]
    assert "retrying" not in result.stderr


async def test_status_never_reads_an_action_twice_within_the_ceiling(
        capsys: pytest.CaptureFixture[str]) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=3)
    async with Simulator(config) as sim:
        (order,) = sim.generate_orders(1, (1, 1), wrong_state_ratio=0)
        line = order.lines[0]
        async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                                       min_poll_interval=0.5) as client:
            accepted = await client.cancel_order_lines(order.id, [Cancelation(
                order_line_id=line.id, quantity=1, reason=CancelReason.RETURN,
                price=Money(line.price, line.currency),
                shipping_price=Money(0, line.currency))])
            action = accepted.action_id
            assert await cli_module._statuses(client, [action], False) == 0
            # At once again, --no-wait: not read, and told when it will be allowed.
            assert await cli_module._statuses(client, [action], False, wait=False) == 1
            out = capsys.readouterr().out.splitlines()
            assert out[1].startswith(f"{action}  NOT_READ  read less than a minute ago")
            assert "the next read is allowed at" in out[1]
            # Without --no-wait: it waits, says until when, then reads.
            assert await cli_module._statuses(client, [action], False, wait=True) == 0
            captured = capsys.readouterr()
            assert f"{action}: read less than a minute ago on this machine; waiting" \
                in captured.err
            assert captured.out.startswith(f"{action}  ")
        assert sim.stats.poll_violations == 0


def test_status_twice_within_a_minute_keeps_the_ceiling_across_processes(
        sim: ThreadedSimulator, tmp_path: Path) -> None:
    source = tmp_path / "lines.csv"
    write_csv(source, sim.generate_orders(1, (1, 1), wrong_state_ratio=0))
    journal = tmp_path / "j.sqlite"
    run = cli("run", str(source), "--journal", str(journal), *poll_flags(SCALE),
              env=env_for(sim))
    assert run.returncode == 0, run.stderr
    action = next(iter(sim.stats_snapshot()["polls_per_action"]))
    env = {**env_for(sim), "MIRAKL_CANCEL_CACHE_DIR": str(tmp_path / "cache")}
    first = cli("status", action, "--min-poll-interval", "30", env=env)
    assert first.returncode == 0, first.stderr
    second = cli("status", action, "--min-poll-interval", "30", "--no-wait", env=env)
    assert second.returncode == 1
    assert f"{action}  NOT_READ  read less than a minute ago" in second.stdout
    assert sim.stats_snapshot()["poll_violations"] == 0


def test_a_resume_that_only_tracks_reads_without_a_second_first_delay(tmp_path: Path) -> None:
    """The first delay follows the acceptance; a resume does not wait it again from its
    own start. The operator resumes an hour after the cancels were accepted (their
    journaled acceptance moved back an hour): with an hour's first delay, the resumed
    run can only finish by reading at once, still never within the ceiling."""
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=21)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(5, (1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        args = ["run", str(source), *poll_flags(SCALE), "--first-poll-delay", "3600",
                "--progress-interval", "0.1"]
        proc = subprocess.Popen([sys.executable, "-m", "mirakl_cancel.cli", *args],
                                env=env_for(sim), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:  # every cancel accepted: only the reads are left
            if "first status reads due" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert not sim.stats_snapshot()["polls_per_action"]
        db = sqlite3.connect(tmp_path / "lines.csv.journal.sqlite")
        with db:
            moved = db.execute("UPDATE requests SET accepted_at = accepted_at - 3600"
                               " WHERE state = 'ACCEPTED'").rowcount
        db.close()
        assert moved == 5
        resumed = cli(*args, env=env_for(sim), timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert "first status reads due" not in resumed.stderr  # due at once: nothing to wait
        stats = sim.stats_snapshot()
        assert stats["poll_violations"] == 0 and stats["duplicate_posts"] == 0
        assert sorted(stats["polls_per_action"].values()) == [1] * 5


# --- the documentation an operator reads (bugs 8 and 10) -----------------------------------


def test_the_readme_lists_the_report_columns_in_their_order() -> None:
    """The README's report section names every column, in the order the report writes."""
    from mirakl_cancel._jobs.report import REPORT_FIELDS

    text = " ".join((_REPO / "README.md").read_text(encoding="utf-8").split())
    start = text.index("columns in this order: ")
    listed = text[start:].split(". ", 1)[0]
    named = [word.strip("`,") for word in listed.split() if word.startswith("`")
             and word.strip("`,").islower()]
    assert named == list(REPORT_FIELDS)


def test_every_simulator_option_says_what_it_does_and_in_which_unit() -> None:
    parser = cli_module.build_parser(load=("simulator",))
    (sub,) = [action for action in parser._actions  # argparse keeps its subparsers there
              if isinstance(action, argparse._SubParsersAction)]
    options = [action for action in sub.choices["simulator"]._actions
               if action.option_strings and action.dest != "help"]
    assert options
    undocumented = [action.option_strings[0] for action in options if not action.help]
    assert not undocumented
    by_name = {action.option_strings[0]: action.help or "" for action in options}
    for timed in ("--latency", "--processing-delay", "--min-poll-interval", "--token-ttl"):
        assert "scaled" in by_name[timed] and "seconds" in by_name[timed].lower(), timed
    assert "REAL second" in by_name["--rate-limit"]
