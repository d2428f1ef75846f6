"""Two cancels answered with one action id (issue 11), over the wire.

A small hostile aiohttp server on 127.0.0.1 answers every cancel 202 with the same
`action_id`, and every status read SUCCESS. The action's status cannot tell whether
the second cancel was applied: it must end UNCERTAIN (naming the other request), one
result per request, whether the first action is still tracked or already finished,
and nothing may wait forever (the CLI job used to).
"""

from __future__ import annotations

import asyncio
import csv
import json
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from builders import request as cancel_request
from cli_support import FIELDS, cli, poll_flags

from mirakl_cancel import (
    CancelRequest,
    MiraklConnectClient,
    Outcome,
    PollPolicy,
    StaticToken,
    cancel_and_track,
)

TOKEN = "tok-DUPLICATE-123"
SAME = "act-same"
FAST = PollPolicy(min_interval=0.01, interval=0.01, first_delay=0.0)
#: Bounds a hang (it would otherwise block the suite); it measures nothing.
HANG_GUARD = 120.0


def same_action_app(posts: list[str], *, after_a_read: bool = False) -> web.Application:
    """Every cancel: 202 with one action id; every status read: SUCCESS.

    `after_a_read`: the second cancel is answered only once the action was read (so its
    tracking by the first cancel has ended, or is about to)."""
    read = asyncio.Event()

    async def cancel(request: web.Request) -> web.Response:
        posts.append(request.match_info["order_id"])
        if after_a_read and len(posts) > 1:
            await read.wait()
            await asyncio.sleep(0.2)  # orders the events; asserted on by nothing
        return web.json_response({"action_id": SAME}, status=202)

    async def status(request: web.Request) -> web.Response:
        read.set()
        return web.json_response({"id": request.match_info["action_id"], "status": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/v2/orders/{order_id}/cancel", cancel)
    app.router.add_get("/v2/orders/actions/{action_id}", status)
    return app


class ThreadedApp:
    """An aiohttp app served on 127.0.0.1 from its own thread (for a CLI subprocess)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> ThreadedApp:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)


@pytest.fixture
def served() -> Iterator[tuple[list[str], str]]:
    posts: list[str] = []
    with ThreadedApp(same_action_app(posts)) as server:
        yield posts, server.url


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]


def client(url: str) -> MiraklConnectClient:
    return MiraklConnectClient(auth=StaticToken(TOKEN), base_url=url, min_poll_interval=0.01)


async def test_library_second_cancel_while_the_first_is_tracked_is_uncertain() -> None:
    posts: list[str] = []
    runner, url = await serve(same_action_app(posts))
    try:
        async with client(url) as c:
            results = await asyncio.wait_for(_collect(cancel_and_track(
                c, [cancel_request("o1"), cancel_request("o2")], FAST, concurrency=2)),
                HANG_GUARD)
    finally:
        await runner.cleanup()
    assert sorted(r.order_id for r in results) == ["o1", "o2"]
    [succeeded] = [r for r in results if r.outcome is Outcome.SUCCEEDED]
    [uncertain] = [r for r in results if r.outcome is Outcome.UNCERTAIN]
    assert SAME in uncertain.describe() and f"order {succeeded.order_id}" in uncertain.describe()


async def test_library_second_cancel_after_the_first_action_finished_is_uncertain() -> None:
    """The first action's tracking has ENDED (its result yielded) before the second
    cancel is even taken from the source: the run must still know the id is taken."""
    posts: list[str] = []
    runner, url = await serve(same_action_app(posts))
    first_seen = asyncio.Event()

    async def source() -> AsyncIterator[CancelRequest]:
        yield cancel_request("o1")
        await first_seen.wait()
        yield cancel_request("o2")

    results = []
    try:
        async with client(url) as c:
            async def run() -> None:
                async for result in cancel_and_track(c, source(), FAST, concurrency=1):
                    results.append(result)
                    first_seen.set()

            await asyncio.wait_for(run(), HANG_GUARD)
    finally:
        await runner.cleanup()
    assert [(r.order_id, r.outcome) for r in results] == [
        ("o1", Outcome.SUCCEEDED), ("o2", Outcome.UNCERTAIN)]
    assert results[1].action_id == SAME
    assert "order o1" in results[1].describe()
    assert posts == ["o1", "o2"]  # and nothing was sent again


async def _collect(results: AsyncIterator[object]) -> list:  # type: ignore[type-arg]
    return [r async for r in results]


def _write_input(path: Path, orders: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for order in orders:
            writer.writerow({"order_id": order, "order_line_id": f"{order}-1", "product_id": "",
                             "quantity": 1, "reason": "OUT_OF_STOCK", "price_amount": "9.99",
                             "price_currency": "EUR", "shipping_amount": "0",
                             "shipping_currency": "EUR", "taxes": "", "shipping_taxes": ""})


@pytest.mark.parametrize("after_a_read", [False, True], ids=["tracked", "finished"])
def test_cli_run_records_the_second_cancel_uncertain_and_ends(
        tmp_path: Path, after_a_read: bool) -> None:
    posts: list[str] = []
    source = tmp_path / "lines.csv"
    report = tmp_path / "report.jsonl"
    _write_input(source, ["O1", "O2"])
    with ThreadedApp(same_action_app(posts, after_a_read=after_a_read)) as server:
        env = {"MIRAKL_CONNECT_TOKEN": TOKEN, "PATH": "/usr/bin:/bin",
               "MIRAKL_CANCEL_CACHE_DIR": str(tmp_path / "cache"),
               "XDG_CACHE_HOME": str(tmp_path / "cache")}
        args = ["run", str(source), "--base-url", server.url, "--report", str(report),
                "--concurrency", "2", *poll_flags(0.0005)]
        done = cli(*args, env=env, timeout=HANG_GUARD)
        again = cli(*args, env=env, timeout=HANG_GUARD)  # a resume: nothing to send
    assert done.returncode == 1, done.stderr  # not every row SUCCEEDED
    rows = {row["order_id"]: row for row in map(json.loads, report.read_text().splitlines())}
    outcomes = sorted(row["outcome"] for row in rows.values())
    assert outcomes == ["SUCCEEDED", "UNCERTAIN"], done.stdout
    [first] = [row for row in rows.values() if row["outcome"] == "SUCCEEDED"]
    [second] = [row for row in rows.values() if row["outcome"] == "UNCERTAIN"]
    [reason] = second["errors"]
    assert SAME in reason and f"request {first['request']}" in reason
    assert first["action_id"] == SAME
    # The second's action id is never journaled as its own: a resume cannot track it.
    assert second["action_id"] is None
    assert again.returncode == 1, again.stderr
    assert sorted(posts) == ["O1", "O2"]  # the resume sent nothing
    assert "UNCERTAIN" in again.stdout
