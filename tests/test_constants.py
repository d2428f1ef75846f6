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


#: Parameters whose defaults are not the library's behaviour: a test double's origin of
#: manual time, and its bounds on how long a test waits.
NOT_BEHAVIOUR = {("ManualClock", "__init__"), ("ManualClock", "next_due"),
                 ("ManualClock", "run_until")}


def _float_defaults(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(class, function, line) of every float literal given as a parameter default,
    but the neutral ones (0.0: none, 1.0: whole, e.g. a jitter fraction)."""
    found = []
    for owner in ast.walk(tree):
        for node in ast.iter_child_nodes(owner):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            cls = owner.name if isinstance(owner, ast.ClassDef) else ""
            defaults = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
            found += [(cls, node.name, d.lineno) for d in defaults
                      if isinstance(d, ast.Constant) and type(d.value) is float
                      and d.value not in (0.0, 1.0)]
    return found


LIBRARY_MODULES = sorted(p for p in PACKAGE.rglob("*.py")
                         if p.name != "_constants.py" and "simulator" not in p.parts)


@pytest.mark.parametrize("path", LIBRARY_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_duration_default_comes_from_the_constants(path: Path) -> None:
    # A timeout, lease, interval or pause given as a default is behaviour: it is named
    # in _constants.py (one home, documented there), never a literal in a signature.
    found = [(cls, name, line)
             for cls, name, line in _float_defaults(ast.parse(path.read_text(encoding="utf-8")))
             if (cls, name) not in NOT_BEHAVIOUR]
    assert found == [], f"{path.name}: name these defaults in mirakl_cancel._constants"


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
    assert constants.DEFAULT_LEASE == 30.0  # `mirakl-cancel run --lease`
