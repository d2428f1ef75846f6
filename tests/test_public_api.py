"""The public surface DESIGN.md promises is importable from `mirakl_cancel` itself."""

from __future__ import annotations

import enum
import importlib

import pytest

import mirakl_cancel
from mirakl_cancel import errors as errors_module

MODELS = ["Money", "Tax", "CancelReason", "Cancelation", "CancelRequest", "ActionAccepted",
          "ActionState", "ActionStatus", "ActionError"]
CLIENT = ["MiraklConnectClient", "StaticToken", "ClientCredentials", "CancelOutcome",
          "group_by_order"]
ERRORS = ["MiraklError", "ValidationError", "ApiError", "BadRequestError",
          "AuthenticationError", "PermissionDeniedError", "NotFoundError", "RateLimitError",
          "ServerError", "TransportError", "UncertainDeliveryError", "ActionTimeoutError"]
#: Tracking and bulk (issue 3+): checked once they exist, skipped until then.
PENDING = ["PollPolicy", "ActionTracker", "cancel_and_track", "CancelResult", "Outcome"]


@pytest.mark.parametrize("name", MODELS + CLIENT + ERRORS)
def test_public_name_importable(name: str) -> None:
    module = importlib.import_module("mirakl_cancel")
    assert getattr(module, name) is not None
    assert name in mirakl_cancel.__all__


@pytest.mark.parametrize("name", PENDING)
def test_pending_public_name(name: str) -> None:
    if not hasattr(mirakl_cancel, name):
        pytest.skip(f"{name} is not built yet (tracking/bulk)")
    assert name in mirakl_cancel.__all__


def test_outcome_values_when_built() -> None:
    outcome = getattr(mirakl_cancel, "Outcome", None)
    if outcome is None:
        pytest.skip("Outcome is not built yet (bulk)")
    assert issubclass(outcome, enum.Enum)
    names = {member.name for member in outcome}
    assert {"SUCCEEDED", "FAILED", "REJECTED", "UNCERTAIN", "TIMED_OUT", "ERROR"} <= names


def test_all_resolves() -> None:
    for name in mirakl_cancel.__all__:
        assert hasattr(mirakl_cancel, name), name
    assert len(set(mirakl_cancel.__all__)) == len(mirakl_cancel.__all__)


@pytest.mark.parametrize("name", ERRORS)
def test_errors_are_re_exported_from_errors_module(name: str) -> None:
    assert getattr(mirakl_cancel, name) is getattr(errors_module, name)
    assert name in errors_module.__all__


def test_client_methods() -> None:
    client_cls = mirakl_cancel.MiraklConnectClient
    for method in ("cancel_order_lines", "get_action_status", "cancel_many", "__aenter__",
                   "__aexit__", "close"):
        assert callable(getattr(client_cls, method))


def test_version() -> None:
    from mirakl_cancel._version import __version__

    assert mirakl_cancel.__version__ == __version__
    assert __version__.count(".") >= 2


def test_enums() -> None:
    assert [r.value for r in mirakl_cancel.CancelReason] == [
        "CUSTOMER_CANCELATION", "OUT_OF_STOCK", "RETURN", "ITEM_NOT_RECEIVED", "AGREEMENT",
        "DEFECT", "UNABLE_TO_DELIVER"]
    assert {s.value for s in mirakl_cancel.ActionState} == {
        "PENDING", "SUCCESS", "FAILED", "UNKNOWN"}


def test_py_typed_marker() -> None:
    from importlib import resources

    assert resources.files("mirakl_cancel").joinpath("py.typed").is_file()
