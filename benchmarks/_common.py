"""What every figure shares: sizes, payloads, the result record, small statistics."""

from __future__ import annotations

import compileall
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import mirakl_cancel
from mirakl_cancel import Cancelation, CancelReason, CancelRequest, Money

__all__ = [
    "Figure",
    "Sizes",
    "body_dict",
    "fmt_ratio",
    "fresh_cache_dir",
    "load_sim_orders",
    "make_requests",
    "median",
    "steal_seconds",
]

#: Holds every cache directory `fresh_cache_dir` makes; removed when the benchmarks exit.
_CACHES = tempfile.TemporaryDirectory(prefix="mirakl-bench-cache-")


def fresh_cache_dir() -> str:
    """A new, empty directory for `MIRAKL_CANCEL_CACHE_DIR`. The poll-state file kept
    there (the machine-wide record of status reads) would otherwise be the user's own,
    gathering every run's reads (hundreds of thousands of rows after a few figures):
    each later process loads them, so whichever side of a comparison ran second would
    pay for the first, and the user's real record would fill with benchmark actions."""
    return tempfile.mkdtemp(dir=_CACHES.name)


def fresh_bytecode() -> bool:
    """Compile the library's modules whose cached bytecode is missing or older than their
    source, as an installed package has them; True if every one compiled (or was fresh).

    Every measured side is a new process that imports the library. Where bytecode is
    not written on import (`PYTHONDONTWRITEBYTECODE`, as on this machine's image) and the
    sources changed since it last was (any edit, in a checkout), each process compiles
    them again: the CLI job, which imports the journal and the job modules on top of the
    library, then paid ~0.2 s more per run than the library side (import 0.59-0.72 s
    against 0.42-0.51 s once compiled), a tenth of figure 8's ratio at 1,500 requests.
    A package a user installs comes compiled, so the figures measure it that way."""
    package = Path(mirakl_cancel.__file__).parent
    return bool(compileall.compile_dir(package, quiet=2))


def steal_seconds() -> float | None:
    """CPU time the hypervisor has taken from this machine so far, all cores together
    (the `steal` column of Linux's /proc/stat), or None where it cannot be read.

    On a virtual machine it is what makes two identical runs differ by a third: a
    process whose threads wait for a core has a wall time well above its CPU time. The
    difference over a run says how much of its wall time was not its own."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
        hertz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / hertz


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; `quick` is for smoke tests, not for numbers."""

    overhead_requests: int = 10_000
    overhead_rounds: int = 3
    overhead_concurrency: int = 32
    latency_requests: int = 6_000
    latency_seconds: float = 0.050
    latency_concurrency: int = 64
    latency_rounds: int = 2
    tracker_actions: int = 100_000
    tracker_dispatch: int = 20_000
    polling_actions: int = 300
    polling_scale: float = 0.01
    rate_limit: float = 100.0
    rate_limit_requests: int = 2_000
    batching_lines: int = 10_000
    batching_orders: int = 2_000
    journal_requests: int = 1_500
    journal_requests_large: int = 5_000
    #: A third size for figure 8, run only with `--big` (it doubles the figure's time):
    #: where the ratio goes past 5,000 requests.
    journal_requests_big: int = 10_000
    #: `--big`: also the figures and sizes that take minutes.
    big: bool = False
    #: Figure 7 runs each side this many times, interleaved, and reads the median of
    #: the rounds' own ratios: with the best of 3 of each side, identical trees ranged
    #: 1.02x-1.41x on figure 8 in one afternoon.
    journal_rounds: int = 7
    #: Figure 8's rounds: its 5,000-request median still ranged 1.14x-1.34x over five runs
    #: of one afternoon at 7 (session 16), as wide as the distance to its goal.
    overhead_journal_rounds: int = 11
    big_rows: int = 1_000_000
    big_run_seconds: float = 10.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(overhead_requests=300, overhead_rounds=1, latency_requests=320,
                   latency_rounds=1, tracker_actions=2_000, tracker_dispatch=500,
                   polling_actions=20, polling_scale=0.001, rate_limit_requests=150,
                   batching_lines=500, batching_orders=100, journal_requests=60,
                   journal_requests_large=120, journal_requests_big=240, journal_rounds=1,
                   overhead_journal_rounds=1,
                   big_rows=5_000, big_run_seconds=1.0)


@dataclass
class Figure:
    """One figure's outcome: a headline ratio against a same-run baseline, and details."""

    number: int
    title: str
    result: str
    baseline: str
    ratio: str
    goal: str
    met: bool | None
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


_PRICE = Money(Decimal("19.99"), "EUR")
_SHIPPING = Money(Decimal("5.99"), "EUR")


def make_requests(order_ids: Sequence[str], line_ids: Sequence[str] | None = None,
                  currencies: Sequence[str] | None = None) -> list[CancelRequest]:
    """One single-line cancel per order (line `<order>-1` unless given)."""
    requests = []
    for i, order_id in enumerate(order_ids):
        if currencies is None:
            price, shipping = _PRICE, _SHIPPING
        else:
            price = Money(_PRICE.amount, currencies[i])
            shipping = Money(_SHIPPING.amount, currencies[i])
        line_id = line_ids[i] if line_ids is not None else f"{order_id}-1"
        requests.append(CancelRequest(order_id, [Cancelation(
            quantity=1, reason=CancelReason.OUT_OF_STOCK, price=price,
            shipping_price=shipping, order_line_id=line_id)]))
    return requests


def body_dict(request: CancelRequest) -> dict[str, Any]:
    """The same body as plain data, as someone writing their own loop would hold it."""
    return {"cancelations": [
        {"quantity": c.quantity, "reason": c.reason.value,
         "price": {"amount": float(c.price.amount), "currency": c.price.currency},
         "shipping_price": {"amount": float(c.shipping_price.amount),
                            "currency": c.shipping_price.currency},
         "order_line_id": c.order_line_id}
        for c in request.cancelations]}


def load_sim_orders(path: Path) -> list[tuple[str, str, str]]:
    """(order id, first line id, currency) of each cancellable order a simulator wrote."""
    orders = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for order in orders:
        if order.get("status") != "AWAITING_SHIPMENT" or not order.get("lines"):
            continue
        line = order["lines"][0]
        rows.append((order["id"], line["id"], line.get("currency", "EUR")))
    return rows
