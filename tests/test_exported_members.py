"""The public surface is closed: exactly these names, each presenting as `mirakl_cancel.X`.

Adding or removing a public name is a decision (and a CHANGELOG entry), so it must
change this list too; a helper that leaks into the package namespace fails here.
"""

from __future__ import annotations

import types

import mirakl_cancel
import mirakl_cancel.testing

EXPECTED = [
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


def test_all_is_pinned() -> None:
    assert mirakl_cancel.__all__ == EXPECTED


def test_every_public_attribute_is_exported() -> None:
    # Like httpx's test: anything public in the namespace (but the submodules, which
    # importing them binds there) must be in __all__, and nothing else may be.
    public = {name for name, value in vars(mirakl_cancel).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    public.discard("reconcile")  # the function; it shadows the submodule of the same name
    assert public == set(mirakl_cancel.__all__) - {"__version__", "reconcile"}
    assert callable(mirakl_cancel.reconcile)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from mirakl_cancel import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(mirakl_cancel.__all__)


def test_public_types_present_as_the_package() -> None:
    wrong = {name: value.__module__ for name in mirakl_cancel.__all__
             if callable(value := getattr(mirakl_cancel, name))
             and value.__module__ != "mirakl_cancel"}
    assert wrong == {}
    assert repr(mirakl_cancel.RetryPolicy).startswith("<class 'mirakl_cancel.RetryPolicy'")


def test_the_testing_module_is_closed_too() -> None:
    # The clock seam's public face: `MiraklConnectClient(clock=...)` takes a Clock, and
    # ManualClock is the documented one; the real clock stays private (the default).
    assert mirakl_cancel.testing.__all__ == ["Answer", "Clock", "FakeStatusClient",
                                             "ManualClock"]
    for name in ("Clock", "FakeStatusClient", "ManualClock"):
        assert getattr(mirakl_cancel.testing, name).__module__ == "mirakl_cancel.testing"


def test_one_way_to_send_many() -> None:
    # `client.cancel_many(requests, concurrency=...)` is the public form; the module
    # function of the same name is gone, and internal parse types are not public.
    assert not hasattr(mirakl_cancel, "cancel_many")
    assert not hasattr(mirakl_cancel, "ErrorBody")
    assert callable(mirakl_cancel.MiraklConnectClient.cancel_many)
