"""Unit tests of the value types: every construction rule, all problems at once, frozen."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import attrs
import pytest

from mirakl_cancel import (
    ActionAccepted,
    ActionError,
    ActionState,
    ActionStatus,
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
    Tax,
    ValidationError,
)
from mirakl_cancel._serde import ErrorBody
from mirakl_cancel.errors import ValidationIssue
from mirakl_cancel.models import prefix_issues

EUR = "EUR"


def eur(amount: object = "1.00") -> Money:
    return Money(amount, EUR)  # type: ignore[arg-type]


def line(**overrides: object) -> Cancelation:
    fields: dict[str, object] = {
        "quantity": 1,
        "reason": CancelReason.OUT_OF_STOCK,
        "price": eur("10.00"),
        "shipping_price": eur("0"),
        "order_line_id": "L-1",
    }
    fields.update(overrides)
    return Cancelation(**fields)  # type: ignore[arg-type]


# --- Money ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (Decimal("19.99"), Decimal("19.99")),
        (Decimal("0.10"), Decimal("0.10")),
        (0, Decimal(0)),
        (15, Decimal(15)),
        ("19.99", Decimal("19.99")),
        ("  7.5 ", Decimal("7.5")),
        ("1E+2", Decimal("1E+2")),
        ("0", Decimal(0)),
    ],
)
def test_money_accepts_decimal_int_and_str(given: object, expected: Decimal) -> None:
    money = Money(given, "EUR")  # type: ignore[arg-type]
    assert isinstance(money.amount, Decimal)
    assert money.amount == expected
    assert str(money.amount) == str(expected)  # the exact digits are kept


def test_money_keeps_trailing_zeros() -> None:
    assert str(Money("0.10", "EUR").amount) == "0.10"
    assert str(Money(Decimal("5.000"), "EUR").amount) == "5.000"


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        (0.1, "float"),
        (1.0, "float"),
        (True, "bool"),
        (False, "bool"),
        (Decimal("NaN"), "finite"),
        (Decimal("sNaN"), "finite"),
        (Decimal("Infinity"), "finite"),
        (Decimal("-Infinity"), "finite"),
        ("NaN", "finite"),
        ("inf", "finite"),
        (Decimal("-0.01"), "greater than or equal to 0"),
        (-1, "greater than or equal to 0"),
        ("-5", "greater than or equal to 0"),
        ("12,50", "not a decimal number"),
        ("", "not a decimal number"),
        ("abc", "not a decimal number"),
        (None, "NoneType"),
        ([1], "list"),
    ],
)
def test_money_refuses_bad_amounts(given: object, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        Money(given, "EUR")  # type: ignore[arg-type]
    assert info.value.fields == ("amount",)
    assert fragment in str(info.value)


@pytest.mark.parametrize("currency", ["eur", "EU", "EURO", "", " EUR", "E1R", "ÉUR", None, 978])
def test_money_currency_is_three_upper_case_letters(currency: object) -> None:
    with pytest.raises(ValidationError) as info:
        Money("1", currency)  # type: ignore[arg-type]
    assert info.value.fields == ("currency",)
    assert "ISO-4217" in str(info.value)


@pytest.mark.parametrize("currency", ["EUR", "USD", "GBP", "XXX"])
def test_money_valid_currencies(currency: str) -> None:
    assert Money(1, currency).currency == currency


def test_money_reports_amount_and_currency_together() -> None:
    with pytest.raises(ValidationError) as info:
        Money(0.5, "eur")  # type: ignore[arg-type]
    assert info.value.fields == ("amount", "currency")
    assert len(info.value.issues) == 2


def test_money_is_frozen_and_comparable() -> None:
    money = Money("1.50", "EUR")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        money.amount = Decimal(2)  # type: ignore[misc]
    assert money == Money(Decimal("1.5"), "EUR")
    assert money != Money("1.50", "USD")


# --- Tax ------------------------------------------------------------------------------


def test_tax_ok() -> None:
    tax = Tax("VAT20", eur("2.00"))
    assert tax.code == "VAT20"
    assert tax.amount == eur("2.00")


@pytest.mark.parametrize("code", ["", None, 5])
def test_tax_code_must_be_non_empty(code: object) -> None:
    with pytest.raises(ValidationError) as info:
        Tax(code, eur())  # type: ignore[arg-type]
    assert info.value.fields == ("code",)


def test_tax_amount_must_be_money_and_all_issues_reported() -> None:
    with pytest.raises(ValidationError) as info:
        Tax("", Decimal(1))  # type: ignore[arg-type]
    assert info.value.fields == ("code", "amount")


# --- Cancelation ----------------------------------------------------------------------


def test_cancelation_defaults_and_coercions() -> None:
    c = line(reason="RETURN", taxes=[Tax("T", eur("1"))], shipping_taxes=None,
             order_line_id=None, product_id="P-1")
    assert c.reason is CancelReason.RETURN
    assert isinstance(c.taxes, tuple)
    assert c.taxes == (Tax("T", eur("1")),)
    assert c.shipping_taxes == ()
    assert c.order_line_id is None


def test_cancelation_accepts_zero_quantity_and_both_ids() -> None:
    c = line(quantity=0, order_line_id="L-1", product_id="SKU-1")
    assert c.quantity == 0
    assert (c.order_line_id, c.product_id) == ("L-1", "SKU-1")


@pytest.mark.parametrize("reason", list(CancelReason))
def test_cancelation_every_reason(reason: CancelReason) -> None:
    assert line(reason=reason.value).reason is reason


@pytest.mark.parametrize("quantity", [-1, True, False, 1.0, 2.5, "1", None, Decimal(1)])
def test_cancelation_quantity_must_be_integer_ge_0(quantity: object) -> None:
    with pytest.raises(ValidationError) as info:
        line(quantity=quantity)
    assert info.value.fields == ("quantity",)


@pytest.mark.parametrize("reason", ["", "out_of_stock", "CANCELLED", None, 3])
def test_cancelation_reason_must_be_one_of_seven(reason: object) -> None:
    with pytest.raises(ValidationError) as info:
        line(reason=reason)
    assert info.value.fields == ("reason",)
    for allowed in CancelReason:
        assert allowed.value in str(info.value)


def test_cancelation_reason_message_is_deterministic() -> None:
    with pytest.raises(ValidationError) as info:
        line(reason="NOPE")
    listed = ", ".join(r.value for r in CancelReason)
    assert listed in str(info.value)


@pytest.mark.parametrize("field", ["order_line_id", "product_id"])
@pytest.mark.parametrize("value", ["", 12])
def test_cancelation_ids_non_empty_when_given(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        line(**{field: value})
    assert info.value.fields == (field,)


def test_cancelation_money_fields_must_be_money() -> None:
    with pytest.raises(ValidationError) as info:
        line(price=Decimal(1), shipping_price="0", taxes=["x"], shipping_taxes=[object()])
    assert set(info.value.fields) == {"price", "shipping_price", "taxes[0]", "shipping_taxes[0]"}


def test_cancelation_mixed_currencies_named_by_path() -> None:
    with pytest.raises(ValidationError) as info:
        line(
            shipping_price=Money("1", "USD"),
            taxes=[Tax("A", eur()), Tax("B", Money("1", "GBP"))],
            shipping_taxes=[Tax("S", Money("1", "USD"))],
        )
    assert info.value.fields == (
        "shipping_price.currency",
        "taxes[1].amount.currency",
        "shipping_taxes[0].amount.currency",
    )
    assert "must match the price currency EUR" in str(info.value)


def test_cancelation_lists_all_problems_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        line(quantity=-3, reason="WHATEVER", order_line_id="", product_id="",
             shipping_price=Money("1", "USD"))
    assert info.value.fields == (
        "quantity", "reason", "order_line_id", "product_id", "shipping_price.currency",
    )
    assert len(info.value.issues) == 5
    message = str(info.value)
    for path in info.value.fields:
        assert f"{path}: " in message


def test_cancelation_is_frozen() -> None:
    c = line()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.quantity = 5  # type: ignore[misc]


def test_validation_error_is_a_value_error_and_mirakl_error() -> None:
    from mirakl_cancel import MiraklError

    with pytest.raises(ValidationError) as info:
        line(quantity=-1)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MiraklError)
    assert info.value.issues == (
        ValidationIssue("quantity", "must be greater than or equal to 0"),
    )


def test_validation_error_without_issues_has_a_message() -> None:
    assert str(ValidationError([])) == "invalid request"


# --- CancelRequest --------------------------------------------------------------------


def test_cancel_request_ok_and_total_quantity() -> None:
    request = CancelRequest("O-1", [line(quantity=2), line(quantity=3)])
    assert isinstance(request.cancelations, tuple)
    assert request.total_quantity == 5


@pytest.mark.parametrize("order_id", ["", "   ", None, 42])
def test_cancel_request_needs_order_id(order_id: object) -> None:
    with pytest.raises(ValidationError) as info:
        CancelRequest(order_id, [line()])  # type: ignore[arg-type]
    assert info.value.fields == ("order_id",)


def test_cancel_request_needs_a_cancelation_and_reports_everything() -> None:
    with pytest.raises(ValidationError) as info:
        CancelRequest("", [])
    assert info.value.fields == ("order_id", "cancelations")


def test_cancel_request_items_must_be_cancelations() -> None:
    with pytest.raises(ValidationError) as info:
        CancelRequest("O-1", [line(), {"quantity": 1}])  # type: ignore[list-item]
    assert info.value.fields == ("cancelations[1]",)


def test_cancel_request_is_frozen() -> None:
    request = CancelRequest("O-1", [line()])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        request.order_id = "O-2"  # type: ignore[misc]


# --- responses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("PENDING", ActionState.PENDING),
        ("SUCCESS", ActionState.SUCCESS),
        ("FAILED", ActionState.FAILED),
        ("PARTIALLY_FAILED", ActionState.UNKNOWN),
        ("success", ActionState.UNKNOWN),
        ("", ActionState.UNKNOWN),
        ("UNKNOWN", ActionState.UNKNOWN),
    ],
)
def test_action_state_parse(raw: str, state: ActionState) -> None:
    assert ActionState.parse(raw) is state


def test_action_status_keeps_raw_and_terminality() -> None:
    unknown = ActionStatus(id="a", state=ActionState.parse("ROLLED_BACK"), raw_status="ROLLED_BACK")
    assert unknown.state is ActionState.UNKNOWN
    assert unknown.raw_status == "ROLLED_BACK"
    assert not unknown.is_terminal
    assert not ActionStatus("a", ActionState.PENDING).is_terminal
    assert ActionStatus("a", ActionState.SUCCESS).is_terminal
    assert ActionStatus("a", ActionState.FAILED, errors=(ActionError("X"),)).is_terminal


def test_enums_are_strings() -> None:
    assert str(CancelReason.DEFECT) == "DEFECT"
    assert CancelReason.DEFECT == "DEFECT"
    assert str(ActionState.PENDING) == "PENDING"
    assert len(CancelReason) == 7


def test_response_models_are_frozen() -> None:
    accepted = ActionAccepted(action_id="a", order_id="o")
    assert accepted.tracking_id is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        accepted.action_id = "b"  # type: ignore[misc]
    status = ActionStatus("a", ActionState.PENDING, created_at=datetime.now(timezone.utc))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        status.state = ActionState.SUCCESS  # type: ignore[misc]
    assert ActionError("CODE").message == ""
    body = ErrorBody(code=None, message="m")
    assert body.errors == ()
    assert body.extensions == {}


def test_prefix_issues() -> None:
    issues = [ValidationIssue("price.currency", "bad")]
    assert prefix_issues("cancelations[2]", issues) == [
        ValidationIssue("cancelations[2].price.currency", "bad")]
    assert prefix_issues("", issues) == issues
