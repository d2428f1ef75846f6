"""The simulator's API over real HTTP: auth, cancel, action lifecycle, polling ceiling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from yarl import URL

from mirakl_cancel.simulator import SimLine, SimOrder, Simulator, SimulatorConfig

pytestmark = pytest.mark.asyncio

# 1/1000 of real time: the 60 s ceiling lasts 60 ms, processing 20 ms.
CONFIG = SimulatorConfig(time_scale=0.001, processing_delay=(20.0, 20.0))
# Real seconds after which an action is processed *and* may be polled again.
DONE = 0.065
WEIRD_ID = "A/B ?#é"


def cancelation(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "order_line_id": "O1-1",
        "quantity": 1,
        "reason": "OUT_OF_STOCK",
        "price": {"amount": Decimal("19.99"), "currency": "EUR"},
        "shipping_price": {"amount": 0, "currency": "EUR"},
    }
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not None}


def order(order_id: str = "O1", status: str = "AWAITING_SHIPMENT") -> SimOrder:
    return SimOrder(
        id=order_id,
        status=status,
        lines=[
            SimLine(
                id=f"{order_id}-1",
                product_id="P1",
                quantity=3,
                price=Decimal("19.99"),
                shipping_price=Decimal("4.50"),
            ),
            SimLine(id=f"{order_id}-2", product_id="P2", quantity=1, price=Decimal("5")),
        ],
    )


def dumps(body: Any) -> str:
    """JSON with Decimal written as numbers, like a careful client would send."""
    import json

    class Enc(json.JSONEncoder):
        def default(self, o: Any) -> Any:
            if isinstance(o, Decimal):
                return float(o)
            return super().default(o)

    return json.dumps(body, cls=Enc)


class Api:
    """A thin raw-HTTP helper: the project client is deliberately not used here."""

    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.auth = {"Authorization": f"Bearer {sim.token}"}

    def url(self, path: str) -> URL:
        return URL(self.sim.base_url + path, encoded=True)

    async def cancel(
        self, order_id: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        path = f"/v2/orders/{quote(order_id, safe='')}/cancel"
        data = body if isinstance(body, (str, bytes)) else dumps(body)
        hdrs = {"Content-Type": "application/json", **(self.auth if headers is None else headers)}
        async with self.session.post(self.url(path), data=data, headers=hdrs) as resp:
            return resp.status, await resp.json(content_type=None), resp

    async def status(
        self, action_id: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        path = f"/v2/orders/actions/{action_id}"
        hdrs = self.auth if headers is None else headers
        async with self.session.get(self.url(path), headers=hdrs) as resp:
            return resp.status, await resp.json(content_type=None), resp

    async def submit(self, order_id: str = "O1", **overrides: Any) -> str:
        status, body, _ = await self.cancel(order_id, {"cancelations": [cancelation(**overrides)]})
        assert status == 202, body
        return str(body["action_id"])

    async def final(self, action_id: str) -> dict[str, Any]:
        await asyncio.sleep(DONE)
        status, body, _ = await self.status(action_id)
        assert status == 200, body
        return dict(body)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(CONFIG) as simulator:
        simulator.add_order(order("O1"))
        simulator.add_order(order("SHIPPED-1", status="SHIPPED"))
        simulator.add_order(order(WEIRD_ID))
        yield simulator


@pytest_asyncio.fixture
async def api(sim: Simulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(sim, session)


# -- OAuth and bearer checks ---------------------------------------------------


async def test_token_issue_and_use(api: Api, sim: Simulator) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": "sim-client",
        "client_secret": "sim-secret",
    }
    async with api.session.post(sim.token_url, data=form) as resp:
        assert resp.status == 200
        token = await resp.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == pytest.approx(3.599)  # scaled, real seconds
    status, _, _ = await api.status("nope", {"Authorization": f"Bearer {token['access_token']}"})
    assert status == 404  # authenticated, the action just does not exist


async def test_token_accepts_http_basic(api: Api, sim: Simulator) -> None:
    headers = {"Authorization": aiohttp.encode_basic_auth("sim-client", "sim-secret")}
    form = {"grant_type": "client_credentials"}
    async with api.session.post(sim.token_url, data=form, headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_id": "sim-client", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "other", "client_secret": "sim-secret"}, 401, "invalid_client"),
        ({}, 401, "invalid_client"),
    ],
)
async def test_token_wrong_credentials(
    api: Api, sim: Simulator, form: dict[str, str], status: int, error: str
) -> None:
    data = {"grant_type": "client_credentials", **form}
    async with api.session.post(sim.token_url, data=data) as resp:
        assert resp.status == status
        assert (await resp.json())["error"] == error


async def test_token_wrong_grant_type(api: Api, sim: Simulator) -> None:
    data = {"grant_type": "password", "client_id": "sim-client", "client_secret": "sim-secret"}
    async with api.session.post(sim.token_url, data=data) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "unsupported_grant_type"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["missing", "unknown", "wrong-scheme"],
)
async def test_401_without_valid_token(api: Api, headers: dict[str, str]) -> None:
    status, body, resp = await api.cancel("O1", {"cancelations": [cancelation()]}, headers)
    assert status == 401
    assert body["code"] == "UNAUTHORIZED"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = await api.status("x", headers)
    assert status == 401
    assert not api.sim.actions  # nothing was processed


async def test_expired_token(api: Api, sim: Simulator) -> None:
    short = sim.issue_token(ttl=10)  # 10 API seconds = 10 ms here
    await asyncio.sleep(0.015)
    status, body, _ = await api.status("x", {"Authorization": f"Bearer {short}"})
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert "expired" in body["message"]


async def test_revoked_tokens(api: Api, sim: Simulator) -> None:
    sim.revoke_tokens()
    status, _, _ = await api.status("x")
    assert status == 401


# -- cancel and the action lifecycle -------------------------------------------


async def test_cancel_accepted_then_success(api: Api, sim: Simulator) -> None:
    status, body, resp = await api.cancel("O1", {"cancelations": [cancelation(quantity=2)]})
    assert status == 202
    assert body["action_id"] == body["tracking_id"]
    assert resp.content_type == "application/json"
    action_id = body["action_id"]
    status, first, _ = await api.status(action_id)
    assert (status, first["status"]) == (200, "PENDING")
    assert first["created_at"].endswith("Z") and "errors" not in first
    final = await api.final(action_id)
    assert final["status"] == "SUCCESS"
    assert "errors" not in final
    assert final["updated_at"] >= final["created_at"]
    assert sim.orders["O1"].lines[0].remaining_quantity == 1
    assert sim.actions[action_id].status == "SUCCESS"
    assert sim.actions[action_id].polls == 2


async def test_cancel_by_product_id_only(api: Api, sim: Simulator) -> None:
    action_id = await api.submit(
        order_line_id=None, product_id="P2", price={"amount": 5, "currency": "EUR"}
    )
    assert (await api.final(action_id))["status"] == "SUCCESS"
    assert sim.orders["O1"].lines[1].remaining_quantity == 0


@pytest.mark.parametrize(
    ("order_id", "overrides", "code"),
    [
        ("SHIPPED-1", {}, "ORDER_IN_WRONG_STATE"),
        ("O1", {"order_line_id": "nope"}, "DATA_NOT_FOUND"),
        ("O1", {"order_line_id": None, "product_id": "nope"}, "DATA_NOT_FOUND"),
        ("O1", {"order_line_id": "O1-1", "product_id": "P2"}, "DATA_NOT_FOUND"),
        ("O1", {"order_line_id": None}, "INVALID_INPUT"),
        ("O1", {"quantity": 4}, "INVALID_INPUT"),
        ("O1", {"price": {"amount": 1, "currency": "USD"}}, "INVALID_INPUT"),
        (
            "O1",
            {"taxes": [{"code": "VAT", "amount": {"amount": 1, "currency": "GBP"}}]},
            "INVALID_INPUT",
        ),
    ],
    ids=[
        "wrong-state",
        "unknown-line",
        "unknown-product",
        "line-product-mismatch",
        "no-line-reference",
        "too-many-units",
        "currency-mismatch",
        "tax-currency-mismatch",
    ],
)
async def test_action_failures(
    api: Api, sim: Simulator, order_id: str, overrides: dict[str, Any], code: str
) -> None:
    action_id = await api.submit(order_id, **overrides)
    final = await api.final(action_id)
    assert final["status"] == "FAILED"
    assert [e["code"] for e in final["errors"]] == [code]
    assert all(e["message"] for e in final["errors"])
    assert sim.orders["O1"].lines[0].remaining_quantity == 3  # nothing applied


async def test_failure_is_atomic_with_one_error_per_bad_cancelation(
    api: Api, sim: Simulator
) -> None:
    body = {
        "cancelations": [
            cancelation(quantity=1),  # fine on its own
            cancelation(order_line_id="ghost"),
            cancelation(quantity=3),  # 1 + 3 > 3 remaining
        ]
    }
    status, accepted, _ = await api.cancel("O1", body)
    assert status == 202
    final = await api.final(accepted["action_id"])
    assert final["status"] == "FAILED"
    assert [e["code"] for e in final["errors"]] == ["DATA_NOT_FOUND", "INVALID_INPUT"]
    assert sim.orders["O1"].lines[0].remaining_quantity == 3
    assert sim.orders["O1"].lines[0].adjustments == []


async def test_repeated_partial_cancel_lowers_remaining(api: Api, sim: Simulator) -> None:
    first = await api.submit(quantity=2)
    second = await api.submit(quantity=1)  # reserved in arrival order: 2 + 1 = 3 fits
    third = await api.submit(quantity=1)  # nothing left
    assert (await api.final(first))["status"] == "SUCCESS"
    assert (await api.final(second))["status"] == "SUCCESS"
    final = await api.final(third)
    assert final["status"] == "FAILED"
    assert final["errors"][0]["code"] == "INVALID_INPUT"
    line = sim.orders["O1"].lines[0]
    assert line.remaining_quantity == 0
    assert [adj.quantity for adj in line.adjustments] == [2, 1]


async def test_quantity_zero_is_valid(api: Api) -> None:
    assert (await api.final(await api.submit(quantity=0)))["status"] == "SUCCESS"


# -- request validation and 404 ------------------------------------------------


async def test_400_lists_every_problem_as_jsonpath(api: Api, sim: Simulator) -> None:
    body = {
        "cancelations": [
            {
                "quantity": 1.5,
                "reason": "BORED",
                "price": {"amount": -1, "currency": "eur"},
                "shipping_price": {"currency": "EUR"},
                "taxes": [{"code": "", "amount": {"amount": "1", "currency": "EUR"}}],
                "order_line_id": "",
            },
            {"quantity": True, "shipping_taxes": "none"},
            "not-an-object",
        ]
    }
    status, error, _ = await api.cancel("O1", body)
    assert status == 400
    assert error["code"] == "INVALID_INPUT"
    fields = [item["field"] for item in error["errors"]]
    assert fields == [
        "$.cancelations[0].quantity",
        "$.cancelations[0].reason",
        "$.cancelations[0].price.amount",
        "$.cancelations[0].price.currency",
        "$.cancelations[0].shipping_price.amount",
        "$.cancelations[0].taxes[0].code",
        "$.cancelations[0].taxes[0].amount.amount",
        "$.cancelations[0].order_line_id",
        "$.cancelations[1].quantity",
        "$.cancelations[1].reason",
        "$.cancelations[1].price",
        "$.cancelations[1].shipping_price",
        "$.cancelations[1].shipping_taxes",
        "$.cancelations[2]",
    ]
    assert all(item["message"] for item in error["errors"])
    assert not sim.actions


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ("{}", "$.cancelations"),
        ('{"cancelations": []}', "$.cancelations"),
        ('{"cancelations": {}}', "$.cancelations"),
        ("[]", "$"),
        ("{not json", "$"),
        ('{"cancelations": [{"quantity": NaN}]}', "$"),
    ],
)
async def test_400_body_shape(api: Api, raw: str, field: str) -> None:
    status, error, _ = await api.cancel("O1", raw)
    assert status == 400
    assert error["errors"][0]["field"] == field


async def test_amounts_are_exact_decimals(api: Api, sim: Simulator) -> None:
    raw = (
        '{"cancelations": [{"order_line_id": "O1-1", "quantity": 1, "reason": "DEFECT",'
        ' "price": {"amount": 0.1000000000000000055511151231257827, "currency": "EUR"},'
        ' "shipping_price": {"amount": 0, "currency": "EUR"}}]}'
    )
    status, _, _ = await api.cancel("O1", raw)
    assert status == 202
    amount = sim.orders["O1"].lines[0].adjustments[0].price["amount"]
    assert amount == Decimal("0.1000000000000000055511151231257827")


async def test_wrong_content_type_is_415(api: Api) -> None:
    path = api.url("/v2/orders/O1/cancel")
    headers = {**api.auth, "Content-Type": "text/plain"}
    async with api.session.post(path, data="{}", headers=headers) as resp:
        assert resp.status == 415


async def test_unknown_order_404(api: Api, sim: Simulator) -> None:
    status, error, _ = await api.cancel("NOPE", {"cancelations": [cancelation()]})
    assert status == 404
    assert error["code"] == "DATA_NOT_FOUND"
    assert error["errors"][0]["field"] == "order_id"
    assert not sim.actions


async def test_unknown_action_404(api: Api) -> None:
    status, error, _ = await api.status("00000000-0000-0000-0000-000000000000")
    assert (status, error["code"]) == (404, "DATA_NOT_FOUND")


async def test_weird_order_id_is_percent_decoded(api: Api, sim: Simulator) -> None:
    action_id = await api.submit(WEIRD_ID, order_line_id=f"{WEIRD_ID}-1")
    assert sim.actions[action_id].order_id == WEIRD_ID
    assert (await api.final(action_id))["status"] == "SUCCESS"
    assert sim.stats.posts_per_order == {WEIRD_ID: 1}
    # The raw, unencoded form is a different path altogether.
    status, _, _ = await api.cancel("A%2FB", {"cancelations": [cancelation()]})
    assert status == 404


# -- the once-per-minute polling ceiling ---------------------------------------


async def test_poll_faster_than_ceiling_gets_429(api: Api, sim: Simulator) -> None:
    action_id = await api.submit()
    status, _, _ = await api.status(action_id)
    assert status == 200
    status, body, resp = await api.status(action_id)
    assert (status, body["code"]) == (429, "TOO_MANY_REQUEST")
    wait = float(resp.headers["Retry-After"])
    assert 0 < wait <= 0.060  # decimal real seconds under scaled time
    assert sim.stats.poll_violations == 1
    assert sim.stats.responses_429 == 1
    # A refused poll does not restart the clock: waiting out Retry-After is enough.
    await asyncio.sleep(wait + 0.002)
    status, _, _ = await api.status(action_id)
    assert status == 200
    assert sim.stats.polls_per_action == {action_id: 3}
    assert sim.stats.poll_violations == 1


async def test_ceiling_is_per_action(api: Api) -> None:
    first, second = await api.submit(), await api.submit(quantity=0)
    assert (await api.status(first))[0] == 200
    assert (await api.status(second))[0] == 200


async def test_retry_after_whole_seconds_at_real_speed() -> None:
    async with Simulator(SimulatorConfig(processing_delay=(0, 0))) as sim:
        sim.add_order(order("O1"))
        async with aiohttp.ClientSession() as session:
            api = Api(sim, session)
            action_id = await api.submit()
            await api.status(action_id)
            status, _, resp = await api.status(action_id)
    assert status == 429
    assert resp.headers["Retry-After"] in ("59", "60")


# -- stats ---------------------------------------------------------------------


async def test_stats_counters(api: Api, sim: Simulator) -> None:
    body = {"cancelations": [cancelation()]}
    await api.cancel("O1", body)
    await api.cancel("O1", body)  # identical: a duplicate, whatever happened first
    await api.cancel("O1", {"cancelations": [cancelation(quantity=2)]})
    await api.cancel("NOPE", body)
    await api.cancel("O1", body, headers={})  # unauthenticated: not a post that counts
    stats = sim.stats
    assert stats.requests == 5
    assert stats.requests_by_route == {"cancel": 5}
    assert stats.posts_per_order == {"O1": 3, "NOPE": 1}
    assert stats.duplicate_posts == 1
    assert stats.actions_created == 3
    assert stats.status_codes == {"202": 3, "404": 1, "401": 1}
    async with api.session.get(sim.base_url + "/_sim/stats") as resp:
        over_http = await resp.json()
    assert over_http == stats.as_dict()
    async with api.session.post(sim.base_url + "/_sim/reset-stats") as resp:
        assert resp.status == 200
    assert sim.stats.requests == 0 and sim.stats.posts_per_order == {}
