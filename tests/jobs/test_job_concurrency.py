"""`--concurrency N` for the file job: N cancels and N status reads in flight at most.

The two kinds do not share N slots: a cancel holds its slot while its SENDING mark is
flushed (the mark comes after every wait), so on a slow disk the flushes would otherwise
hold up the status reads, and reads falling due together would hold up the sends. Tested
against a real server on 127.0.0.1 that counts what it has in flight.
"""

from __future__ import annotations

import asyncio
import csv
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from mirakl_cancel import StaticToken
from mirakl_cancel._jobs.job import EXIT_OK, JobOptions, run_job
from mirakl_cancel._stores.sqlite import Journal, RequestState
from mirakl_cancel.tracker import PollPolicy

DELAY = 0.03  # seconds each answer takes: requests overlap


class _Counting:
    """A Mirakl stand-in that records the most cancels, reads and requests in flight."""

    def __init__(self) -> None:
        self.in_flight = {"cancel": 0, "read": 0}
        self.most = {"cancel": 0, "read": 0, "total": 0}
        self.cancels = 0

    async def _counted(self, kind: str) -> None:
        self.in_flight[kind] += 1
        self.most[kind] = max(self.most[kind], self.in_flight[kind])
        self.most["total"] = max(self.most["total"], sum(self.in_flight.values()))
        try:
            await asyncio.sleep(DELAY)
        finally:
            self.in_flight[kind] -= 1

    async def cancel(self, request: web.Request) -> web.Response:
        await self._counted("cancel")
        self.cancels += 1
        action = f"A-{request.match_info['order_id']}"
        return web.json_response({"action_id": action, "tracking_id": action}, status=202)

    async def read(self, request: web.Request) -> web.Response:
        await self._counted("read")
        return web.json_response({
            "id": request.match_info["action_id"], "status": "SUCCESS",
            "created_at": "2025-01-01T00:00:00.000Z", "updated_at": "2025-01-01T00:01:00.000Z"})


@pytest.fixture
def server() -> Iterator[tuple[str, _Counting]]:
    counting = _Counting()
    app = web.Application()
    app.router.add_post("/v2/orders/{order_id}/cancel", counting.cancel)
    app.router.add_get("/v2/orders/actions/{action_id}", counting.read)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", counting
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _write_input(path: Path, orders: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "order_line_id", "quantity", "reason", "price_amount",
                         "price_currency", "shipping_amount"])
        for n in range(orders):
            writer.writerow([f"O{n:04d}", f"O{n:04d}-1", 1, "OUT_OF_STOCK", "10.00", "EUR",
                             "0"])


def test_n_cancels_and_n_reads_in_flight_at_most(
        tmp_path: Path, server: tuple[str, _Counting]) -> None:
    base_url, counting = server
    source = tmp_path / "lines.csv"
    _write_input(source, 40)
    interval = 0.05
    options = JobOptions(input_path=source, base_url=base_url, concurrency=3,
                         policy=PollPolicy(min_interval=interval, interval=interval,
                                           first_delay=interval), quiet=True)
    codes: list[int] = []
    err = io.StringIO()
    thread = threading.Thread(target=lambda: codes.append(
        run_job(options, StaticToken("t"), out=io.StringIO(), err=err)), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the job hung"
    assert codes == [EXIT_OK], err.getvalue()
    assert counting.cancels == 40
    # Each kind has its own N; together never more than 2N.
    assert counting.most["cancel"] <= 3
    assert counting.most["read"] <= 3
    assert counting.most["total"] <= 6
    # The senders used their N (40 cancels of 30 ms at 3 at once: they overlap), and the
    # reads did not wait for their slots: at some point both kinds were in flight beyond N.
    assert counting.most["cancel"] == 3
    assert counting.most["total"] > 3
    with Journal.open(tmp_path / "lines.csv.journal.sqlite") as journal:
        assert journal.counts()[RequestState.DONE] == 40
