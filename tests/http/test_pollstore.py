"""The polling ceiling across processes: last reads kept on disk, safe under clock steps.

Real processes against a loopback server: a second `get_action_status` in another
process waits for the first one's read; a refused connection leaves nothing on disk.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from conftest import serve

from mirakl_cancel import MiraklConnectClient, StaticToken
from mirakl_cancel._http import pollstore as _pollstore
from mirakl_cancel._http.pollstore import PollStore, cache_dir

READ = """
import asyncio, sys, time
from mirakl_cancel import MiraklConnectClient, StaticToken
async def main():
    async with MiraklConnectClient(auth=StaticToken("t"), base_url=sys.argv[1],
                                   min_poll_interval=float(sys.argv[2])) as c:
        print(f"{c.poll_ready_in('a1'):.3f}", flush=True)
        if sys.argv[3] == "read":
            await c.get_action_status("a1")
asyncio.run(main())
"""


def status_app(reads: list[float]) -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        reads.append(time.monotonic())
        return web.json_response({"id": "a1", "status": "PENDING"})

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{id}", handler)
    return app


async def run_reader(url: str, interval: float, mode: str = "read") -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", READ, url, str(interval), mode, stdout=subprocess.PIPE,
        env=dict(os.environ))
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode().strip()


async def test_two_processes_keep_the_ceiling_between_them() -> None:
    reads: list[float] = []
    async with serve(status_app(reads)) as url:
        assert await run_reader(url, 60.0) == "0.000"
        # Another process knows of the first one's read (however slow it was to start).
        assert 0.0 < float(await run_reader(url, 60.0, "peek")) <= 60.0
        # And one with a short interval (loopback) waits for it when it reads.
        await run_reader(url, 0.5)
        await run_reader(url, 0.5)
    assert len(reads) == 3
    assert reads[2] - reads[1] >= 0.5


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("MIRAKL_CANCEL_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("MIRAKL_CANCEL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mirakl-cancel"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored (XDG spec)
    assert cache_dir() == Path.home() / ".cache" / "mirakl-cancel"


def test_a_wall_clock_step_forward_does_not_shorten_the_interval(tmp_path: Path) -> None:
    store = PollStore(tmp_path / "s.sqlite3")
    store.record("scope", "a1", 0.0, 1000.0, 5000.0)  # read at mono 1000 / wall 5000
    # 10 s later on the monotonic clock, but the wall clock jumped an hour ahead.
    wait, last, _ = store.try_claim("scope", "a1", 60.0, 1010.0, 5000.0 + 3610.0)
    assert last == 1000.0 and wait == pytest.approx(50.0)
    store.close()


def test_a_read_from_another_boot_uses_the_wall_clock_and_a_future_is_now(
        tmp_path: Path) -> None:
    store = PollStore(tmp_path / "s.sqlite3")
    store._db.execute("INSERT INTO reads (scope, key, wall, boot, mono) "
                      "VALUES ('scope', 'past', 4990.0, 'other-boot', 1.0)")
    store._db.execute("INSERT INTO reads (scope, key, wall, boot, mono) "
                      "VALUES ('scope', 'future', 9e9, 'other-boot', 1.0)")
    loaded = store.load("scope", 100.0, 5000.0)
    assert loaded["past"] == pytest.approx(90.0)
    assert loaded["future"] == 100.0  # "just read": a full interval, never more
    wait, _, _ = store.try_claim("scope", "future", 60.0, 100.0, 5000.0)
    assert wait == pytest.approx(60.0)
    store.close()


def test_claims_are_exclusive_and_releasable(tmp_path: Path) -> None:
    store = PollStore(tmp_path / "s.sqlite3")
    other = PollStore(tmp_path / "s.sqlite3")  # another process, as far as SQLite knows
    wait, _, previous = store.try_claim("scope", "a1", 60.0, 100.0, 5000.0)
    assert wait == 0.0 and previous is None
    assert other.try_claim("scope", "a1", 60.0, 100.5, 5000.5)[0] == pytest.approx(59.5)
    store.release("scope", "a1", (5000.0, 100.0), previous)  # never sent: not a read
    assert other.try_claim("scope", "a1", 60.0, 101.0, 5001.0)[0] == 0.0
    store.close()
    other.close()


def test_old_rows_are_pruned(tmp_path: Path) -> None:
    store = PollStore(tmp_path / "s.sqlite3")
    for i in range(1030):  # one read every 10 s: a prune runs every 512 writes
        store.record("scope", f"a{i}", 0.0, 10.0 * i, 5000.0 + 10.0 * i)
    rows = store._db.execute("SELECT count(*) FROM reads").fetchone()[0]
    assert rows < 200  # only the last RETENTION (600 s) or so are left
    assert store.load("scope", 10_300.0, 15_300.0).keys() >= {"a1029", "a1000"}
    store.close()


async def test_an_unusable_cache_dir_falls_back_to_memory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MIRAKL_CANCEL_CACHE_DIR", str(blocker))
    assert _pollstore.default_store() is None
    assert "within this process only" in caplog.text
    c = MiraklConnectClient(auth=StaticToken("t"), base_url="http://127.0.0.1:9")
    c.record_poll("a1")
    assert c.poll_ready_in("a1") > 0
    await c.close()


FLUSHES = """
import sys, time
from pathlib import Path
from mirakl_cancel._http.pollstore import PollStore
store = PollStore(Path(sys.argv[1]))
for i in range(3000):  # a few checkpoints' worth of log
    mono, wall = time.monotonic(), time.time()
    store.try_claim("s", f"a{i % 500}", 0.0, mono, wall, hold=1.0)
    store.finish("s", f"a{i % 500}", (wall + 1.0, mono + 1.0), 0.0, time.monotonic(),
                 time.time())
store.close()
"""


def test_the_poll_state_is_never_flushed(tmp_path: Path) -> None:
    """Its claims run on the event loop: a flush there (a checkpoint's, 2-3 per ~1,000
    claims) would hold up every request in flight on a slow disk. Counted by the
    benchmarks' LD_PRELOAD shim around fsync/fdatasync, in a process of its own."""
    slowdisk = pytest.importorskip("benchmarks._slowdisk")
    if not slowdisk.SlowDisk.available():
        pytest.skip("no C compiler for the flush-counting shim")
    counts = tmp_path / "flushes"
    with slowdisk.SlowDisk() as disk:
        env = {**os.environ, **disk.env(0.0, counts)}
        subprocess.run([sys.executable, "-c", FLUSHES, str(tmp_path / "poll-state.sqlite3")],
                       env=env, check=True, timeout=120)
    assert int(counts.read_text()) == 0
    wal = tmp_path / "poll-state.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size < 8 * 1024 * 1024  # still checkpointed


def test_a_damaged_poll_state_is_set_aside_for_a_new_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = cache_dir() / _pollstore.FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database, " * 512)  # what a power cut mid-checkpoint may leave
    path.with_name(path.name + "-wal").write_bytes(b"a stale log")
    store = _pollstore.default_store()
    assert store is not None
    assert "damaged" in caplog.text and "within this process only" not in caplog.text
    assert path.with_name(path.name + ".corrupt").read_bytes().startswith(b"not a database")
    # Its log is gone with it (set aside, or removed by SQLite when it gave up on the
    # file): never replayed into the new one.
    wal = path.with_name(path.name + "-wal")
    assert not wal.exists() or b"a stale log" not in wal.read_bytes()
    mono, wall = time.monotonic(), time.time()
    assert store.try_claim("s", "a1", 60.0, mono, wall)[0] == 0.0  # the new one works
    assert store.try_claim("s", "a1", 60.0, mono, wall)[0] > 0


def test_a_locked_or_unreachable_poll_state_is_not_taken_for_damage(
        caplog: pytest.LogCaptureFixture) -> None:
    path = cache_dir() / _pollstore.FILE_NAME
    path.mkdir(parents=True)  # cannot be opened as a file: OperationalError, not damage
    assert _pollstore.default_store() is None
    assert "within this process only" in caplog.text and "damaged" not in caplog.text
    assert path.is_dir() and not path.with_name(path.name + ".corrupt").exists()
