"""Servers in subprocesses: started, read for their address, always terminated."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import aiohttp

__all__ = ["REPO_ROOT", "ServerProcess", "fetch_json", "fixed_server", "simulator"]

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """A server child process that prints ``key=value`` lines once it listens.

    ``with ServerProcess([...], until="port") as server:`` starts it, waits (bounded)
    for the line whose key is ``until`` and exposes every ``key=value`` read so far in
    ``server.info``; leaving the block terminates it (then kills it if it lingers),
    also when the block raised.
    """

    def __init__(self, args: list[str], *, until: str, start_timeout: float = 30.0) -> None:
        self.args = args
        self.until = until
        self.start_timeout = start_timeout
        self.info: dict[str, str] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        # Lives as long as the child; closed in stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115

    def __enter__(self) -> ServerProcess:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, *self.args], cwd=REPO_ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr)
        try:
            self._read_info()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _read_info(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._proc.stdout, selectors.EVENT_READ)
            while self.until not in self.info:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise RuntimeError(f"{self.args[:2]} did not start: {self._error_tail()}")
                chunk = os.read(self._proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"{self.args[:2]} exited: {self._error_tail()}")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    key, sep, value = line.decode().strip().partition("=")
                    if sep:
                        self.info[key] = value

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not running")
        return self._proc.pid

    def cpu_seconds(self) -> float | None:
        """User + system CPU the child has used so far (Linux `/proc`; None elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, RuntimeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _error_tail(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()[-2000:].decode("utf-8", "replace") or "(no stderr)"

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL after 5 s) and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self._stderr.close()


def fixed_server(latency: float = 0.0, max_seconds: float = 900.0,
                 impl: str = "aiohttp") -> ServerProcess:
    """The fixed-answer server (``benchmarks/_fixed_server.py``) with ``latency`` seconds.

    ``impl`` is ``"aiohttp"`` (aiohttp.web) or ``"lean"`` (a bare ``asyncio.Protocol``
    server, several times cheaper per request); both give the same answers.
    """
    return ServerProcess(
        ["-m", "benchmarks._fixed_server", "--port", "0", "--latency", str(latency),
         "--impl", impl, "--max-seconds", str(max_seconds)], until="port")


def simulator(*options: str) -> ServerProcess:
    """``python -m mirakl_cancel.simulator --port 0 OPTIONS``, ready once it prints its token."""
    return ServerProcess(["-m", "mirakl_cancel.simulator", "--port", "0", *options],
                         until="stats_url")


async def fetch_json(method: str, url: str) -> object:
    """One out-of-band request (stats, reset): never part of a measurement."""
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        response.raise_for_status()
        return await response.json()
