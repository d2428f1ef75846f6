"""v2-listOrders and contract checks of every simulator answer against the spec."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from _spec import load_schema_validator

from mirakl_cancel.simulator import Fault, SimLine, SimOrder, Simulator, SimulatorConfig

pytestmark = pytest.mark.asyncio

# These tests read pages back to back to check the listing itself; its once-a-minute
# ceiling is tested in test_simulator_hostile.py.
CONFIG = SimulatorConfig(time_scale=0.001, processing_delay=(20.0, 20.0), seed=3,
                         min_list_interval=0)


def assert_valid(schema: str, body: Any) -> None:
    validator = load_schema_validator(schema)
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not problems, problems


class Api:
    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim, self.session = sim, session
        self.auth = {"Authorization": f"Bearer {sim.token}"}

    async def get(self, path: str, params: Any = None) -> tuple[int, Any]:
        url = self.sim.base_url + path
        async with self.session.get(url, params=params, headers=self.auth) as resp:
            # parse_float=Decimal: the page must carry amounts exactly.
            return resp.status, json.loads(await resp.text(), parse_float=Decimal)

    async def post_cancel(self, order_id: str, body: Any) -> tuple[int, Any]:
        url = f"{self.sim.base_url}/v2/orders/{order_id}/cancel"
        async with self.session.post(url, json=body, headers=self.auth) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    async with Simulator(CONFIG) as sim, aiohttp.ClientSession() as session:
        yield Api(sim, session)


def cancel_body(line_id: str, quantity: int, currency: str = "EUR") -> dict[str, Any]:
    return {
        "cancelations": [
            {
                "order_line_id": line_id,
                "quantity": quantity,
                "reason": "CUSTOMER_CANCELATION",
                "price": {"amount": 19.99, "currency": currency},
                "shipping_price": {"amount": 4.5, "currency": currency},
                "taxes": [{"code": "VAT", "amount": {"amount": 4, "currency": currency}}],
            }
        ]
    }


async def test_list_by_ids_shows_adjustments_after_processing(api: Api) -> None:
    api.sim.add_order(
        SimOrder(
            id="O1",
            lines=[
                SimLine(
                    id="O1-1",
                    product_id="P1",
                    quantity=3,
                    price=Decimal("19.99"),
                    shipping_price=Decimal("4.50"),
                    title="Mug",
                )
            ],
        )
    )
    status, _ = await api.post_cancel("O1", cancel_body("O1-1", 1))
    assert status == 202
    status, page = await api.get("/v2/orders", {"order_ids": "O1"})
    assert status == 200
    line = page["data"][0]["order_lines"][0]
    assert (line["quantity"], line["adjustments"]) == (3, [])  # still processing
    await asyncio.sleep(0.03)
    await api.post_cancel("O1", cancel_body("O1-1", 1))  # a repeated partial cancel
    await asyncio.sleep(0.03)
    status, page = await api.get("/v2/orders", {"order_ids": "O1"})
    assert_valid("OrdersPageResponse", page)
    assert "next_page_token" not in page and "previous_page_token" not in page
    (order,) = page["data"]
    line = order["order_lines"][0]
    assert line["product"] == {"id": "P1", "title": "Mug"}
    assert line["quantity"] == 1
    assert line["price"] == {"amount": Decimal("19.99"), "currency": "EUR"}
    assert line["total_shipping_price"]["amount"] == 0  # 4.50 - 2 x 4.50, floored at 0
    assert [a["type"] for a in line["adjustments"]] == ["CANCELATION", "CANCELATION"]
    first = line["adjustments"][0]
    assert first["quantity"] == 1
    assert first["reason"] == "CUSTOMER_CANCELATION"
    assert first["price"] == {"amount": Decimal("19.99"), "currency": "EUR"}
    assert first["taxes"] == [{"code": "VAT", "amount": {"amount": 4, "currency": "EUR"}}]
    assert order["updated_at"] >= order["created_at"]


async def test_fully_canceled_line_is_closed(api: Api) -> None:
    api.sim.add_order(
        SimOrder(id="O2", lines=[SimLine(id="O2-1", product_id="P", quantity=1, price=Decimal(1))])
    )
    body = cancel_body("O2-1", 1)
    body["cancelations"][0]["price"]["amount"] = 1
    await api.post_cancel("O2", body)
    await asyncio.sleep(0.03)
    _, page = await api.get("/v2/orders", {"order_ids": "O2"})
    line = page["data"][0]["order_lines"][0]
    assert (line["status"], line["status_reason"], line["can_cancel"]) == (
        "CLOSED",
        "CANCELED",
        False,
    )


async def test_pagination_forward_and_back(api: Api) -> None:
    generated = api.sim.generate_orders(n_orders=25, lines_per_order=(1, 2))
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 10}
    pages = []
    while True:
        status, page = await api.get("/v2/orders", params)
        assert status == 200
        assert_valid("OrdersPageResponse", page)
        pages.append(page)
        seen.extend(order["id"] for order in page["data"])
        if "next_page_token" not in page:
            break
        params = {"page_token": page["next_page_token"]}
    assert [len(p["data"]) for p in pages] == [10, 10, 5]
    assert sorted(seen) == sorted(o.id for o in generated)
    updated = [o["updated_at"] for p in pages for o in p["data"]]
    assert updated == sorted(updated, reverse=True)
    assert "previous_page_token" not in pages[0]
    _, back = await api.get("/v2/orders", {"page_token": pages[2]["previous_page_token"]})
    assert [o["id"] for o in back["data"]] == [o["id"] for o in pages[1]["data"]]


async def test_filters(api: Api) -> None:
    api.sim.generate_orders(n_orders=30, wrong_state_ratio=0.5)
    _, page = await api.get("/v2/orders", [("statuses", "SHIPPED"), ("limit", "100")])
    assert page["data"] and {o["status"] for o in page["data"]} == {"SHIPPED"}
    ids = [o.id for o in list(api.sim.orders.values())[:3]]
    _, page = await api.get("/v2/orders", [("order_ids", i) for i in [*ids, "missing"]])
    assert sorted(o["id"] for o in page["data"]) == sorted(ids)
    _, page = await api.get("/v2/orders", {"updated_from": "2999-01-01T00:00:00Z"})
    assert page["data"] == []
    _, page = await api.get("/v2/orders", {"fulfillment_type": "FULFILLED_BY_PARTNER"})
    assert page["data"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"page_token": "garbage!"}, "page_token"),
        ({"statuses": "LOST"}, "statuses"),
        ({"updated_from": "yesterday"}, "updated_from"),
    ],
)
async def test_bad_query_is_400(api: Api, params: dict[str, str], field: str) -> None:
    status, error = await api.get("/v2/orders", params)
    assert status == 400
    assert_valid("Error", error)
    assert error["code"] == "INVALID_INPUT"
    assert error["errors"][0]["field"] == field


# -- contract: every body the simulator sends matches the published schemas --


async def test_contract_cancel_and_status_bodies(api: Api) -> None:
    sim = api.sim
    (good, wrong_state) = (
        SimOrder(id="G", lines=[SimLine(id="G-1", product_id="P", quantity=2, price=Decimal(1))]),
        SimOrder(
            id="S",
            status="DELIVERED",
            lines=[SimLine(id="S-1", product_id="P", quantity=1, price=Decimal(1))],
        ),
    )
    sim.add_order(good)
    sim.add_order(wrong_state)
    body = cancel_body("G-1", 1)
    status, accepted = await api.post_cancel("G", body)
    assert status == 202
    assert_valid("AsynchronousActionResponse", accepted)
    status, pending = await api.get(f"/v2/orders/actions/{accepted['action_id']}")
    assert (status, pending["status"]) == (200, "PENDING")
    assert_valid("ActionResponse", pending)
    _, failed_accepted = await api.post_cancel("S", cancel_body("S-1", 1))
    await asyncio.sleep(0.065)
    _, success = await api.get(f"/v2/orders/actions/{accepted['action_id']}")
    _, failed = await api.get(f"/v2/orders/actions/{failed_accepted['action_id']}")
    assert (success["status"], failed["status"]) == ("SUCCESS", "FAILED")
    assert_valid("ActionResponse", success)
    assert_valid("ActionResponse", failed)
    for item in failed["errors"]:
        assert_valid("ActionErrorResponse", item)


async def test_contract_error_bodies(api: Api) -> None:
    sim = api.sim
    errors = [
        await api.post_cancel("missing", cancel_body("x", 1)),  # 404
        await api.post_cancel("missing", {"cancelations": [{}]}),  # 400
        await api.get("/v2/orders/actions/missing"),  # 404
    ]
    sim.inject(Fault.http(503), route="status")
    sim.inject(Fault.http(429), route="status")
    errors.append(await api.get("/v2/orders/actions/missing"))
    errors.append(await api.get("/v2/orders/actions/missing"))
    api.auth = {}
    errors.append(await api.get("/v2/orders/actions/missing"))  # 401
    assert [status for status, _ in errors] == [404, 400, 404, 503, 429, 401]
    for _, body in errors:
        assert_valid("Error", body)


async def test_contract_generated_book(api: Api) -> None:
    api.sim.generate_orders(n_orders=40, lines_per_order=(1, 5), wrong_state_ratio=0.2)
    _, page = await api.get("/v2/orders", {"limit": "100"})
    assert len(page["data"]) == 40
    assert_valid("OrdersPageResponse", page)
