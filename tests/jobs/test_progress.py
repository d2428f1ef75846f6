"""The progress display: it fits the terminal, says what it waits for, uses recent rates.

The decisive tests run the real CLI under a real pseudo-terminal (80 and 40 columns) and
read back every byte it drew: no line may be as wide as the terminal (it would wrap, and
every later redraw would add a screen line), and redraws must not add lines.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from cli_support import env_for, poll_flags, write_csv

from mirakl_cancel._jobs.progress import RATE_WINDOW, Progress, terminal_width
from mirakl_cancel.simulator import SimulatorConfig, ThreadedSimulator

_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _progress(width: int, **kwargs: object) -> tuple[Progress, _Clock]:
    clock = _Clock()
    progress = Progress(1676, io.StringIO(), tty=True, width=width, clock=clock,
                        wall=lambda: 1_000_000.0, **kwargs)  # type: ignore[arg-type]
    return progress, clock


@pytest.mark.parametrize("width", [20, 40, 60, 80, 100, 200])
def test_the_line_fits_any_width(width: int) -> None:
    progress, clock = _progress(width)
    progress.to_send, progress.sends_over, progress.sent = 1676, 1200, 1200
    progress.accepted, progress.resolved, progress.tracking = 1190, 1_000, 190
    clock.now += 83
    line = progress.render()
    assert len(line) < width
    assert "\n" not in line and "\r" not in line
    assert "1,000/1,676 done" in line  # the one figure that always stays


def test_a_wide_terminal_shows_everything_a_narrow_one_the_essentials() -> None:
    wide, _ = _progress(200)
    wide.to_send, wide.sends_over = 10, 4
    line = wide.render()
    assert line.startswith("[")
    assert "sending: 0/10 sent" in line and "this run:" in line and "sent/s" in line
    narrow, _ = _progress(40)
    narrow.to_send, narrow.sends_over = 10, 4
    assert narrow.render() == "0/1,676 done | sending: 0/10 sent"


def test_waits_say_what_for_and_until_when() -> None:
    progress, _ = _progress(200)
    progress.to_send = progress.sends_over = progress.sent = 1676
    progress.tracking = 1676
    due = 1_000_000.0 + 45
    for n in range(3):
        progress.read_due(f"a{n}", due + n)
    stamp = time.strftime("%H:%M:%S", time.localtime(due))
    assert f"all 1,676 sent; first status reads due {stamp}" in progress.render()
    # A read re-schedules its action; the earliest due read is shown.
    progress.read_done("a0", due + 300)
    later = time.strftime("%H:%M:%S", time.localtime(due + 1))
    assert f"next status reads due {later}" in progress.render()
    progress.read_done("a1", None)
    progress.forget("a2")
    progress.tracking = 1
    assert "next status reads due" in progress.render()
    progress.waiting = "settling until 19:31:00"
    assert "settling until 19:31:00" in progress.render()


def test_waits_and_notes_escape_control_characters() -> None:
    """Ids from the server or the file may carry terminal escapes: shown, never obeyed."""
    progress, _ = _progress(200)
    progress.waiting = "reading order \x1b[2Jo-1\u202e"
    assert "\x1b" not in progress.render() and "\\x1b[2Jo-1\\u202e" in progress.phase()
    progress.note("action \x07a-1\r\nforged")
    written = progress.stream.getvalue()  # type: ignore[attr-defined]
    assert "\\x07a-1\\x0d\\x0aforged\n" in written and "\x07" not in written


def test_rates_are_recent_not_averaged_over_the_run() -> None:
    progress, clock = _progress(200)
    for _ in range(10):  # 10 s at 50 sends/s
        clock.now += 1
        progress.sent += 50
        progress.sample()
    for _ in range(int(RATE_WINDOW) + 5):  # then a long wait with nothing sent
        clock.now += 1
        progress.sample()
    sent_rate, _ = progress.rates()
    assert sent_rate == 0.0  # a whole-run average would still say ~11/s


def test_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(3, stream, tty=False)
    progress.draw()
    progress.draw()
    assert stream.getvalue().count("\n") == 2
    assert stream.getvalue().startswith("progress: 0/3 done (job)")
    assert "\r" not in stream.getvalue()


def test_terminal_width_prefers_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "57")
    assert terminal_width(io.StringIO()) == 57
    monkeypatch.delenv("COLUMNS")
    assert terminal_width(io.StringIO()) == 80  # not a terminal: the usual default


def _run_under_pty(tmp_path: Path, columns: int, *, use_env: bool) -> tuple[str, int]:
    """Run a CLI job whose stdout and stderr are a pty `columns` wide; all it drew."""
    scale = 0.02  # the poll ceiling lasts 1.2 s: a few seconds of redraws
    config = SimulatorConfig(time_scale=scale, processing_delay=(1.0, 30.0), seed=5)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(40, (1, 3), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = env_for(sim)
        env.pop("COLUMNS", None)
        if use_env:
            env["COLUMNS"] = str(columns)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirakl_cancel.cli", "run", str(source),
             *poll_flags(scale)], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            env=env, close_fds=True)
        os.close(slave)
        chunks: list[bytes] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(30)
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace"), code


@pytest.mark.parametrize(("columns", "use_env"), [(80, False), (40, True)])
def test_progress_under_a_real_terminal_never_wraps(tmp_path: Path, columns: int,
                                                    use_env: bool) -> None:
    text, code = _run_under_pty(tmp_path, columns, use_env=use_env)
    assert code == 0, text
    lines = text.replace("\r\n", "\n").split("\n")
    redraws = 0
    for line in lines:
        for piece in line.split("\r")[1:]:  # each redraw of the live line
            visible = _ESCAPE.sub("", piece)
            assert len(visible) < columns, repr(visible)
        redraws += line.count("\r")
    assert redraws >= 2  # it did redraw, more than once...
    # ...in place: the screen holds the notes and the summary, not one line per redraw.
    assert len(lines) < 25, text
    assert "done" in text and "SUCCEEDED" in text
