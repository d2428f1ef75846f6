"""mirakl-cancel: cancel order lines on Mirakl Connect at volume, and follow each
cancellation to its final state, without ever cancelling twice or polling too fast.

Every public name is importable from here, and only these (`__all__` is closed and
pinned by tests/test_exported_members.py); the modules behind them may move.
"""

from ._constants import DEFAULT_BASE_URL
from ._http.auth import Auth, ClientCredentials, StaticToken
from ._http.retry import RetryPolicy
from ._http.transport import Limits, Timeout, TransportStats
from ._observe.guards import Guards, SendAttempt
from ._observe.hooks import (
    ActionFinalEvent,
    ActionTrackedEvent,
    Call,
    CallEndEvent,
    CallOutcome,
    Hooks,
    Observer,
    PollEvent,
    RateLimitEvent,
    RequestEvent,
    ResponseEvent,
    RetryEvent,
    UncertainEvent,
)
from ._observe.logs import configure_from_env as _configure_logging_from_env
from ._observe.metrics import PrometheusCollector
from ._observe.otel import TracingObserver
from ._stores.postgres import PostgresStore
from ._version import __version__
from .batching import CancelBatcher, CancelOutcome, LineCancel, group_by_order
from .bulk import CancelResult, Outcome, cancel_and_track
from .client import MiraklConnectClient
from .errors import (
    ActionTimeoutError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    ErrorItem,
    MiraklError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StoreError,
    SyncClientInLoopError,
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
    Adjustment,
    AdjustmentType,
    Cancelation,
    CancelReason,
    CancelRequest,
    Money,
    Order,
    OrderLine,
    Tax,
)
from .reconcile import ReconcilePolicy, Reconciliation, SentCancel, Verdict, reconcile
from .tracker import ActionTracker, PollPolicy, TrackedResult, TrackerStats

__all__ = [
    "DEFAULT_BASE_URL",
    "ActionAccepted",
    "ActionError",
    "ActionFinalEvent",
    "ActionState",
    "ActionStatus",
    "ActionTimeoutError",
    "ActionTrackedEvent",
    "ActionTracker",
    "Adjustment",
    "AdjustmentType",
    "ApiError",
    "Auth",
    "AuthenticationError",
    "BadRequestError",
    "Call",
    "CallEndEvent",
    "CallOutcome",
    "CancelBatcher",
    "CancelOutcome",
    "CancelReason",
    "CancelRequest",
    "CancelResult",
    "Cancelation",
    "ClientCredentials",
    "ConnectError",
    "ErrorItem",
    "Guards",
    "Hooks",
    "Limits",
    "LineCancel",
    "MiraklConnectClient",
    "MiraklError",
    "Money",
    "NotFoundError",
    "Observer",
    "Order",
    "OrderLine",
    "Outcome",
    "PermissionDeniedError",
    "PollEvent",
    "PollPolicy",
    "PostgresStore",
    "PrometheusCollector",
    "RateLimitError",
    "RateLimitEvent",
    "ReconcilePolicy",
    "Reconciliation",
    "RequestEvent",
    "ResponseEvent",
    "RetryEvent",
    "RetryPolicy",
    "SendAttempt",
    "SentCancel",
    "ServerError",
    "StaticToken",
    "StoreError",
    "SyncClientInLoopError",
    "Tax",
    "Timeout",
    "TracingObserver",
    "TrackedResult",
    "TrackerStats",
    "TransportError",
    "TransportStats",
    "UncertainDeliveryError",
    "UncertainEvent",
    "ValidationError",
    "ValidationIssue",
    "Verdict",
    "__version__",
    "cancel_and_track",
    "group_by_order",
    "reconcile",
]

# Public types present themselves as `mirakl_cancel.X` (in reprs, tracebacks, docs and
# pickles), not as the private module that happens to define them today: moving code
# between modules must not change what users see or pickle.
def _present_as_package() -> None:
    for name in __all__:
        value = globals()[name]
        if isinstance(value, type) or callable(value):
            value.__module__ = __name__


_present_as_package()


# MIRAKL_CANCEL_LOG=debug|info: stderr logging without code (as OPENAI_LOG does).
_configure_logging_from_env()
