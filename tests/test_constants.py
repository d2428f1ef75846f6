"""Each limit the library keeps has one home: mirakl_cancel/_constants.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mirakl_cancel
from mirakl_cancel import PollPolicy, ReconcilePolicy, RetryPolicy, Timeout
from mirakl_cancel import _constants as constants

PACKAGE = Path(mirakl_cancel.__file__).parent
#: The simulator is the API's stand-in and shares nothing with the client on purpose.
CLIENT_MODULES = sorted(p for p in PACKAGE.rglob("*.py")
                        if p.name != "_constants.py" and "simulator" not in p.parts)


@pytest.mark.parametrize("path", CLIENT_MODULES,
                         ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_the_api_ceiling_is_not_restated(path: Path) -> None:
    literals = [node.lineno for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Constant) and type(node.value) is float
                and node.value == constants.API_MIN_INTERVAL]
    where = path.relative_to(PACKAGE)
    assert literals == [], f"{where}: use mirakl_cancel._constants (lines {literals})"


def test_public_defaults_are_the_documented_ones() -> None:
    # The README documents these numbers; the constants module must not move them.
    assert constants.API_MIN_INTERVAL == 60.0
    assert PollPolicy() == PollPolicy(min_interval=60.0, interval=300.0, first_delay=60.0)
    assert Timeout() == Timeout(connect=10.0, read=30.0)
    assert RetryPolicy() == RetryPolicy(max_attempts=5, max_time=120.0, base_delay=0.5,
                                        max_delay=30.0, max_retry_after=300.0)
    assert ReconcilePolicy() == ReconcilePolicy(settle=900.0, skew=120.0)
    assert mirakl_cancel.DEFAULT_BASE_URL == "https://miraklconnect.com/api"
    assert constants.LIST_ORDERS_MAX_IDS == 100
