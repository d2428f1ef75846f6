"""The job's send path for stored bodies (`_sending.StoredBody`), over the wire.

A journaled body is the exact bytes `request_body` wrote for rows that passed their
checks; the job sends those bytes as they are (no re-reading into a `CancelRequest`). The
invariants of any cancel hold on this path too: the guard runs before each attempt and
may refuse it (nothing then leaves), the hooks see the cancel, and the outcome's
`request` still reads as the request those bytes are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from builders import request

from mirakl_cancel import MiraklConnectClient, RetryPolicy, StaticToken
from mirakl_cancel._observe.hooks import Call
from mirakl_cancel._sending import CancelOutcome, GuardRefused, StoredBody, send_one
from mirakl_cancel._serde import request_body


class Server:
    def __init__(self, *, first_posts_503: int = 0) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.first_posts_503 = first_posts_503

    async def cancel(self, req: web.Request) -> web.Response:
        self.bodies.append((req.match_info["order_id"], await req.read()))
        if len(self.bodies) <= self.first_posts_503:
            return web.json_response({"message": "busy"}, status=503)
        return web.json_response({"action_id": f"act-{len(self.bodies)}"}, status=202)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, MiraklConnectClient]]:
    server = Server(first_posts_503=1)
    app = web.Application()
    app.router.add_post("/v2/orders/{order_id}/cancel", server.cancel)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = MiraklConnectClient(
        auth=StaticToken("tok-stored"), base_url=f"http://127.0.0.1:{port}",
        retry=RetryPolicy(base_delay=0.01, max_delay=0.02))
    async with client:
        yield server, client
    await runner.cleanup()


async def test_the_stored_bytes_leave_as_they_are_after_the_guard_of_each_attempt(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    sent = request("O/1 é", lines=2)
    body = request_body(sent)
    guarded: list[int] = []

    async def guard() -> None:  # the job's durable SENDING mark
        guarded.append(len(server.bodies))  # nothing of this attempt has left yet

    outcome = await send_one(client, StoredBody(sent.order_id, body, 2), guard=guard)
    assert outcome.accepted is not None and outcome.accepted.action_id == "act-2"
    # 503 (not processed), then 202: two attempts, each after its guard, same bytes.
    assert guarded == [0, 1]
    assert server.bodies == [("O/1 é", body), ("O/1 é", body)]
    assert outcome.request == sent  # read back only when asked


async def test_a_refusing_guard_keeps_the_stored_bytes_home(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    sent = request("O2")

    async def refuse() -> None:
        raise OSError("the journal cannot record this send")

    with pytest.raises(GuardRefused) as refused:
        await send_one(client, StoredBody("O2", request_body(sent), 1), guard=refuse)
    assert isinstance(refused.value.__cause__, OSError)
    assert server.bodies == []


async def test_hooks_see_a_stored_cancel_and_its_lines(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    server.first_posts_503 = 0
    calls: list[Call] = []
    client.hooks.add(type("Seen", (), {"on_call_start": calls.append})())
    sent = request("O3", lines=3)
    outcome = await send_one(client, StoredBody("O3", request_body(sent), 3))
    assert outcome.ok and server.bodies == [("O3", request_body(sent))]
    assert [(c.method, c.order_id, c.lines) for c in calls] == [("POST", "O3", 3)]


def test_an_outcome_of_stored_bytes_reads_as_its_request() -> None:
    sent = request("O4", lines=2)
    stored = StoredBody("O4", request_body(sent), 2)
    outcome = CancelOutcome(stored)
    assert outcome.request == sent and outcome.request is outcome.request
    assert "O4" in repr(stored) and "cancelations" not in repr(stored)
