"""The SQLite store behind the job: group commit off the event loop, order, failure.

Everything here is event-driven (gates and futures), never timed: a "slow flush" is a
writer held at a gate, and "does not stall" means other work completes while it is held.
"""

from __future__ import annotations

import asyncio
import csv
import io
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import serve

from mirakl_cancel import MiraklConnectClient, StaticToken
from mirakl_cancel._jobs.job import EXIT_OK, JobOptions, _open_job, _run_async
from mirakl_cancel._stores.sqlite import (
    Journal,
    JournalError,
    PlannedRequest,
    PlannedRow,
    RequestState,
    SqliteStore,
)
from mirakl_cancel.tracker import PollPolicy

PLAN = [PlannedRequest(f"O{i}#{i}", f"O{i}", (i,), '{"cancelations":[]}') for i in range(1, 41)]
ROWS = [PlannedRow(i, i + 1, f"O{i}", f"O{i}-1", None, 1) for i in range(1, 41)]


def new_journal(path: Path) -> Journal:
    journal = Journal.open(path)
    journal.create_job(input_path="/in.csv", input_sha256="abc", input_format="csv",
                       base_url="http://127.0.0.1:1", requests=PLAN, rows=ROWS)
    return journal


class GatedStore(SqliteStore):
    """A store whose durable commits wait at a gate after committing: a slow disk flush.

    `durable` collects, after each durable commit, the keys it made SENDING: what a
    server may check a POST against."""

    def __init__(self, journal: Journal, gate: threading.Event | None = None,
                 **kwargs: Any) -> None:
        self.gate = gate
        self.flushing = threading.Event()
        self.durable: set[str] = set()
        self.lock = threading.Lock()
        super().__init__(journal, **kwargs)

    def _run(self, batch: list[Any]) -> list[tuple[bool, Any]]:
        results = super()._run(batch)
        if any(op.durable for op in batch):
            self.flushing.set()
            if self.gate is not None:
                self.gate.wait(timeout=30)
            with self.lock:
                self.durable.update(op.args[0] for op, (ok, _) in zip(batch, results, strict=True)
                                    if ok and op.name == "mark_sending")
        return results


async def test_marks_leaving_together_share_one_flush(tmp_path: Path) -> None:
    journal = new_journal(tmp_path / "j.sqlite")
    gate = threading.Event()
    store = GatedStore(journal, gate)
    try:
        first = store.mark_sending(PLAN[0].key)
        await asyncio.get_running_loop().run_in_executor(None, store.flushing.wait, 30)
        # While that flush is held, 39 more requests leave: they queue up behind it...
        rest = [store.mark_sending(p.key) for p in PLAN[1:]]
        gate.set()
        await asyncio.gather(first, *rest)
        # ...and go to disk together, not one fsync each.
        assert store.durable_commits <= 3
        assert (await store.counts())[RequestState.SENDING] == len(PLAN)
    finally:
        gate.set()
        await store.aclose()
    assert journal.counts()[RequestState.SENDING] == len(PLAN)  # synchronous use again
    journal.close()


async def test_a_held_flush_stalls_neither_the_loop_nor_other_work(tmp_path: Path) -> None:
    """While the writer waits for a (very) slow flush, the event loop serves a whole HTTP
    exchange; the mark resolves only once the flush is done."""
    journal = new_journal(tmp_path / "j.sqlite")
    gate = threading.Event()
    store = GatedStore(journal, gate)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "status": "SUCCESS"})

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{id}", status)
    try:
        async with serve(app) as url:
            mark = asyncio.ensure_future(store.mark_sending(PLAN[0].key))
            await asyncio.get_running_loop().run_in_executor(None, store.flushing.wait, 30)
            async with MiraklConnectClient(auth=StaticToken("t"), base_url=url,
                                           min_poll_interval=0.0) as client:
                answer = await client.get_action_status("A1")
            assert answer.raw_status == "SUCCESS"
            assert not mark.done()  # still waiting for its flush: nothing else did
            gate.set()
            await mark
    finally:
        gate.set()
        await store.aclose()
    journal.close()


async def test_marks_apply_in_call_order_and_a_failed_batch_stops_sending(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = new_journal(tmp_path / "j.sqlite")
    store = SqliteStore(journal)
    try:
        k1, k2, k3 = (p.key for p in PLAN[:3])
        # Made in this order without awaiting in between: the writer keeps the order.
        marks = [store.mark_sending(k1), store.mark_accepted(k1, "A1"),
                 store.mark_done(k1, "SUCCEEDED", status="SUCCESS")]
        await asyncio.gather(*marks)
        assert (await store.request(k1)).state is RequestState.DONE
        # A refused transition fails its own caller only.
        with pytest.raises(JournalError, match="expected state SENDING"):
            await store.mark_accepted(k2, "A2")
        await store.mark_sending(k2)

        def broken(self: Journal, key: str, action_id: str, at: Any = None) -> None:
            raise OSError("disk I/O error")

        monkeypatch.setattr(Journal, "mark_accepted", broken)
        accepted = store.mark_accepted(k2, "A2")
        after = store.mark_sending(k3)  # queued behind the failing mark
        with pytest.raises(OSError, match="disk I/O"):
            await accepted
        with pytest.raises((OSError, JournalError)):
            await after
        monkeypatch.undo()
        with pytest.raises(JournalError, match="failed earlier"):
            await store.mark_sending(k3)  # and nothing is sent unguarded from now on
        assert (await store.request(k3)).state is RequestState.PENDING
        # Other marks still work: what is known is still recorded.
        await store.mark_uncertain(k2, ["answer lost"])
    finally:
        await store.aclose()
    journal.close()


async def test_lazy_poll_marks_are_flushed_at_close(tmp_path: Path) -> None:
    journal = new_journal(tmp_path / "j.sqlite")
    store = SqliteStore(journal)
    key = PLAN[0].key
    await store.mark_sending(key, at=100.0)
    await store.mark_accepted(key, "A1", at=101.0)
    await store.mark_poll_started(key, at=170.0)
    store.note_polled(key, at=171.0, status="PENDING")  # not awaited by anyone
    await store.aclose()
    request = journal.request(key)
    assert (request.poll_started_at, request.last_polled_at, request.status) == (
        170.0, 171.0, "PENDING")
    with pytest.raises(JournalError, match="closed"):
        store.note_polled(key)
    journal.close()


async def test_streamed_reads_come_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setattr("mirakl_cancel._stores.sqlite._CHUNK", 7)
    journal = new_journal(tmp_path / "j.sqlite")
    store = SqliteStore(journal)
    try:
        assert [r.key async for r in store.requests()] == [p.key for p in PLAN]
        assert [r.row_number async for r in store.rows()] == [r.row_number for r in ROWS]
        assert [r.key async for r in store.requests(orders={"O3", "O33"})] == ["O3#3", "O33#33"]
        assert {r.body async for r in store.requests(bodies=False)} == {""}
        job = await store.job()
        assert job is not None and job.input_sha256 == "abc"
    finally:
        await store.aclose()
    journal.close()


# --- the invariants, over the wire, with a slow flush ------------------------------------

def _write_input(path: Path, orders: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "order_line_id", "quantity", "reason", "price_amount",
                         "price_currency", "shipping_amount"])
        for i in range(orders):
            writer.writerow([f"O{i}", f"O{i}-1", 1, "OUT_OF_STOCK", "1.50", "EUR", "0"])


@pytest.mark.parametrize("mark_ahead", [False, True], ids=["at-the-post", "ahead"])
async def test_no_post_leaves_before_its_mark_is_durable_and_no_202_is_forgotten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mark_ahead: bool) -> None:
    stores: list[GatedStore] = []

    def make_store(journal: Journal) -> GatedStore:
        store = GatedStore(journal, flush_delay=0.005)  # a slow disk: 5 ms per flush
        stores.append(store)
        return store

    monkeypatch.setattr("mirakl_cancel._jobs.job.SqliteStore", make_store)
    unguarded: list[str] = []
    issued: dict[str, str] = {}

    async def cancel(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        store = stores[0]
        with store.lock:
            if f"{order_id}#{int(order_id[1:]) + 1}" not in store.durable:
                unguarded.append(order_id)
        action_id = str(uuid.uuid4())
        issued[action_id] = order_id
        return web.json_response({"action_id": action_id}, status=202)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "status": "SUCCESS"})

    app = web.Application()
    app.router.add_post("/v2/orders/{order_id}/cancel", cancel)
    app.router.add_get("/v2/orders/actions/{id}", status)
    source = tmp_path / "in.csv"
    _write_input(source, 120)
    async with serve(app) as url:
        options = JobOptions(input_path=source, base_url=url, concurrency=8, quiet=True,
                             policy=PollPolicy(min_interval=0.0, interval=0.01,
                                               first_delay=0.0), mark_ahead=mark_ahead)
        out, err = io.StringIO(), io.StringIO()
        journal, resumed, code = _open_job(options, err, out)
        assert journal is not None, err.getvalue()
        try:
            code = await _run_async(options, StaticToken("t"), journal, resumed, out, err,
                                    None)
        finally:
            requests = {r.order_id: r for r in journal.requests()}
            journal.close()
    assert code == EXIT_OK, err.getvalue()
    assert unguarded == []
    assert len(issued) == 120
    assert {r.action_id: r.order_id for r in requests.values()} == issued
    assert all(r.state is RequestState.DONE and r.outcome == "SUCCEEDED"
               for r in requests.values())
    # Group commit: far fewer flushes than the 240 guarding marks.
    assert stores[0].durable_commits < 240


async def test_marks_queued_in_one_turn_of_the_loop_reach_the_writer_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer is woken once per hand-off, not once per mark: every wake-up of its
    thread is a handover of the GIL that the event loop waits for."""
    journal = new_journal(tmp_path / "j.sqlite")
    store = SqliteStore(journal)
    try:
        await store.flush()
        before = store.commits
        await asyncio.gather(*(store.mark_sending(p.key) for p in PLAN))
        assert store.commits == before + 1
        # A mark nobody waits for is held apart (not one more statement in each batch)...
        store.note_polled(PLAN[0].key, at=5.0)
        assert store.commits == before + 1
        await store.mark_accepted(PLAN[1].key, "A2")
        assert store.commits == before + 2
        assert len(store._lazy) == 1
        # A read takes the held marks along: it sees them.
        store.note_polled(PLAN[1].key, at=7.0, status="PENDING")
        assert (await store.request(PLAN[1].key)).last_polled_at == 7.0
        assert store._lazy == []
        # ...and goes with the others held after a short delay.
        handed = asyncio.Event()
        hand_off = store._hand_off

        def watched() -> None:
            hand_off()
            handed.set()

        monkeypatch.setattr(store, "_hand_off", watched)
        store.note_polled(PLAN[2].key, at=6.0)
        await handed.wait()
        assert store._pending == store._lazy == []
    finally:
        await store.aclose()
    assert journal.request(PLAN[1].key).state is RequestState.ACCEPTED
    journal.close()


def test_close_after_the_loop_stopped_writes_what_was_queued(tmp_path: Path) -> None:
    journal = new_journal(tmp_path / "j.sqlite")

    async def run() -> SqliteStore:
        store = SqliteStore(journal)
        await store.mark_sending(PLAN[0].key)
        await store.mark_accepted(PLAN[0].key, "A1", at=101.0)
        store.note_polled(PLAN[0].key, at=171.0, status="PENDING")  # on the loop's side
        return store

    asyncio.run(run()).close()
    assert journal.request(PLAN[0].key).last_polled_at == 171.0
    journal.close()


async def test_marks_of_one_kind_in_a_batch_are_one_statement(tmp_path: Path) -> None:
    """Each statement the writer runs releases the GIL, which the event loop may take:
    the writer then waits to get it back. The marks of one kind share one statement."""
    journal = new_journal(tmp_path / "j.sqlite")
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    store = SqliteStore(journal)
    try:
        await asyncio.gather(*(store.mark_sending(p.key, at=float(i))
                               for i, p in enumerate(PLAN[:20])))
        updates = [s for s in statements if s.startswith("UPDATE")]
        assert len(updates) == 1
        await asyncio.gather(*(store.mark_accepted(p.key, f"A{i}", at=100.5 + i)
                               for i, p in enumerate(PLAN[:20])),
                             *(store.mark_sending(p.key, at=7.25) for p in PLAN[20:23]))
        assert len([s for s in statements if s.startswith("UPDATE")]) == 3
    finally:
        await store.aclose()
    journal._db.set_trace_callback(None)
    requests = {r.key: r for r in journal.requests()}
    journal.close()
    for i, p in enumerate(PLAN[:20]):  # each request got its own parameters, exactly
        assert (requests[p.key].state, requests[p.key].action_id) == (
            RequestState.ACCEPTED, f"A{i}")
        assert (requests[p.key].sent_at, requests[p.key].accepted_at) == (float(i), 100.5 + i)
    assert all(requests[p.key].sent_at == 7.25 for p in PLAN[20:23])
    assert all(requests[p.key].state is RequestState.PENDING for p in PLAN[23:])


@pytest.mark.parametrize("grouped", [True, False])
async def test_a_refused_mark_among_others_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grouped: bool) -> None:
    monkeypatch.setattr("mirakl_cancel._stores.sqlite._GROUPED", grouped)
    journal = new_journal(tmp_path / "j.sqlite")
    store = SqliteStore(journal)
    try:
        k1, k2, k3, k4 = (p.key for p in PLAN[:4])
        await store.mark_sending(k1)
        # One batch: k2 is PENDING, so its ACCEPTED mark is refused; the rest applies,
        # the grouped statement is undone and the marks are run one by one.
        results = await asyncio.gather(
            store.mark_accepted(k1, "A1"), store.mark_accepted(k2, "A2"),
            store.mark_sending(k3), store.mark_sending(k4), store.mark_done(k1, "SUCCEEDED"),
            return_exceptions=True)
        assert isinstance(results[1], JournalError)
        assert [r for i, r in enumerate(results) if i != 1] == [None] * 4
        states = [(await store.request(k)).state for k in (k1, k2, k3, k4)]
        assert states == [RequestState.DONE, RequestState.PENDING, RequestState.SENDING,
                          RequestState.SENDING]
        assert (await store.request(k1)).action_id == "A1"
    finally:
        await store.aclose()
    journal.close()


async def test_the_marks_of_one_request_keep_their_order_in_a_grouped_batch(
        tmp_path: Path) -> None:
    journal = new_journal(tmp_path / "j.sqlite")
    statements: list[str] = []
    store = SqliteStore(journal)
    try:
        k1, k2 = PLAN[0].key, PLAN[1].key
        await store.flush()
        journal._db.set_trace_callback(statements.append)
        # One batch: SENDING (k2, k1), back to PENDING (k1), SENDING again (k1): the last
        # mark's kind applies before the one k1 had just got, so what is held goes first.
        await asyncio.gather(store.mark_sending(k2), store.mark_sending(k1),
                             store.mark_not_sent(k1), store.mark_sending(k1, at=9.0),
                             store.mark_done(k2, "SUCCEEDED"))
        journal._db.set_trace_callback(None)
        assert len([s for s in statements if s.startswith("UPDATE")]) == 4
        first, second = await store.request(k1), await store.request(k2)
        assert (first.state, first.attempts, first.sent_at) == (RequestState.SENDING, 1, 9.0)
        assert (second.state, second.outcome) == (RequestState.DONE, "SUCCEEDED")
    finally:
        await store.aclose()
    journal.close()

