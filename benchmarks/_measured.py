"""Children whose peak memory is their own: launched from a small process.

Linux carries a process's peak RSS (`ru_maxrss`) over an `exec`: a child forked from the
benchmark process, which may have grown to hundreds of MB generating a file or running an
earlier figure, reports at least that size through `wait4`, whatever the program it
became used. So a child whose memory is the figure is started by a fresh, small Python
process (a few MB) that forks and execs it, waits for it with `wait4` and writes its usage
to a file. Signals sent to the launcher (SIGINT, SIGTERM) are passed on to the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ._procs import REPO_ROOT

__all__ = ["Measured", "child_pid", "usage"]

_LAUNCHER = r"""
import json, os, signal, sys
out, args = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(args[0], args)
    finally:
        os._exit(127)
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda number, frame: os.kill(pid, number))
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as handle:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss,
               "cpu": usage.ru_utime + usage.ru_stime, "nvcsw": usage.ru_nvcsw}, handle)
"""


class Measured:
    """A child started through the launcher; `usage()` once it has exited."""

    def __init__(self, args: list[str], env: dict[str, str], out: Path, *,
                 stderr: int | None = subprocess.DEVNULL) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(out), *args],
                                     env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                     stderr=stderr)


def usage(measured: Measured) -> dict[str, float]:
    """The child's exit code, peak RSS (kB), CPU seconds and voluntary context switches."""
    measured.proc.wait()
    data: dict[str, float] = json.loads(measured.out.read_text())
    return data


def child_pid(launcher_pid: int) -> int | None:
    """The pid of the launcher's child, once forked (Linux /proc)."""
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text()
    except OSError:
        return None
    found = children.split()
    return int(found[0]) if found else None
