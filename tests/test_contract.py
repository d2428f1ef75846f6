"""Contract tests: what the client sends and reads, checked against Mirakl Connect's OpenAPI.

The bodies are captured as the client actually sends them and validated (Draft 2020-12)
against `CancelOrderLinesRequest` of `../shared/spec/mirakl-connect-openapi.yaml`; the
spec's own examples are fed to our parsers. Skipped when the bundle is absent.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from _spec import load_schema_validator, spec_or_skip
from aioresponses import CallbackResult, aioresponses

from mirakl_cancel import (
    ActionState,
    BadRequestError,
    Cancelation,
    CancelReason,
    CancelRequest,
    MiraklConnectClient,
    Money,
    NotFoundError,
    StaticToken,
    Tax,
)
from mirakl_cancel._jobs.job import JobOptions, _stage_input
from mirakl_cancel._sending import StoredBody, send_one
from mirakl_cancel._serde import (
    loads,
    parse_action_accepted,
    parse_action_status,
    parse_error_body,
    request_body,
    structure_request,
)
from mirakl_cancel._stores.sqlite import PlanStaging

BASE = "https://connect.example.com/api"
ANY_CANCEL = re.compile(r"^https://connect\.example\.com/api/v2/orders/[^/]+/cancel$")


def operation(spec: dict[str, Any], operation_id: str) -> dict[str, Any]:
    for path_item in spec["paths"].values():
        for op in path_item.values():
            if isinstance(op, dict) and op.get("operationId") == operation_id:
                return op
    raise KeyError(operation_id)


def examples(media: dict[str, Any]) -> list[Any]:
    found = [example["value"] for example in media.get("examples", {}).values()]
    if "example" in media:
        found.append(media["example"])
    return found


def rich_request() -> CancelRequest:
    eur = "EUR"
    return CancelRequest("0024_COMMERCIAL_ID-A", [
        Cancelation(
            quantity=3, reason=CancelReason.CUSTOMER_CANCELATION,
            price=Money(Decimal("59.97"), eur), shipping_price=Money(Decimal("1E+1"), eur),
            order_line_id="0002_3202630-A-1", product_id="SELLER_ID_1",
            taxes=[Tax("TAX_VAT", Money(Decimal("0.10"), eur)),
                   Tax("TAX_ECO", Money("0.0000001", eur))],
            shipping_taxes=[Tax("SHIP_VAT", Money(2, eur))],
        ),
        Cancelation(quantity=0, reason="DEFECT", price=Money("0", eur),
                    shipping_price=Money("0.00", eur), product_id="P-2"),
        Cancelation(quantity=1, reason="UNABLE_TO_DELIVER", price=Money("123456789.123456789", eur),
                    shipping_price=Money(0, eur), order_line_id="L-3"),
    ])


def minimal_request() -> CancelRequest:
    return CancelRequest("O-1", [Cancelation(quantity=1, reason="OUT_OF_STOCK",
                                             order_line_id="O-1-1", price=Money(1, "USD"),
                                             shipping_price=Money(0, "USD"))])


@pytest.fixture
def captured() -> Iterator[list[bytes]]:
    bodies: list[bytes] = []

    def capture(url: Any, **kwargs: Any) -> CallbackResult:
        bodies.append(kwargs["data"])
        return CallbackResult(status=202, payload={"action_id": "a", "tracking_id": "a"})

    with aioresponses() as m:
        m.post(ANY_CANCEL, callback=capture, repeat=True)
        yield bodies


@pytest.mark.parametrize("build", [rich_request, minimal_request], ids=["rich", "minimal"])
async def test_sent_body_matches_cancel_order_lines_request(
        captured: list[bytes], build: Any) -> None:
    validator = load_schema_validator("CancelOrderLinesRequest")
    request = build()
    async with MiraklConnectClient(auth=StaticToken("t"), base_url=BASE) as c:
        await c.cancel(request)
    [raw] = captured
    assert raw == request_body(request)
    for body in (json.loads(raw), loads(raw)):  # as floats and as exact decimals
        errors = sorted(validator.iter_errors(body), key=str)
        assert errors == [], [e.message for e in errors]


async def test_the_jobs_stored_bodies_sent_as_they_are_match_the_spec(
        captured: list[bytes], tmp_path: Path) -> None:
    """The job sends each journaled body as its bytes (`StoredBody`): what was planned
    from the file (fast-checked rows and fully checked ones) is valid on the wire."""
    validator = load_schema_validator("CancelOrderLinesRequest")
    source = tmp_path / "in.csv"
    source.write_text(
        "order_id,order_line_id,quantity,reason,price_amount,price_currency,"
        "shipping_amount,taxes\n"
        "O-1,O-1-1,2,OUT_OF_STOCK,10.50,EUR,0,\n"
        "O-1,O-1-2,1,DEFECT,0.1,EUR,4.99,VAT:0.20\n"
        "O-2 é,O-2-1,3,CUSTOMER_CANCELATION,1E+1,EUR,0,\n", encoding="utf-8")
    with PlanStaging() as staging:
        assert _stage_input(source, JobOptions(input_path=source, base_url="u"), staging,
                            io.StringIO()) is not None
        planned = list(staging.plan(None))
    async with MiraklConnectClient(auth=StaticToken("t"), base_url=BASE) as c:
        for request in planned:
            outcome = await send_one(c, StoredBody(request.order_id, request.body.encode(),
                                                   len(request.rows)))
            assert outcome.ok
    assert captured == [r.body.encode() for r in planned] and len(captured) == 2
    for raw, request in zip(captured, planned, strict=True):
        # The bytes are the ones the client would write for the request they are.
        assert raw == request_body(structure_request(request.order_id,
                                                     loads(raw)["cancelations"]))
        errors = sorted(validator.iter_errors(json.loads(raw)), key=str)
        assert errors == [], [e.message for e in errors]


def test_schema_refuses_what_our_models_refuse() -> None:
    """The validator is live: the shapes our models refuse are invalid for the spec too."""
    validator = load_schema_validator("CancelOrderLinesRequest")
    good = json.loads(request_body(minimal_request()))
    assert validator.is_valid(good)
    line = good["cancelations"][0]
    for broken in ({"cancelations": []},
                   {"cancelations": [{**line, "quantity": -1}]},
                   {"cancelations": [{**line, "quantity": 1.5}]},
                   {"cancelations": [{**line, "price": {"amount": -1, "currency": "USD"}}]},
                   {"cancelations": [{**line, "order_line_id": ""}]},
                   {"cancelations": [{k: v for k, v in line.items() if k != "reason"}]}):
        assert not validator.is_valid(broken)


def test_rich_body_exact_text() -> None:
    raw = request_body(rich_request()).decode()
    for fragment in ('"amount":59.97', '"amount":10,', '"amount":0.10,', '"amount":0.0000001,',
                     '"amount":123456789.123456789,', '"amount":0.00,'):
        assert fragment in raw


def test_spec_request_examples_round_trip() -> None:
    spec = spec_or_skip()
    op = operation(spec, "v2-cancelOrderLines")
    validator = load_schema_validator("CancelOrderLinesRequest")
    found = examples(op["requestBody"]["content"]["application/json"])
    assert found
    for example in found:
        request = structure_request("0024_COMMERCIAL_ID-A", example["cancelations"])
        body = json.loads(request_body(request))
        assert validator.is_valid(body)
        original = example["cancelations"][0]
        sent = body["cancelations"][0]
        assert set(sent) == set(original)
        assert Decimal(str(sent["price"]["amount"])) == Decimal(str(original["price"]["amount"]))


def test_spec_202_examples_parse() -> None:
    op = operation(spec_or_skip(), "v2-cancelOrderLines")
    validator = load_schema_validator("AsynchronousActionResponse")
    found = examples(op["responses"]["202"]["content"]["application/json"])
    assert found
    for example in found:
        assert validator.is_valid(example)
        accepted = parse_action_accepted(example, "O")
        assert accepted.action_id == example["action_id"]
        assert accepted.tracking_id == example.get("tracking_id")


def test_spec_action_status_examples_parse() -> None:
    op = operation(spec_or_skip(), "v2-getActionStatus")
    found = examples(op["responses"]["200"]["content"]["application/json"])
    assert len(found) >= 3
    states = set()
    for example in found:
        status = parse_action_status(example)
        states.add(status.state)
        assert status.id == example["id"]
        assert status.raw_status == example["status"]
        assert status.state is not ActionState.UNKNOWN
        assert status.created_at is not None
        assert status.created_at.tzinfo is not None
        assert [e.code for e in status.errors] == [e["code"] for e in example.get("errors", [])]
    assert states == {ActionState.PENDING, ActionState.SUCCESS, ActionState.FAILED}


@pytest.mark.parametrize(("operation_id", "status"),
                         [("v2-cancelOrderLines", "400"), ("v2-cancelOrderLines", "404"),
                          ("v2-getActionStatus", "404")])
def test_spec_error_examples_parse(operation_id: str, status: str) -> None:
    op = operation(spec_or_skip(), operation_id)
    validator = load_schema_validator("Error")
    found = examples(op["responses"][status]["content"]["application/json"])
    assert found
    for example in found:
        assert validator.is_valid(example)
        body = parse_error_body(example)
        assert body is not None
        assert body.code == example["code"]
        assert body.message == example["message"]
        assert [(e.field, e.message) for e in body.errors] == [
            (e.get("field"), e["message"]) for e in example.get("errors", [])]
        assert body.extensions == example.get("extensions", {})


@pytest.mark.parametrize(("status", "cls"), [(400, BadRequestError), (404, NotFoundError)])
async def test_spec_error_example_over_http(status: int, cls: type[Exception]) -> None:
    op = operation(spec_or_skip(), "v2-cancelOrderLines")
    [example] = examples(op["responses"][str(status)]["content"]["application/json"])
    with aioresponses() as m:
        m.post(ANY_CANCEL, status=status, payload=example)
        async with MiraklConnectClient(auth=StaticToken("t"), base_url=BASE) as c:
            with pytest.raises(cls) as info:
                await c.cancel(minimal_request())
    assert info.value.errors[0].field == example["errors"][0]["field"]  # type: ignore[attr-defined]


def test_cancel_reason_matches_spec_enum() -> None:
    schema = spec_or_skip()["components"]["schemas"]["CancelRequest"]
    description = schema["properties"]["reason"]["description"]
    enum_text = description.split("Enum:", 1)[1]
    spec_values = re.findall(r"`\"([A-Z_]+)\"`", enum_text)
    assert len(spec_values) == 7
    assert [r.value for r in CancelReason] == spec_values


def test_action_state_matches_spec_enum() -> None:
    schema = spec_or_skip()["components"]["schemas"]["ActionResponse"]
    description = schema["properties"]["status"]["description"]
    spec_values = re.findall(r"`\"([A-Z_]+)\"`", description.split("Enum:", 1)[1])
    known = [s.value for s in ActionState if s is not ActionState.UNKNOWN]
    assert known == spec_values


def test_required_fields_match_spec() -> None:
    """The fields our models require are exactly the ones the spec requires."""
    schemas = spec_or_skip()["components"]["schemas"]
    assert set(schemas["CancelRequest"]["required"]) == {
        "price", "quantity", "reason", "shipping_price"}
    assert set(schemas["CanceledTaxRequest"]["required"]) == {"amount", "code"}
    assert set(schemas["Money"]["required"]) == {"amount", "currency"}
    body = json.loads(request_body(minimal_request()))["cancelations"][0]
    # Beyond the spec's required fields, the models require one of the two line ids: a
    # cancel that names no line is refused by the API's processing (as the CLI refuses it).
    assert set(body) == set(schemas["CancelRequest"]["required"]) | {"order_line_id"}
    assert set(body) <= set(schemas["CancelRequest"]["properties"])
