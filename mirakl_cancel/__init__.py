"""mirakl-cancel: cancel order lines on Mirakl Connect at volume, and follow each
cancellation to its final state, without ever cancelling twice or polling too fast.
"""

from ._transport import RetryPolicy, Timeout, TransportStats
from ._version import __version__
from .auth import Auth, ClientCredentials, StaticToken
from .batching import CancelOutcome, LineCancel, cancel_many, group_by_order
from .client import DEFAULT_BASE_URL, MiraklConnectClient
from .errors import (
    ActionTimeoutError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ErrorItem,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    TransportError,
    UncertainDeliveryError,
    ValidationError,
    ValidationIssue,
)
from .models import (
    ActionAccepted,
    ActionError,
    ActionState,
    ActionStatus,
    Cancelation,
    CancelReason,
    CancelRequest,
    ErrorBody,
    Money,
    Tax,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ActionAccepted",
    "ActionError",
    "ActionState",
    "ActionStatus",
    "ActionTimeoutError",
    "ApiError",
    "Auth",
    "AuthenticationError",
    "BadRequestError",
    "CancelOutcome",
    "CancelReason",
    "CancelRequest",
    "Cancelation",
    "ClientCredentials",
    "ErrorBody",
    "ErrorItem",
    "LineCancel",
    "MiraklConnectClient",
    "MiraklError",
    "Money",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "StaticToken",
    "Tax",
    "Timeout",
    "TransportError",
    "TransportStats",
    "UncertainDeliveryError",
    "ValidationError",
    "ValidationIssue",
    "__version__",
    "cancel_many",
    "group_by_order",
]
