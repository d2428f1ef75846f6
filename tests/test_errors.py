"""Unit tests of the error tree and of how HTTP answers become errors."""

from __future__ import annotations

import pickle
import re
from typing import Any

import pytest
from aioresponses import aioresponses

from mirakl_cancel import (
    ActionTimeoutError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    MiraklConnectClient,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerError,
    StaticToken,
    TransportError,
    UncertainDeliveryError,
    ValidationError,
)
from mirakl_cancel.errors import ErrorItem, ValidationIssue, api_error_class

BASE = "https://connect.example.com/api"
ANY = re.compile(r"^https://connect\.example\.com/.*$")
ERROR_BODY = {
    "code": "DATA_NOT_FOUND",
    "message": "An error occurred while processing your request",
    "errors": [{"message": "An error occurred while processing your request: id is null",
                "field": "input.account.id", "extensions": {"minLength": 1, "maxLength": 255}}],
    "extensions": {"minLength": 1, "maxLength": 255},
}


def client() -> MiraklConnectClient:
    return MiraklConnectClient(auth=StaticToken("t"), base_url=BASE,
                               retry=RetryPolicy(max_attempts=1))


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError),
     (404, NotFoundError), (429, RateLimitError), (500, ServerError), (502, ServerError),
     (503, ServerError), (504, ServerError), (599, ServerError), (409, ApiError),
     (418, ApiError), (302, ApiError)],
)
def test_api_error_class(status: int, cls: type[ApiError]) -> None:
    assert api_error_class(status) is cls


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError),
     (404, NotFoundError), (409, ApiError), (429, RateLimitError), (500, ServerError),
     (502, ServerError), (503, ServerError), (504, ServerError)],
)
async def test_status_mapping_over_http(mocked: aioresponses, status: int,
                                        cls: type[ApiError]) -> None:
    mocked.get(ANY, status=status, payload=ERROR_BODY, headers={"Retry-After": "12"})
    async with client() as c:
        with pytest.raises(ApiError) as info:
            await c.get_action_status("act-1")
    error = info.value
    assert type(error) is cls
    assert error.status == status
    assert error.code == "DATA_NOT_FOUND"
    assert error.message == "An error occurred while processing your request"
    assert error.errors == (ErrorItem(
        message="An error occurred while processing your request: id is null",
        field="input.account.id", extensions={"minLength": 1, "maxLength": 255}),)
    assert error.extensions == {"minLength": 1, "maxLength": 255}
    assert error.retry_after == 12.0
    assert error.body == ""
    assert str(error) == (f"HTTP {status} DATA_NOT_FOUND: An error occurred while processing "
                          "your request (input.account.id: An error occurred while processing "
                          "your request: id is null)")


async def test_rate_limit_error_carries_retry_after(mocked: aioresponses) -> None:
    mocked.post(ANY, status=429, headers={"Retry-After": "42"}, body="")
    line = {"quantity": 1, "reason": "RETURN", "price": {"amount": "1", "currency": "EUR"},
            "shipping_price": {"amount": "0", "currency": "EUR"}, "order_line_id": "L-1"}
    async with client() as c:
        with pytest.raises(RateLimitError) as info:
            await c.cancel_order_lines("O", [line])
    assert info.value.retry_after == 42.0
    assert info.value.message == "empty answer"


async def test_html_502_is_still_useful(mocked: aioresponses) -> None:
    page = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    mocked.get(ANY, status=502, body=page, content_type="text/html")
    async with client() as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
    error = info.value
    assert error.status == 502
    assert error.code is None
    assert error.message == "unexpected answer (text/html)"
    assert error.body == page
    assert error.errors == ()
    assert error.extensions == {}
    assert error.retry_after is None
    assert str(error) == "HTTP 502: unexpected answer (text/html)"


async def test_empty_body_error(mocked: aioresponses) -> None:
    mocked.get(ANY, status=500, body="")
    async with client() as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
    assert info.value.message == "empty answer"
    assert info.value.body == ""
    assert str(info.value) == "HTTP 500: empty answer"


async def test_json_that_is_not_an_error_body(mocked: aioresponses) -> None:
    mocked.get(ANY, status=400, payload={"detail": "nope"})
    async with client() as c:
        with pytest.raises(BadRequestError) as info:
            await c.get_action_status("act-1")
    assert info.value.message == "unexpected answer (application/json)"
    assert info.value.body == '{"detail": "nope"}'


async def test_long_body_is_truncated(mocked: aioresponses) -> None:
    mocked.get(ANY, status=500, body="x" * 10_000, content_type="text/plain")
    async with client() as c:
        with pytest.raises(ServerError) as info:
            await c.get_action_status("act-1")
    assert len(info.value.body) == 2000


async def test_odd_error_body_shapes_do_not_crash(mocked: aioresponses) -> None:
    mocked.get(ANY, status=400, payload={"code": "X", "message": "m", "errors": 5,
                                         "extensions": "nope"})
    async with client() as c:
        with pytest.raises(BadRequestError) as info:
            await c.get_action_status("act-1")
    assert (info.value.code, info.value.errors, info.value.extensions) == ("X", (), {})


def test_api_error_summary_variants() -> None:
    assert str(ApiError(418, None, "")) == "HTTP 418"
    assert str(ApiError(400, "CODE", "")) == "HTTP 400 CODE"
    error = BadRequestError(400, "INVALID_INPUT", "bad",
                            [ErrorItem("no field"), ErrorItem("neg", field="$.q")])
    assert str(error) == "HTTP 400 INVALID_INPUT: bad (no field; $.q: neg)"
    assert error.errors[0].extensions == {}


def test_hierarchy() -> None:
    for cls in (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
                RateLimitError, ServerError):
        assert issubclass(cls, ApiError)
    for cls in (ApiError, TransportError, ValidationError, ActionTimeoutError):
        assert issubclass(cls, MiraklError)
    assert issubclass(UncertainDeliveryError, TransportError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(MiraklError, Exception)


def test_validation_error_fields_and_message() -> None:
    error = ValidationError([ValidationIssue("a.b", "bad"), ValidationIssue("c", "worse")])
    assert error.fields == ("a.b", "c")
    assert str(error) == "a.b: bad; c: worse"
    assert str(ValidationIssue("x", "y")) == "x: y"


def test_uncertain_and_timeout_errors() -> None:
    uncertain = UncertainDeliveryError("lost", order_id="O-1")
    assert (uncertain.order_id, str(uncertain)) == ("O-1", "lost")
    assert UncertainDeliveryError("lost").order_id is None
    timeout = ActionTimeoutError("act-1", 12.345)
    assert (timeout.action_id, timeout.waited) == ("act-1", 12.345)
    assert str(timeout) == "action act-1 still pending after 12.3s"


def test_api_error_keeps_a_copy_of_extensions() -> None:
    extensions: dict[str, Any] = {"k": 1}
    error = ApiError(400, "C", "m", extensions=extensions)
    extensions["k"] = 2
    assert error.extensions == {"k": 1}
    assert ApiError(400, "C", "m").extensions == {}


@pytest.mark.parametrize("error", [
    ApiError(418, "TEAPOT", "short and stout", [ErrorItem("bad", "lines[0]", {"k": 1})],
             {"trace": "x"}, body="<html>", retry_after=1.5),
    BadRequestError(400, "INVALID", "no"),
    AuthenticationError(401, None, "expired"),
    PermissionDeniedError(403, None, "scope"),
    NotFoundError(404, "DATA_NOT_FOUND", "gone"),
    RateLimitError(429, None, "slow down", retry_after=30.0),
    ServerError(503, None, "unavailable"),
    TransportError("reset"),
    UncertainDeliveryError("maybe", order_id="o-1"),
    ActionTimeoutError("act-1", 12.5),
    ValidationError([ValidationIssue("lines[0].quantity", "must be >= 0")]),
])
def test_every_error_pickles_and_unpickles(error: MiraklError) -> None:
    """Errors cross process pools (a fleet's workers): every attribute comes back."""
    error.resend_safe = isinstance(error, RateLimitError)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error) and again.args == error.args
    assert vars(again) == vars(error)
    assert again.resend_safe is error.resend_safe


def test_resend_safe_is_false_unless_the_transport_says_so() -> None:
    assert MiraklError().resend_safe is False
    assert ServerError(503, None, "x").resend_safe is False
    assert UncertainDeliveryError("maybe").resend_safe is False
