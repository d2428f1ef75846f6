"""Client guards over the wire: awaited before each cancel attempt and around each status
read, and, unlike hooks, able to refuse by raising (nothing then reaches the server)."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from builders import request

from mirakl_cancel import (
    ActionStatus,
    MiraklConnectClient,
    RetryPolicy,
    SendAttempt,
    StaticToken,
)


class Server:
    def __init__(self, *, first_posts_503: int = 0) -> None:
        self.posts: list[str] = []
        self.reads: list[str] = []
        self.first_posts_503 = first_posts_503

    def app(self) -> web.Application:
        async def cancel(req: web.Request) -> web.Response:
            self.posts.append(req.match_info["order_id"])
            if len(self.posts) <= self.first_posts_503:
                return web.json_response({"message": "busy"}, status=503)
            return web.json_response({"action_id": f"act-{len(self.posts)}"}, status=202)

        async def status(req: web.Request) -> web.Response:
            self.reads.append(req.match_info["action_id"])
            return web.json_response({"id": req.match_info["action_id"], "status": "SUCCESS"})

        app = web.Application()
        app.router.add_post("/v2/orders/{order_id}/cancel", cancel)
        app.router.add_get("/v2/orders/actions/{action_id}", status)
        return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, MiraklConnectClient]]:
    server = Server(first_posts_503=1)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = MiraklConnectClient(
        auth=StaticToken("tok-guards"), base_url=f"http://127.0.0.1:{port}",
        min_poll_interval=0.01, retry=RetryPolicy(base_delay=0.01, max_delay=0.02))
    async with client:
        yield server, client
    await runner.cleanup()


class Refused(Exception):
    pass


async def test_a_send_guard_sees_every_attempt_and_may_refuse_one(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    attempts: list[SendAttempt] = []

    async def journal(attempt: SendAttempt) -> None:
        attempts.append(attempt)

    remove = client.guards.before_send(journal)
    accepted = await client.cancel(request("O1"))  # 503 (not processed), then 202
    assert accepted.action_id == "act-2"
    assert [(a.order_id, a.number) for a in attempts] == [("O1", 1), ("O1", 2)]
    remove()

    def refuse(attempt: SendAttempt) -> None:
        raise Refused("the journal cannot record this send")

    client.guards.before_send(refuse)
    with pytest.raises(Refused):  # the guard's own exception, as it is
        await client.cancel(request("O2"))
    assert server.posts == ["O1", "O1"]  # nothing of O2 left


async def test_a_scoped_guard_guards_only_the_cancels_of_its_block(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    seen: list[str] = []

    async def mark(attempt: SendAttempt) -> None:
        seen.append(attempt.order_id)

    with client.guards.sending(mark):
        await client.cancel(request("O1"))
    await client.cancel(request("O2"))
    assert seen == ["O1", "O1"]  # both attempts of O1; none of O2
    assert server.posts == ["O1", "O1", "O2"]


async def test_read_guards_bracket_each_read_and_may_refuse_it(
        served: tuple[Server, MiraklConnectClient]) -> None:
    server, client = served
    events: list[tuple[str, str, str | None]] = []

    async def before(action_id: str) -> None:
        if action_id == "act-refused":
            raise Refused("no read of this one")
        events.append(("before", action_id, None))

    def after(action_id: str, status: ActionStatus | None) -> None:
        events.append(("after", action_id, status.raw_status if status else None))

    client.guards.before_read(before)
    client.guards.after_read(after)
    await client.get_action_status("act-1")
    with pytest.raises(Refused):
        await client.get_action_status("act-refused")
    assert events == [("before", "act-1", None), ("after", "act-1", "SUCCESS")]
    assert server.reads == ["act-1"]


async def test_on_send_still_works_for_one_release_with_a_deprecation_warning(
        served: tuple[Server, MiraklConnectClient]) -> None:
    _, client = served
    calls: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await client.cancel(request("O1"), on_send=lambda: calls.append("sent"))
    assert calls == ["sent", "sent"]  # before each attempt (503, then 202)
    assert any(issubclass(w.category, DeprecationWarning) and "guards" in str(w.message)
               for w in caught)
