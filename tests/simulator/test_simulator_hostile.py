"""The simulator against hostile clients, over the wire: malformed bodies are 400s naming
the field (never 500s), and the `v2-listOrders` once-a-minute ceiling is enforced and counted.

The property test derives its bodies from the request schema of the published spec
(``../shared/spec``; skipped when absent), mutating any node into any JSON value, and holds
the simulator to two rules: it never answers 5xx, and it never accepts a body the schema
refuses.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from _spec import load_schema_validator, spec_or_skip
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mirakl_cancel import MiraklConnectClient, StaticToken
from mirakl_cancel.simulator import SimLine, SimOrder, SimulatorConfig, ThreadedSimulator
from mirakl_cancel.simulator._validate import REASONS

SCALE = 0.001  # the 60 s ceilings last 60 ms


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSimulator]:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(1.0, 1.0), seed=5)
    with ThreadedSimulator(config) as simulator:
        simulator.add_order(SimOrder(id="O1", lines=[
            SimLine(id="O1-1", product_id="P1", quantity=10**6, price=Decimal("19.99")),
            SimLine(id="O1-2", product_id="P2", quantity=10**6, price=Decimal("5"))]))
        yield simulator


def send(sim: ThreadedSimulator, method: str, path: str, body: bytes | None = None,
         token: str | None = None) -> tuple[int, dict[str, str], Any]:
    """One raw request; returns (status, headers, parsed JSON body)."""
    request = urllib.request.Request(
        sim.base_url + path, data=body, method=method,
        headers={"Authorization": f"Bearer {token or sim.token}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if raw else None


def cancel(sim: ThreadedSimulator, body: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, answer = send(sim, "POST", "/v2/orders/O1/cancel", raw)
    return status, answer


def good(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"order_line_id": "O1-1", "quantity": 1, "reason": "RETURN",
                            "price": {"amount": 1, "currency": "EUR"},
                            "shipping_price": {"amount": 0, "currency": "EUR"}}
    item.update(overrides)
    return {"cancelations": [item]}


def fields_of(answer: Any) -> set[str]:
    return {item.get("field", "") for item in answer.get("errors", [])}


@pytest.mark.parametrize(("body", "field"), [
    (good(reason={"a": 1}), "$.cancelations[0].reason"),
    (good(reason=["RETURN"]), "$.cancelations[0].reason"),
    (good(reason=7), "$.cancelations[0].reason"),
    (good(order_line_id=["O1-1"]), "$.cancelations[0].order_line_id"),
    (good(order_line_id="O1-\ud800"), "$.cancelations[0].order_line_id"),
    (good(product_id={"x": 1}), "$.cancelations[0].product_id"),
    (good(taxes=[{"code": "\udc00", "amount": {"amount": 1, "currency": "EUR"}}]),
     "$.cancelations[0].taxes[0].code"),
    (good(taxes={"code": "T"}), "$.cancelations[0].taxes"),
    (good(price={"amount": "1", "currency": "EUR"}), "$.cancelations[0].price.amount"),
    (good(price={"amount": 1, "currency": ["EUR"]}), "$.cancelations[0].price.currency"),
    (good(price=[1, "EUR"]), "$.cancelations[0].price"),
    (good(quantity={"n": 1}), "$.cancelations[0].quantity"),
    ({"cancelations": {"0": good()["cancelations"][0]}}, "$.cancelations"),
    ([good()], "$"),
    (b'{"cancelations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "$"),
    (b'{"cancelations": ' + b"[" * 70 + b"]" * 70 + b"}", "$"),
    (b'{"cancelations": [{"quantity": ' + b"9" * 5000 + b"}]}", "$"),
    (b'{"cancelations": [{"price": {"amount": 1e999999999999999999999}}]}', "$"),
    (b'{"cancelations": [\xff]}', "$"),
])
def test_malformed_bodies_are_400_naming_the_field(sim: ThreadedSimulator, body: Any,
                                                   field: str) -> None:
    status, answer = cancel(sim, body)
    assert status == 400, answer
    assert answer["code"] == "INVALID_INPUT"
    assert field in fields_of(answer)


def test_a_malformed_list_query_is_a_400(sim: ThreadedSimulator) -> None:
    time.sleep(60 * SCALE)  # the listing ceiling
    status, _, answer = send(sim, "GET", "/v2/orders?limit=%C2%B2")  # "²": isdigit() says yes
    assert status == 400 and fields_of(answer) == {"limit"}


# --- the property test over the spec's request schema ----------------------------------

_NASTY_TEXT = st.sampled_from(["", "\ud800", "\x00", "é", "O1-1", "P1", "EUR", "RETURN"])
_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5) | _NASTY_TEXT,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6)
#: Plausible values per property name, so that many bodies get past the first check.
_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "reason": st.sampled_from(sorted(REASONS)),
    "currency": st.sampled_from(["EUR", "USD", "eur"]),
    "order_line_id": st.sampled_from(["O1-1", "O1-2", "nope"]),
    "product_id": st.sampled_from(["P1", "P2"]),
    "code": st.sampled_from(["TVA", "T"]),
}


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in schema:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "allOf" in schema and len(schema["allOf"]) == 1:
            schema = schema["allOf"][0]
        else:
            return schema


def _from_schema(schema: dict[str, Any], doc: dict[str, Any], name: str = "") -> Any:
    """Values shaped by `schema`, any of whose nodes may instead be any JSON value."""
    schema = _resolve(schema, doc)
    kind = schema.get("type")
    valid: st.SearchStrategy[Any]
    if kind == "object":
        props = {key: _from_schema(sub, doc, key)
                 for key, sub in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        valid = st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required})
    elif kind == "array":
        valid = st.lists(_from_schema(schema["items"], doc), min_size=0, max_size=3)
    elif kind == "string":
        valid = _HINTS.get(name, st.text(max_size=8))
    elif kind == "integer":
        valid = st.integers(min_value=-2, max_value=10**20)
    elif kind == "number":
        valid = st.integers(min_value=-1, max_value=10**6) | st.floats(
            min_value=-1, max_value=1e6, allow_nan=False)
    else:
        valid = _ANY_JSON
    return st.one_of(valid, valid, valid, _ANY_JSON)  # mostly well-shaped


def _request_bodies() -> st.SearchStrategy[Any]:
    doc = spec_or_skip()
    schema = doc["components"]["schemas"]["CancelOrderLinesRequest"]
    return _from_schema(schema, doc)


def _without_nulls(value: Any) -> Any:
    # The simulator (like the Java API behind it) reads an optional property given as
    # null as absent; the schema has no `nullable`. Compare on that reading.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_any_body_from_the_schema_is_a_400_naming_fields_or_accepted(
        sim: ThreadedSimulator) -> None:
    bodies = _request_bodies()
    validator = load_schema_validator("CancelOrderLinesRequest")
    seen: dict[int, int] = {}

    # Network-bound: no deadline (a loaded machine is slow, not wrong); derandomized, so
    # every run draws the same bodies; and one known-good body as an explicit example, so
    # "both sides exercised" never rests on what the generator happens to draw.
    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies)
    @example(body=good())
    def check(body: Any) -> None:
        status, answer = cancel(sim, body)
        seen[status] = seen.get(status, 0) + 1
        assert status in (202, 400), (status, body, answer)
        if status == 400:
            assert answer["code"] == "INVALID_INPUT"
            assert answer["errors"] and all(
                isinstance(item.get("field"), str) and item["field"].startswith("$")
                for item in answer["errors"]), answer
        if isinstance(body, dict) and not validator.is_valid(_without_nulls(body)):
            assert status == 400, (body, answer)

    check()
    assert seen.get(400) and seen.get(202), seen  # both sides of the rule were exercised
    assert sim.stats_snapshot()["status_codes"].get("500", 0) == 0


# --- the v2-listOrders ceiling -----------------------------------------------------------

def test_listing_more_than_once_a_minute_is_429_and_counted() -> None:
    config = SimulatorConfig(time_scale=SCALE)
    with ThreadedSimulator(config) as sim:
        status, _, _ = send(sim, "GET", "/v2/orders?order_ids=X")
        assert status == 200
        status, headers, answer = send(sim, "GET", "/v2/orders?order_ids=X")
        assert status == 429 and answer["code"] == "TOO_MANY_REQUEST"
        wait = float(headers["Retry-After"])
        assert 0 < wait <= 60 * SCALE
        # Per credential, not per token: a fresh token of the same client is refused too.
        form = urllib.request.Request(
            sim.token_url, method="POST",
            data=(f"grant_type=client_credentials&client_id={config.client_id}"
                  f"&client_secret={config.client_secret}").encode())
        with urllib.request.urlopen(form, timeout=10) as response:
            other = json.loads(response.read())["access_token"]
        assert send(sim, "GET", "/v2/orders?order_ids=X", token=other)[0] == 429
        time.sleep(wait + 0.001)
        assert send(sim, "GET", "/v2/orders?order_ids=X", token=other)[0] == 200
        stats = sim.stats_snapshot()
    assert stats["list_calls"] == 4 and stats["list_violations"] == 2


async def test_the_client_keeps_the_listing_ceiling_over_many_pages() -> None:
    from mirakl_cancel.simulator import Simulator

    async with Simulator(SimulatorConfig(time_scale=SCALE)) as sim:
        generated = sim.generate_orders(n_orders=250, lines_per_order=(1, 1))
        async with MiraklConnectClient(base_url=sim.base_url, auth=StaticToken(sim.token),
                                       min_list_interval=60 * SCALE) as client:
            orders = await client.list_orders([o.id for o in generated])
    assert len(orders) == 250
    assert sim.stats.list_calls == 3 and sim.stats.list_violations == 0
    assert sim.stats.responses_429 == 0
