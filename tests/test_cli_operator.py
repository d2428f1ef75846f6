"""The CLI as an operator lives with it (issue 12): early refusals, honest messages.

Each test is one bug an operator hit, run through the real CLI subprocess against the
simulator on 127.0.0.1, and judged by what the server saw (nothing sent, no second POST)
as well as by what the CLI printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import SCALE, cli, env_for, poll_flags, write_csv

from mirakl_cancel import _job
from mirakl_cancel._job import JobOptions, run_job
from mirakl_cancel.auth import StaticToken
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator
from mirakl_cancel.tracker import PollPolicy


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 5.0), seed=11)
    with ThreadedSimulator(config) as simulator:
        yield simulator


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
    def fail(path: Path, lines: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_job, "write_report", fail)
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
