"""Unit tests of the converter: exact wire JSON out, tolerant parsing in."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from mirakl_cancel import (
    ActionState,
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
    Tax,
    ValidationError,
)
from mirakl_cancel._serde import (
    converter,
    dumps,
    loads,
    parse_action_accepted,
    parse_action_status,
    parse_datetime,
    parse_error_body,
    request_body,
    structure_cancelation,
    structure_request,
)


def eur(amount: str) -> Money:
    return Money(amount, "EUR")


def minimal_line(**overrides: Any) -> Cancelation:
    fields: dict[str, Any] = {"quantity": 1, "reason": "OUT_OF_STOCK",
                              "price": eur("19.99"), "shipping_price": eur("0"),
                              "order_line_id": "L-9"}
    fields.update(overrides)
    return Cancelation(**fields)


def line_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "quantity": 1,
        "reason": "RETURN",
        "price": {"amount": "10.00", "currency": "EUR"},
        "shipping_price": {"amount": 0, "currency": "EUR"},
        "order_line_id": "L-9",
    }
    data.update(overrides)
    return data


# --- request bodies -------------------------------------------------------------------


def test_request_body_exact_decimals() -> None:
    request = CancelRequest("O-1", [minimal_line(
        price=eur("19.99"), shipping_price=Money(Decimal("1E+2"), "EUR"),
        taxes=[Tax("T", eur("0.10"))], shipping_taxes=[Tax("S", Money(Decimal("1E-7"), "EUR"))],
    )])
    text = request_body(request).decode()
    assert '"price":{"amount":19.99,"currency":"EUR"}' in text
    assert '"shipping_price":{"amount":100,"currency":"EUR"}' in text
    assert '"amount":{"amount":0.10,"currency":"EUR"}' in text
    assert '"amount":0.0000001' in text
    assert "E" not in text.replace("EUR", "")  # never scientific notation
    parsed = loads(text)
    assert parsed["cancelations"][0]["price"]["amount"] == Decimal("19.99")
    assert parsed["cancelations"][0]["taxes"][0]["amount"]["amount"] == Decimal("0.10")


def test_request_body_minimal_has_no_optional_fields() -> None:
    body = json.loads(request_body(CancelRequest("O-1", [minimal_line()])))
    assert body == {"cancelations": [{
        "quantity": 1,
        "reason": "OUT_OF_STOCK",
        "price": {"amount": 19.99, "currency": "EUR"},
        "shipping_price": {"amount": 0, "currency": "EUR"},
        "order_line_id": "L-9",
    }]}
    raw = request_body(CancelRequest("O-1", [minimal_line()])).decode()
    for absent in ("product_id", "taxes", "shipping_taxes", "null", "order_id"):
        assert absent not in raw


def test_request_body_full_field_names() -> None:
    c = minimal_line(order_line_id="L-1", product_id="P-1", quantity=0,
                     taxes=[Tax("VAT", eur("1"))], shipping_taxes=[Tax("SHIP", eur("2"))])
    body = json.loads(request_body(CancelRequest("O-1", [c, minimal_line()])))
    assert list(body) == ["cancelations"]
    first, second = body["cancelations"]
    assert set(first) == {"quantity", "reason", "price", "shipping_price", "order_line_id",
                          "product_id", "taxes", "shipping_taxes"}
    assert first["quantity"] == 0  # a zero is not an unset optional field
    assert first["taxes"] == [{"code": "VAT", "amount": {"amount": 1, "currency": "EUR"}}]
    assert first["shipping_taxes"] == [{"code": "SHIP", "amount": {"amount": 2, "currency": "EUR"}}]
    assert set(second) == {"quantity", "reason", "price", "shipping_price", "order_line_id"}


def test_request_body_escapes_strings_as_json() -> None:
    c = minimal_line(order_line_id='li"ne\\é\n', product_id="プロダクト")
    raw = request_body(CancelRequest("O", [c]))
    assert raw.isascii()
    body = json.loads(raw)
    assert body["cancelations"][0]["order_line_id"] == 'li"ne\\é\n'
    assert body["cancelations"][0]["product_id"] == "プロダクト"


def test_dumps_types_and_float_refusal() -> None:
    assert dumps({"a": [1, True, None, "x", Decimal("2.50")], 3: ()}) == \
        '{"a":[1,true,null,"x",2.50],"3":[]}'
    with pytest.raises(TypeError, match="float"):
        dumps({"amount": 0.1})


def test_loads_reads_decimals() -> None:
    data = loads(b'{"a": 19.99, "b": 3, "c": [0.10]}')
    assert data["a"] == Decimal("19.99")
    assert isinstance(data["a"], Decimal)
    assert data["b"] == 3
    assert isinstance(data["b"], int)
    assert str(data["c"][0]) == "0.10"


def test_converter_unstructures_request() -> None:
    raw = converter.unstructure(CancelRequest("O-1", [minimal_line()]))
    assert "order_id" not in raw
    assert raw["cancelations"][0]["reason"] == "OUT_OF_STOCK"


# --- requests from plain data ---------------------------------------------------------


def test_structure_request_ok() -> None:
    request = structure_request("O-1", [
        line_data(order_line_id="L", taxes=[{"code": "T", "amount": {"amount": "1.5",
                                                                     "currency": "EUR"}}]),
        minimal_line(),
    ])
    assert request.order_id == "O-1"
    first = request.cancelations[0]
    assert first.reason is CancelReason.RETURN
    assert first.price == eur("10.00")
    assert first.taxes == (Tax("T", eur("1.5")),)
    assert first.shipping_taxes == ()
    assert request.cancelations[1] == minimal_line()


def test_structure_request_full_paths_all_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("O-1", [
            line_data(),
            line_data(quantity=-1),
            line_data(price={"amount": "1", "currency": "usd"}),
            line_data(shipping_price={"amount": 1.5, "currency": "EUR"}),
            line_data(taxes=[{"code": "", "amount": {"amount": "1", "currency": "EUR"}},
                             {"amount": {"amount": "1", "currency": "EUR"}}]),
            line_data(shipping_taxes=[{"code": "S", "amount": {"amount": "-1",
                                                               "currency": "EUR"}}]),
            line_data(shipping_price={"amount": 1, "currency": "USD"}),
            "not an object",
            {"reason": "NOPE"},
        ])
    assert info.value.fields == (
        "cancelations[1].quantity",
        "cancelations[2].price.currency",
        "cancelations[3].shipping_price.amount",
        "cancelations[4].taxes[0].code",
        "cancelations[4].taxes[1].code",
        "cancelations[5].shipping_taxes[0].amount.amount",
        "cancelations[6].shipping_price.currency",
        "cancelations[7]",
        "cancelations[8].quantity",
        "cancelations[8].price",
        "cancelations[8].shipping_price",
        "cancelations[8].reason",
        "cancelations[8].order_line_id",
    )


def test_structure_request_reports_line_fields_alongside_amount_problems() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("", [line_data(quantity="2", reason="x", product_id="",
                                         price={"amount": "abc", "currency": "EUR"})])
    assert info.value.fields == (
        "order_id",
        "cancelations[0].price.amount",
        "cancelations[0].quantity",
        "cancelations[0].reason",
        "cancelations[0].product_id",
    )


def test_structure_request_request_level_problems() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("O-1", [])
    assert info.value.fields == ("cancelations",)
    with pytest.raises(ValidationError) as info:
        structure_request("O-1", {"quantity": 1})
    assert info.value.fields == ("cancelations",)
    with pytest.raises(ValidationError) as info:
        structure_request(None, [line_data()])
    assert info.value.fields == ("order_id",)


def test_structure_request_amounts_must_be_objects() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("O", [line_data(price="10.00", taxes=[{"code": "T", "amount": 1}])])
    assert info.value.fields == ("cancelations[0].price", "cancelations[0].taxes[0].amount")
    assert "must be an object" in str(info.value)


def test_structure_request_taxes_must_be_an_array() -> None:
    with pytest.raises(ValidationError) as info:
        structure_request("O", [line_data(taxes={"code": "T"})])
    assert info.value.fields == ("cancelations[0].taxes",)


def test_structure_request_ignores_extra_keys() -> None:
    request = structure_request("O", [line_data(
        colour="red", price={"amount": "1", "currency": "EUR", "x": 1})])
    assert request.cancelations[0].price == eur("1")


def test_structure_cancelation_alone() -> None:
    assert structure_cancelation(line_data()).quantity == 1  # type: ignore[union-attr]
    with pytest.raises(ValidationError) as info:
        structure_cancelation(line_data(quantity=None))
    assert info.value.fields == ("$.quantity",)
    issues: list[Any] = []
    assert structure_cancelation("nope", "x", issues) is None
    assert [i.path for i in issues] == ["x"]


def test_converter_structure_hooks() -> None:
    request = converter.structure({"order_id": "O", "cancelations": [line_data()]},
                                  CancelRequest)
    assert request.order_id == "O"
    c = converter.structure(line_data(), Cancelation)
    assert c.reason is CancelReason.RETURN
    with pytest.raises(ValidationError):
        converter.structure({"order_id": "O", "cancelations": []}, CancelRequest)


def test_structure_request_round_trip() -> None:
    original = CancelRequest("O-9", [minimal_line(
        order_line_id="L", product_id="P", taxes=[Tax("T", eur("0.10"))],
        shipping_taxes=[Tax("S", eur("3"))])])
    body = loads(request_body(original))
    assert structure_request("O-9", body["cancelations"]) == original


# --- responses ------------------------------------------------------------------------


def test_parse_action_accepted() -> None:
    accepted = parse_action_accepted({"action_id": "a-1", "tracking_id": "a-1"}, "O")
    assert (accepted.action_id, accepted.order_id, accepted.tracking_id) == ("a-1", "O", "a-1")
    legacy = parse_action_accepted({"tracking_id": "t-1"}, "O")
    assert legacy.action_id == "t-1"
    only = parse_action_accepted({"action_id": "a-2", "extra": 1}, "O")
    assert only.tracking_id is None


@pytest.mark.parametrize("data", [None, [], "x", {}, {"action_id": ""}, {"action_id": 5}])
def test_parse_action_accepted_refuses(data: object) -> None:
    with pytest.raises(ValueError, match="202 body"):
        parse_action_accepted(data, "O")


def test_parse_action_status_full() -> None:
    status = parse_action_status({
        "id": "a-1", "status": "FAILED",
        "created_at": "2021-07-06T09:24:36.32Z", "updated_at": "2021-07-06T09:25:00Z",
        "errors": [{"code": "ORDER_IN_WRONG_STATE", "message": "wrong state"},
                   {"code": "BRAND_NEW_CODE"}, "garbage"],
        "something_new": {"x": 1},
    })
    assert status.id == "a-1"
    assert status.state is ActionState.FAILED
    assert status.raw_status == "FAILED"
    assert status.created_at == datetime(2021, 7, 6, 9, 24, 36, 320000, tzinfo=timezone.utc)
    assert status.updated_at == datetime(2021, 7, 6, 9, 25, tzinfo=timezone.utc)
    assert [(e.code, e.message) for e in status.errors] == [
        ("ORDER_IN_WRONG_STATE", "wrong state"), ("BRAND_NEW_CODE", "")]
    assert status.is_terminal


def test_parse_action_status_minimal_and_unknown_status() -> None:
    status = parse_action_status({"id": "a", "status": "ON_HOLD"})
    assert status.state is ActionState.UNKNOWN
    assert status.raw_status == "ON_HOLD"
    assert status.errors == ()
    assert status.created_at is None
    assert status.updated_at is None
    assert parse_action_status({"id": "a", "status": "PENDING", "errors": None}).errors == ()


@pytest.mark.parametrize("data", [None, [], {"id": "a"}, {"status": "PENDING"},
                                  {"id": 1, "status": "PENDING"}])
def test_parse_action_status_refuses(data: object) -> None:
    with pytest.raises(ValueError, match="action status"):
        parse_action_status(data)


@pytest.mark.parametrize("errors", [5, "text", {"code": "X"}, [None, 3]])
def test_parse_action_status_tolerates_odd_errors(errors: object) -> None:
    status = parse_action_status({"id": "a", "status": "FAILED", "errors": errors})
    assert status.state is ActionState.FAILED
    assert status.errors == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-07-06T09:24:36.32Z", datetime(2021, 7, 6, 9, 24, 36, 320000, tzinfo=timezone.utc)),
        ("2021-07-06T09:24:36.3Z", datetime(2021, 7, 6, 9, 24, 36, 300000, tzinfo=timezone.utc)),
        ("2021-07-06T09:24:36.123456789Z",
         datetime(2021, 7, 6, 9, 24, 36, 123456, tzinfo=timezone.utc)),
        ("2021-11-30T18:35:24Z", datetime(2021, 11, 30, 18, 35, 24, tzinfo=timezone.utc)),
        ("2021-11-30T18:35:24z", datetime(2021, 11, 30, 18, 35, 24, tzinfo=timezone.utc)),
        ("2021-11-30T20:35:24+02:00",
         datetime(2021, 11, 30, 20, 35, 24, tzinfo=timezone(timedelta(hours=2)))),
        ("2021-11-30T18:35:24", datetime(2021, 11, 30, 18, 35, 24, tzinfo=timezone.utc)),
        ("not a date", None),
        ("", None),
        ("   ", None),
        (None, None),
        (1638297324, None),
    ],
)
def test_parse_datetime(text: object, expected: datetime | None) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


def test_parse_error_body_full() -> None:
    body = parse_error_body({
        "code": "INVALID_INPUT", "message": "bad",
        "errors": [{"field": "$.cancelations[0].quantity", "message": "must be >= 0",
                    "extensions": {"minimum": 0}},
                   {"message": "no field"}, 7],
        "extensions": {"trace": "t"},
    })
    assert body is not None
    assert body.code == "INVALID_INPUT"
    assert body.message == "bad"
    assert [(e.field, e.message, dict(e.extensions)) for e in body.errors] == [
        ("$.cancelations[0].quantity", "must be >= 0", {"minimum": 0}),
        (None, "no field", {}),
    ]
    assert body.extensions == {"trace": "t"}


def test_parse_error_body_code_only() -> None:
    body = parse_error_body({"code": "DATA_NOT_FOUND"})
    assert body is not None
    assert (body.code, body.message) == ("DATA_NOT_FOUND", "")


@pytest.mark.parametrize("data", [None, "<html>", [], {}, {"error": "x"}, {"message": 5}])
def test_parse_error_body_not_an_error(data: object) -> None:
    assert parse_error_body(data) is None


def test_parse_error_body_non_json_text() -> None:
    with pytest.raises(ValueError, match="Expecting value"):
        loads("<html><body>502 Bad Gateway</body></html>")
    assert parse_error_body("<html><body>502 Bad Gateway</body></html>") is None


@pytest.mark.parametrize("odd", [{"errors": 5}, {"errors": "abc"}, {"extensions": "x"},
                                 {"extensions": [1, 2]},
                                 {"errors": [{"message": "m", "extensions": "oops"}]},
                                 {"errors": [{"message": "m", "extensions": [1]}]}])
def test_parse_error_body_tolerates_odd_shapes(odd: dict[str, Any]) -> None:
    body = parse_error_body({"code": "X", "message": "m", **odd})
    assert body is not None
    assert body.code == "X"
    assert body.extensions == {}
    assert all(dict(item.extensions) == {} for item in body.errors)


def test_request_body_is_the_generic_writer_s_bytes() -> None:
    # request_body writes a CancelRequest line by line (cancelation_json); the generic
    # unstructure-and-encode path gives the same bytes, and still serves subclasses.
    from mirakl_cancel._serde import converter, dumps

    class Tagged(CancelRequest):
        pass

    rnd = random.Random(7)
    for _ in range(200):
        lines = [minimal_line(
            quantity=rnd.randint(0, 9), reason=rnd.choice(list(CancelReason)),
            order_line_id=rnd.choice(["L\u00e9", 'L"1', "L-9"]),
            product_id=rnd.choice([None, "P-\u30d7"]),
            shipping_price=eur(rnd.choice(["0", "4.50", "1E+2"])),
            taxes=[Tax("VAT", eur(rnd.choice(["0.10", "1E+2", "7"])))] * rnd.randint(0, 2),
            shipping_taxes=[Tax("S", eur("1E-7"))] * rnd.randint(0, 1))
            for _ in range(rnd.randint(1, 3))]
        request = CancelRequest("O", lines)
        generic = dumps(converter.unstructure(request)).encode()
        assert request_body(request) == generic
        assert request_body(Tagged("O", lines)) == generic
