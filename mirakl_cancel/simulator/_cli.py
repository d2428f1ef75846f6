"""Command line: run the simulator as a standalone server.

``add_arguments``/``run_from_args`` are split from ``main`` so the project CLI
can mount the same options under ``mirakl-cancel simulator``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ._config import SimulatorConfig, parse_fault_kind
from ._examples import example_orders
from ._server import Simulator

__all__ = ["add_arguments", "build_arg_parser", "config_from_args", "main", "run_from_args"]


def _bounds(text: str) -> tuple[float, float]:
    """``"3"`` or ``"1,5"`` -> (low, high)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or LOW,HIGH, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected SECONDS or LOW,HIGH with LOW <= HIGH, got {text!r}")


def _fault(text: str) -> tuple[str, float]:
    kind, sep, rate = text.partition("=")
    try:
        parse_fault_kind(kind)
        value = float(rate)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected KIND=RATE (e.g. 503=0.01, drop=0.01): {exc}"
        ) from None
    if not sep or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE with 0 <= RATE <= 1, got {text!r}")
    return kind, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator options on ``parser`` (or a subcommand parser).

    Units matter here: most durations are *API seconds*, multiplied by ``--time-scale``
    (at 0.01 the API's 60 s poll ceiling lasts 0.6 real seconds); ``--rate-limit`` is
    per real second. Every help text says which.
    """
    defaults = SimulatorConfig()
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        metavar="FACTOR",
        help="multiply every API duration (processing delay, poll ceiling, latency, token "
        "lifetime, Retry-After) by FACTOR: 0.01 makes a minute last 0.6 real seconds; set "
        "the client's polling intervals to the same scale (default: %(default)s, real time)",
    )
    parser.add_argument(
        "--orders",
        type=int,
        default=0,
        metavar="N",
        help="generate N seeded orders at start (their ids: --orders-out) (default: 0)",
    )
    parser.add_argument(
        "--example-orders",
        action="store_true",
        help="also serve the orders that the repository's examples/cancel-lines.csv and "
        ".jsonl cancel, so both run as pasted (each once)",
    )
    parser.add_argument(
        "--orders-file",
        type=Path,
        metavar="PATH",
        help="load orders from a JSON file (the format --orders-out writes)",
    )
    parser.add_argument(
        "--orders-out",
        type=Path,
        metavar="PATH",
        help="write every order served (ids, lines, quantities, unit prices) to a JSON "
        "file: where to find order and line ids to cancel",
    )
    parser.add_argument(
        "--wrong-state-ratio",
        type=float,
        default=0.05,
        metavar="RATIO",
        help="share (0..1) of generated orders already SHIPPED/DELIVERED/CLOSED, whose "
        "cancels fail with ORDER_IN_WRONG_STATE (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        metavar="N",
        help="random seed for generated orders, processing delays and random faults: the "
        "same seed serves the same ids (default: %(default)s)",
    )
    parser.add_argument(
        "--min-poll-interval",
        type=float,
        default=defaults.min_poll_interval,
        metavar="SECONDS",
        help="per-action status-read ceiling, in API seconds (scaled by --time-scale); a "
        "faster read gets 429 and counts as a violation (default: %(default)s)",
    )
    parser.add_argument(
        "--processing-delay",
        type=_bounds,
        default=defaults.processing_delay,
        metavar="LOW,HIGH",
        help="API seconds (scaled) an action stays PENDING, uniform in [LOW, HIGH], or one "
        "value (default: 1,5)",
    )
    parser.add_argument(
        "--latency",
        type=_bounds,
        default=defaults.latency,
        metavar="LOW,HIGH",
        help="API seconds (scaled by --time-scale) added to every answer, uniform in "
        "[LOW, HIGH], or one value (default: 0)",
    )
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=None,
        metavar="RPS",
        help="requests per REAL second for the whole server (not scaled); the excess gets "
        "429 with Retry-After (default: no limit)",
    )
    parser.add_argument(
        "--token-ttl",
        type=float,
        default=defaults.token_ttl,
        metavar="SECONDS",
        help="lifetime of tokens from the token endpoint, API seconds (scaled); the printed "
        "token= lasts a real day (default: %(default)s)",
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="random fault on a share RATE (0..1) of requests, repeatable: 429=0.01 and "
        "503=0.01 (refused, not processed), 502=0.01 (gateway error before processing), "
        "drop=0.01 (connection dropped after the cancel was processed)",
    )
    parser.add_argument(
        "--client-id",
        default=defaults.client_id,
        metavar="ID",
        help="client id the token endpoint accepts (default: %(default)s)",
    )
    parser.add_argument(
        "--client-secret",
        default=defaults.client_secret,
        metavar="SECRET",
        help="client secret the token endpoint accepts (default: the simulator's "
        "well-known test secret, printed at start)",
    )


def build_arg_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m mirakl_cancel.simulator",
        description="Run a local Mirakl Connect simulator until SIGINT/SIGTERM.",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    return SimulatorConfig(
        time_scale=args.time_scale,
        processing_delay=args.processing_delay,
        min_poll_interval=args.min_poll_interval,
        rate_limit=args.rate_limit,
        token_ttl=args.token_ttl,
        latency=args.latency,
        fault_rates=dict(args.fault),
        seed=args.seed,
        client_id=args.client_id,
        client_secret=args.client_secret,
    )


async def serve(args: argparse.Namespace, out: TextIO) -> None:
    """Start, print the connection details as ``key=value`` lines, wait for a signal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
            loop.add_signal_handler(signum, stop.set)
    async with Simulator(config_from_args(args), host=args.host, port=args.port) as sim:
        if args.orders_file is not None:
            sim.load_orders(args.orders_file)
        if args.orders:
            sim.generate_orders(args.orders, wrong_state_ratio=args.wrong_state_ratio)
        if getattr(args, "example_orders", False):  # after: the examples' ids win
            for order in example_orders():
                sim.add_order(order)
        if args.orders_out is not None:
            orders = [order.to_dict() for order in sim.orders.values()]
            args.orders_out.write_text(json.dumps(orders, indent=2), encoding="utf-8")
        cfg = sim.config
        print(f"Mirakl Connect simulator listening ({len(sim.orders)} orders)", file=out)
        print(f"base_url={sim.base_url}", file=out)
        print(f"token_url={sim.token_url}", file=out)
        print(f"client_id={cfg.client_id}", file=out)
        print(f"client_secret={cfg.client_secret}", file=out)
        print(f"token={sim.token}", file=out)
        print(f"stats_url={sim.base_url}/_sim/stats", file=out, flush=True)
        await stop.wait()
        print(json.dumps(sim.stats.as_dict()), file=out, flush=True)


def run_from_args(args: argparse.Namespace, out: TextIO | None = None) -> int:
    try:
        asyncio.run(serve(args, out or sys.stdout))
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    return run_from_args(args)
