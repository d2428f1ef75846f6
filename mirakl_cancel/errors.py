"""The exception tree: shallow, one place to catch everything (`MiraklError`).

Every failure the library raises is one of these. Low-level errors (aiohttp, asyncio,
JSON) are mapped to them in exactly one place, `mirakl_cancel._http.transport`, so that a
caller never needs to import aiohttp to handle a failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "ActionTimeoutError",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "ConnectError",
    "ErrorItem",
    "MiraklError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "StoreError",
    "SyncClientInLoopError",
    "TransportError",
    "UncertainDeliveryError",
    "ValidationError",
    "ValidationIssue",
]


@attrs.frozen
class ErrorItem:
    """One entry of the API's `Error.errors[]`: what went wrong, and where (a JsonPath)."""

    message: str
    field: str | None = None
    extensions: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ValidationIssue:
    """One problem found in a request before sending it, named by its field path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class MiraklError(Exception):
    """Base class of every error raised by mirakl-cancel.

    `resend_safe` says whether the request that failed certainly did not take effect,
    for a reason other than its content: it never left (no connection, no token, a
    long 429 pause), or the API refused it before processing it (401, 403, 429, 503).
    Sending the same cancel again, later or with other credentials, cannot then cancel
    twice. It is decided once, where the error is made (the transport), and is False
    for anything else: a 400 or 404 (the same request would be refused again), and
    always for `UncertainDeliveryError`.

    Every error pickles and unpickles with its attributes (to cross a process pool);
    its cause and traceback are not kept, as for any pickled exception.
    """

    resend_safe: bool = False

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds an exception as `type(*args)`: subclasses whose __init__
        # takes other arguments (ApiError's status, code, message) could not be unpickled.
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[MiraklError], args: tuple[Any, ...],
             state: dict[str, Any]) -> MiraklError:
    """Unpickle a `MiraklError` without calling its __init__ (see `__reduce__`)."""
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class ValidationError(MiraklError, ValueError):
    """The request is invalid; it was not sent."""

    def __init__(self, issues: Sequence[ValidationIssue]) -> None:
        self.issues: tuple[ValidationIssue, ...] = tuple(issues)
        super().__init__("; ".join(str(issue) for issue in self.issues) or "invalid request")

    @property
    def fields(self) -> tuple[str, ...]:
        """The offending field paths, in the order they were found."""
        return tuple(issue.path for issue in self.issues)


class ApiError(MiraklError):
    """Mirakl Connect answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        errors: Sequence[ErrorItem] = (),
        extensions: Mapping[str, Any] | None = None,
        *,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors: tuple[ErrorItem, ...] = tuple(errors)
        self.extensions: Mapping[str, Any] = dict(extensions or {})
        #: The raw body (truncated) when it was not the API's JSON Error, e.g. an HTML 502 page.
        self.body = body
        #: Seconds the server asked us to wait (Retry-After), when it said so.
        self.retry_after = retry_after
        super().__init__(self._summary())

    def _summary(self) -> str:
        head = f"HTTP {self.status}"
        if self.code:
            head += f" {self.code}"
        text = f"{head}: {self.message}" if self.message else head
        details = [f"{item.field}: {item.message}" if item.field else item.message
                   for item in self.errors]
        if details:
            text += " (" + "; ".join(details) + ")"
        return text


class BadRequestError(ApiError):
    """400: the API refused the request's content."""


class AuthenticationError(ApiError):
    """401: the token is missing, invalid or expired (after one refresh)."""


class PermissionDeniedError(ApiError):
    """403: the token lacks the scope for this operation."""


class NotFoundError(ApiError):
    """404: the order or action does not exist."""


class RateLimitError(ApiError):
    """429: too many requests, and waiting was not allowed or would be too long."""


class ServerError(ApiError):
    """5xx: the API failed."""


class StoreError(MiraklError):
    """The shared store (PostgreSQL) failed or cannot be reached; nothing was sent for it."""


class TransportError(MiraklError):
    """The exchange failed below HTTP (connection, timeout) and gave no answer."""


class ConnectError(TransportError):
    """No connection could be made: the request was certainly not sent."""


class UncertainDeliveryError(TransportError):
    """A cancel may have reached the server, but no answer came back: do not resend blindly."""

    def __init__(self, message: str, *, order_id: str | None = None) -> None:
        self.order_id = order_id
        super().__init__(message)


class ActionTimeoutError(MiraklError):
    """An action was still pending when the tracking timeout expired."""

    def __init__(self, action_id: str, waited: float) -> None:
        self.action_id = action_id
        self.waited = waited
        super().__init__(f"action {action_id} still pending after {waited:.1f}s")


_STATUS_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


def api_error_class(status: int) -> type[ApiError]:
    """The most specific ApiError subclass for an HTTP status."""
    if status >= 500:
        return ServerError
    return _STATUS_ERRORS.get(status, ApiError)


class SyncClientInLoopError(MiraklError):
    """The blocking client (`mirakl_cancel.sync`) was called inside a running event loop,
    which it would freeze: async code uses the async client."""
