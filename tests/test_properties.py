"""Properties that must hold for every input, not only the examples we thought of."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from mirakl_cancel import Cancelation, CancelReason, CancelRequest, Money, Tax
from mirakl_cancel._http.urls import encode_segment
from mirakl_cancel._serde import loads, parse_action_status, request_body

amounts = st.decimals(min_value=0, max_value=Decimal("1e12"), allow_nan=False,
                      allow_infinity=False, places=4)
currencies = st.sampled_from(["EUR", "USD", "GBP", "JPY"])
ids = st.text(min_size=1, max_size=40)


@st.composite
def cancelations(draw: st.DrawFn) -> Cancelation:
    currency = draw(currencies)
    taxes = draw(st.lists(st.builds(Tax, st.text(min_size=1, max_size=8),
                                    st.builds(Money, amounts, st.just(currency))), max_size=3))
    return Cancelation(
        quantity=draw(st.integers(min_value=0, max_value=10**6)),
        reason=draw(st.sampled_from(list(CancelReason))),
        price=Money(draw(amounts), currency),
        shipping_price=Money(draw(amounts), currency),
        **draw(st.sampled_from([{"order_line_id": draw(ids)}, {"product_id": draw(ids)},
                                {"order_line_id": draw(ids), "product_id": draw(ids)}])),
        taxes=taxes,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(cancelations(), min_size=1, max_size=4))
def test_every_amount_arrives_exactly_and_the_body_is_plain_json(
        items: list[Cancelation]) -> None:
    body = request_body(CancelRequest("O", items))
    json.loads(body)  # valid JSON for any standard parser
    sent = loads(body)["cancelations"]
    for original, wire in zip(items, sent, strict=True):
        assert Decimal(wire["price"]["amount"]) == original.price.amount
        assert Decimal(wire["shipping_price"]["amount"]) == original.shipping_price.amount
        assert [Decimal(t["amount"]["amount"]) for t in wire.get("taxes", [])] == [
            t.amount.amount for t in original.taxes]
        assert wire["quantity"] == original.quantity
        assert ("order_line_id" in wire) == (original.order_line_id is not None)


@given(ids)
def test_any_id_stays_one_path_segment(value: str) -> None:
    encoded = encode_segment(value)
    assert "/" not in encoded and "?" not in encoded and "#" not in encoded
    assert encoded not in (".", "..")
    from urllib.parse import unquote
    assert unquote(encoded) == value


@given(st.text(), st.dictionaries(st.text(), st.text() | st.integers() | st.none()))
def test_any_status_string_parses_and_is_kept_raw(status: str, extra: dict[str, object]) -> None:
    parsed = parse_action_status({**extra, "id": "a", "status": status,
                                  "created_at": "2021-07-06T09:24:36.32Z"})
    assert parsed.raw_status == status
