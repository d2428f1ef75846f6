"""`mirakl-cancel demo`: a whole bulk job against the embedded simulator.

It exists to show, in half a minute and without credentials, what a real job looks
like: thousands of rows, a progress bar, rate limits and gateway errors absorbed,
some rows failing for business reasons (orders already shipped, quantities beyond
what is left, unknown orders), a report, and the simulator's own count of duplicate
POSTs and polling-ceiling violations, both zero. It drives the very code path of
`mirakl-cancel run --reconcile --resend-unapplied` (same input reader, journal,
tracker, reconciliation and report), only with durations scaled down by `--time-scale`.

Reconciliation is on because the faults make some cancels UNCERTAIN: connections
dropped after the cancel was processed (the order shows its adjustment: SUCCEEDED
without a resend) and 502s from the gateway before it was (no adjustment: proven not
applied, sent again). So the demo ends with no UNCERTAIN row and no duplicate POST.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TextIO

from .._constants import API_MIN_INTERVAL
from .._http.auth import ClientCredentials
from .._http.retry import RetryPolicy
from .._jobs.job import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, JobOptions, run_job
from .._stores.sqlite import Journal, JournalError, RequestState
from ..models import CancelReason
from ..reconcile import ReconcilePolicy
from ..simulator import SimOrder, SimulatorConfig, ThreadedSimulator
from ..tracker import PollPolicy

__all__ = ["add_arguments", "build_rows", "run_demo"]

_FIELDS = ("order_id", "order_line_id", "product_id", "quantity", "reason", "price_amount",
           "price_currency", "shipping_amount", "shipping_currency", "taxes", "shipping_taxes")
_REASONS = [r.value for r in CancelReason]
_CENT = Decimal("0.01")
_VAT = {"EUR": Decimal("0.20"), "GBP": Decimal("0.20")}
#: The simulated API processes every action within this many API seconds...
_PROCESSING = (5.0, 300.0)
#: ...so a settling window a fifth longer proves a missing cancel was not applied. (The
#: CLI's default, 900 s, is for Mirakl Connect, which states no bound; here a shorter
#: window keeps the demo within half a minute without weakening the proof.)
_SETTLE = 360.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (mounted under `mirakl-cancel demo`)."""
    parser.add_argument("--lines", type=int, default=3000, metavar="N",
                        help="line cancels in the generated job (default %(default)s)")
    parser.add_argument("--orders", type=int, default=600, metavar="N",
                        help="orders they belong to (default %(default)s)")
    parser.add_argument("--time-scale", type=float, default=0.03, metavar="FACTOR",
                        help="API durations are multiplied by this: 0.03 makes the 60 s poll "
                             "ceiling 1.8 s (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--dir", type=Path, metavar="DIR",
                        help="where to write the input, journal and report (default: a new "
                             "temporary directory, kept so you can look at them)")
    parser.add_argument("--no-faults", action="store_true",
                        help="no random 429/503/dropped connections")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log retries and 429s to stderr (-vv: debug)")


def _money(value: Decimal) -> str:
    return str(value.quantize(_CENT, rounding=ROUND_HALF_UP))


def build_rows(orders: list[SimOrder], n_lines: int, rng: random.Random,
               n_unknown: int) -> list[dict[str, str]]:
    """Realistic cancel rows for `orders`: mostly good, a few excess quantities (the
    action fails), plus `n_unknown` rows for orders the API does not know (404)."""
    rows: list[dict[str, str]] = []
    for order in orders:
        for line in order.lines:
            if len(rows) >= n_lines - n_unknown:
                break
            excess = rng.random() < 0.01
            quantity = line.quantity + 1 if excess else (
                line.quantity if rng.random() < 0.7 else rng.randint(1, line.quantity))
            full = quantity >= line.quantity
            price = line.price * quantity
            shipping = line.shipping_price if full else Decimal(0)
            vat = _VAT.get(line.currency)
            by_product = rng.random() < 0.1
            rows.append({
                "order_id": order.id,
                "order_line_id": "" if by_product else line.id,
                "product_id": line.product_id if by_product else "",
                "quantity": str(quantity),
                "reason": rng.choice(_REASONS),
                "price_amount": _money(price),
                "price_currency": line.currency,
                "shipping_amount": _money(shipping),
                "shipping_currency": line.currency,
                "taxes": f"VAT:{_money(price * vat / (1 + vat))}" if vat else "",
                "shipping_taxes": f"VAT:{_money(shipping * vat / (1 + vat))}"
                if vat and shipping else "",
            })
    for index in range(n_unknown):
        order_id = f"0009_{9_900_000 + index}-A"
        rows.insert(rng.randrange(len(rows) + 1), {
            "order_id": order_id, "order_line_id": f"{order_id}-1", "product_id": "",
            "quantity": "1", "reason": "OUT_OF_STOCK", "price_amount": "9.99",
            "price_currency": "EUR", "shipping_amount": "0", "shipping_currency": "EUR",
            "taxes": "", "shipping_taxes": ""})
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _journal_figures(journal_path: Path) -> tuple[int, int, int] | None:
    """(planned requests, POSTs sent, requests still maybe-sent) from the journal, or
    None if it cannot be read. "Sent" counts each send once, however many refused
    attempts (429, 503) it took, and each resend of a cancel proven not applied."""
    try:
        with Journal.open(journal_path) as journal:
            counts = journal.counts()
            requests = journal.requests()
    except JournalError:
        return None
    return (len(requests), sum(r.attempts for r in requests),
            counts[RequestState.UNCERTAIN] + counts[RequestState.SENDING])


def run_demo(args: argparse.Namespace, *, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """Run the demo; 0 when it ran to its summary (some rows fail by design)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.lines < 1 or args.orders < 1 or not args.time_scale > 0:
        print("mirakl-cancel demo: error: --lines and --orders must be >= 1 and "
              "--time-scale > 0", file=err)
        return EXIT_BAD_INPUT
    scale = float(args.time_scale)
    faults = {} if args.no_faults else {"429": 0.01, "503": 0.01, "502": 0.003,
                                        "drop": 0.003}
    config = SimulatorConfig(time_scale=scale, processing_delay=_PROCESSING,
                             fault_rates=faults, seed=args.seed)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="mirakl-cancel-demo-"))
    directory.mkdir(parents=True, exist_ok=True)
    input_path = directory / "cancel-lines.csv"
    report_path = directory / "report.csv"
    journal_path = directory / "cancel-lines.csv.journal.sqlite"
    for stale in directory.glob("cancel-lines.csv.journal.sqlite*"):
        stale.unlink()  # a demo always starts a fresh job
    rng = random.Random(args.seed)
    average = max(1.0, args.lines / args.orders)
    high = max(1, round(2 * average - 1))
    started = time.monotonic()
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(args.orders, (1, high), wrong_state_ratio=0.05)
        n_unknown = max(1, args.lines // 500)
        rows = build_rows(orders, args.lines, rng, n_unknown)
        _write_csv(input_path, rows)
        wrong_state = sum(1 for o in orders if o.status != "AWAITING_SHIPMENT")
        print(f"demo: simulator on {sim.base_url} (time x{scale:g}: the 60 s poll ceiling "
              f"lasts {60 * scale:.2f} s); {len(rows)} line cancels over {args.orders} orders "
              f"({wrong_state} already shipped, {n_unknown} unknown), faults "
              f"{', '.join(f'{k}={v:.1%}' for k, v in faults.items()) or 'none'}",
              file=out, flush=True)
        print(f"demo: files in {directory}", file=out, flush=True)
        options = JobOptions(
            input_path=input_path, base_url=sim.base_url, journal_path=journal_path,
            report_path=report_path, concurrency=8, quiet=args.quiet,
            progress_interval=max(1.0, 300 * scale),
            policy=PollPolicy(min_interval=API_MIN_INTERVAL * scale, interval=120 * scale,
                              first_delay=API_MIN_INTERVAL * scale, timeout=None),
            retry=RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=1.0, max_time=30.0),
            reconcile=ReconcilePolicy(settle=_SETTLE * scale, skew=120 * scale, resend=True))
        auth = ClientCredentials(config.client_id, config.client_secret, sim.token_url)
        code = run_job(options, auth, out=out, err=err)
        stats = sim.stats_snapshot()
    elapsed = time.monotonic() - started
    posts = sum(stats["posts_per_order"].values())
    print(f"simulator observed: {posts} cancel POSTs, {stats['duplicate_posts']} duplicate "
          f"POSTs, {stats['poll_violations']} poll-ceiling violations, "
          f"{stats['responses_429']} 429s served, {stats['drops']} connections dropped "
          f"after processing, {stats['faults_injected'].get('502', 0)} 502s, "
          f"{sum(stats['polls_per_action'].values())} status reads "
          f"(demo took {elapsed:.1f} s)", file=out, flush=True)
    figures = _journal_figures(journal_path)
    if code != EXIT_INTERRUPTED and figures is not None:
        planned, sent, left = figures
        # Why the job's "sent" and the simulator's "observed" differ: a POST answered 502
        # by the gateway never reached the handler (never processed: reconciliation proves
        # it and sends it again), so the job counts it and the server does not.
        print(f"demo: figures: the job sent {sent} cancel POSTs for {planned} planned "
              f"requests ({sent - planned} sent again once proven not applied); the "
              f"simulator's handler saw {posts}: the other {sent - posts} were answered 502 "
              "by the gateway before reaching it (never processed). A refused attempt (429, "
              "503) retried is one send on both sides.", file=out, flush=True)
        if left:
            print(f"demo: {left} request(s) left UNCERTAIN: reconciliation could not decide "
                  "them (the report's errors say why: e.g. a 502 on a cancel of an order "
                  "the API does not know, which v2-listOrders cannot show); "
                  f"{stats['duplicate_posts']} duplicate POSTs", file=out, flush=True)
        else:
            print(f"demo: 0 request(s) left UNCERTAIN and {stats['duplicate_posts']} "
                  "duplicate POSTs: every cancel whose answer was lost was settled from its "
                  "order's adjustments, none was sent twice", file=out, flush=True)
    if code == EXIT_INTERRUPTED:
        return code
    return EXIT_OK if code in (0, 1) else code
