"""`mirakl-cancel`: bulk cancels from a file, action status, the simulator and a demo.

Exit codes: 0 every row SUCCEEDED (or, for `status`, every action found); 1 some row
did not; 2 bad usage, bad input or missing credentials (nothing was sent); 130
stopped by SIGINT/SIGTERM (the journal is consistent: re-run the same command to
resume).

Secrets are read from the environment by preference (`MIRAKL_CONNECT_TOKEN`, or
`MIRAKL_CLIENT_ID` + `MIRAKL_CLIENT_SECRET`): a `--token` flag is visible to every
user of the machine in the process list. No secret is ever printed, logged, journaled
or shown as a `--help` default.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from .._constants import (
    API_MIN_INTERVAL,
    DEFAULT_BASE_URL,
    DEFAULT_FIRST_POLL_DELAY,
    DEFAULT_JOB_CONCURRENCY,
    DEFAULT_LEASE,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_TOKEN_URL,
)
from .._http.auth import Auth, ClientCredentials, StaticToken
from .._http.net import network_options_from_env
from .._http.urls import check_base_url
from .._jobs.job import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_SOME_FAILED,
    JobOptions,
    default_journal_path,
    reconcile_job,
    run_job,
)
from .._jobs.progress import ProgressLogHandler
from .._jobs.report import check_report_path
from .._observe.hooks import Hooks
from .._observe.logs import env_level, remove_env_handler
from .._text import printable
from .._version import __version__
from ..client import MiraklConnectClient, check_min_intervals
from ..errors import (
    ConnectError,
    MiraklError,
    NotFoundError,
    RateLimitError,
    ServerError,
    TransportError,
    ValidationError,
)
from ..models import ActionStatus
from ..reconcile import ReconcilePolicy
from ..tracker import PollPolicy

__all__ = ["build_parser", "main"]

ENV_BASE_URL = "MIRAKL_CONNECT_BASE_URL"
ENV_TOKEN = "MIRAKL_CONNECT_TOKEN"
ENV_CLIENT_ID = "MIRAKL_CLIENT_ID"
ENV_CLIENT_SECRET = "MIRAKL_CLIENT_SECRET"
ENV_TOKEN_URL = "MIRAKL_TOKEN_URL"
ENV_STORE = "MIRAKL_CANCEL_STORE"

_DEFAULT_RECONCILE = ReconcilePolicy()

_DESCRIPTION = """\
Cancel order lines on Mirakl Connect at volume, and follow every cancellation to its
final state without ever cancelling twice or polling an action more than once a minute.
"""

_RUN_EPILOG = f"""\
input: CSV with a header row, or JSON Lines; one line cancel per row with
  order_id, order_line_id and/or product_id, quantity, reason, price_amount,
  price_currency, shipping_amount, shipping_currency (defaults to price_currency),
  optional taxes / shipping_taxes ("CODE:AMOUNT;CODE:AMOUNT" in CSV; arrays of
  {{"code", "amount": {{"amount", "currency"}}}} in JSONL). Rows are checked first:
  any bad row and nothing is sent (see --skip-invalid).

resume: the job is journaled in FILE.journal.sqlite (or --journal); run the same
  command again to resume after a crash or Ctrl-C. Cancels that may have reached the
  API when the run stopped are reported UNCERTAIN and not sent again unless
  --resend-uncertain.

reconcile: with --reconcile, once the run is over every UNCERTAIN cancel (this run's
  and any an earlier run left) is checked, after its settling window, against its
  order's cancelation adjustments: applied -> SUCCEEDED, not applied -> NOT_APPLIED
  (sent again with --resend-unapplied), undecided -> stays UNCERTAIN with the reason.

fleet: with --job NAME and --store postgresql://... (or {ENV_STORE}), start the
  same command on any number of machines: the first creates the job in the database,
  the others join it (same file only); each request is sent by exactly one worker,
  --rate-limit is the whole fleet's, and every worker exits once the job is complete.
  A worker silent for --lease seconds loses its work to the others (what it was
  sending is reported UNCERTAIN). See `mirakl-cancel report` for the whole report.

credentials: {ENV_TOKEN}, or {ENV_CLIENT_ID} + {ENV_CLIENT_SECRET}
  (+ {ENV_TOKEN_URL}); base URL from {ENV_BASE_URL}.

exit codes: 0 all rows SUCCEEDED, 1 some did not, 2 bad usage/input/credentials
  (nothing sent), 130 interrupted (resumable).
"""

_RECONCILE_EPILOG = f"""\
Reads the orders of the journal's UNCERTAIN cancels (v2-listOrders, 100 per call, calls
--min-poll-interval apart) once their settling window has passed, and records the
verdict in the journal: applied -> SUCCEEDED (no action id), not applied -> NOT_APPLIED
(sent again, journaled and tracked, with --resend-unapplied, which also resends the
NOT_APPLIED cancels of an earlier reconciliation), undecided -> stays UNCERTAIN with the
reason. Nothing else is sent; the input file is not needed.

credentials: as for run ({ENV_TOKEN}, or {ENV_CLIENT_ID} + {ENV_CLIENT_SECRET});
  base URL from {ENV_BASE_URL}: it must be the journal's (or --force).

exit codes: 0 all rows SUCCEEDED, 1 some did not, 2 bad usage/journal/credentials,
  130 interrupted (unjudged cancels stay UNCERTAIN).
"""


def _encoding(text: str) -> str:
    try:
        return codecs.lookup(text).name
    except LookupError:
        raise argparse.ArgumentTypeError(
            f"unknown encoding {text!r} (e.g. utf-8, cp1252, latin-1)") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _add_connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--base-url", metavar="URL",
                       help=f"API root (env {ENV_BASE_URL}; default {DEFAULT_BASE_URL})")
    group.add_argument("--token", metavar="TOKEN",
                       help=f"bearer token; prefer env {ENV_TOKEN}: a flag is visible to other "
                            "users in the process list")
    group.add_argument("--token-url", metavar="URL",
                       help=f"OAuth token endpoint for {ENV_CLIENT_ID}/{ENV_CLIENT_SECRET} "
                            f"(env {ENV_TOKEN_URL}; default {DEFAULT_TOKEN_URL})")
    group.add_argument("--concurrency", type=_positive_int, default=DEFAULT_JOB_CONCURRENCY,
                       metavar="N",
                       help="requests in flight at most, of each kind: N cancels and N "
                            "status reads (default %(default)s)")
    group.add_argument("--rate-limit", type=_positive_seconds, metavar="RPS",
                       help="requests per second at most (default: no client-side limit)")
    group.add_argument("--min-poll-interval", type=_seconds, default=API_MIN_INTERVAL,
                       metavar="SECONDS",
                       help="never read one action, nor list orders (reconciliation), more often "
                            "than this (default %(default)s, "
                            "the API's ceiling)")


def _add_tracking(parser: argparse.ArgumentParser) -> None:
    polling = parser.add_argument_group("tracking")
    polling.add_argument("--poll-interval", type=_seconds, default=DEFAULT_POLL_INTERVAL,
                         metavar="SECONDS",
                         help="read each pending action this often (default %(default)s)")
    polling.add_argument("--first-poll-delay", type=_seconds, default=DEFAULT_FIRST_POLL_DELAY,
                         metavar="SECONDS",
                         help="first read this long after acceptance (default %(default)s)")
    polling.add_argument("--timeout", type=_positive_seconds, metavar="SECONDS",
                         help="stop tracking an action after this long (TIMED_OUT; a re-run "
                              "tracks it on). Default: wait until final")
    polling.add_argument("--progress-interval", type=_positive_seconds,
                         default=DEFAULT_PROGRESS_INTERVAL,
                         metavar="SECONDS",
                         help="when stderr is not a terminal, log progress this often "
                              "(default %(default)s)")


def _add_reconciliation(parser: argparse.ArgumentParser, *, optional: bool) -> None:
    group = parser.add_argument_group("reconciliation")
    if optional:
        group.add_argument("--reconcile", action="store_true",
                           help="after the run, check every UNCERTAIN cancel against its "
                                "order's adjustments (waits for the settling window)")
    needs = " (with --reconcile)" if optional else ""
    group.add_argument("--resend-unapplied", action="store_true",
                       help="send again the cancels proven NOT_APPLIED" + needs +
                            "; safe: the evidence shows they never took effect")
    group.add_argument("--settle", type=_seconds, metavar="SECONDS",
                       help="how long after a send its absence from the adjustments proves "
                            f"it was not applied (default {_DEFAULT_RECONCILE.settle:g})" + needs)
    group.add_argument("--skew", type=_seconds, metavar="SECONDS",
                       help="clock difference allowed with the API when dating adjustments "
                            f"(default {_DEFAULT_RECONCILE.skew:g})" + needs)


def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr (-v: retries and warnings, -vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress display and no notes; the summary still prints")


#: The commands that load the simulator (and aiohttp.web): only they may import it.
_SIMULATOR_COMMANDS = ("simulator", "demo")


def build_parser(*, load: Sequence[str] = _SIMULATOR_COMMANDS) -> argparse.ArgumentParser:
    """The whole command line (also used to render the README's usage text).

    The options of the commands named in `load` are registered by their own modules,
    which import the simulator; `main` loads only the command being run, so that `run`,
    `status` and `reconcile` start without importing the simulator or aiohttp.web.
    """
    parser = argparse.ArgumentParser(
        prog="mirakl-cancel", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run", help="cancel the lines listed in a CSV or JSONL file (resumable)",
        description="Cancel the order lines listed in FILE, track every action to its final\n"
                    "state, and report one line per input row.",
        epilog=_RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("file", type=Path, metavar="FILE", help="CSV (header row) or JSONL")
    run.add_argument("--format", choices=("csv", "jsonl"),
                     help="input format (default: from the extension)")
    run.add_argument("--encoding", type=_encoding, metavar="CODEC",
                     help="the input's text encoding, e.g. cp1252 for a Windows spreadsheet "
                          "export (default: UTF-8, with or without a BOM)")
    run.add_argument("--decimal-comma", action="store_true", default=None,
                     help="CSV amounts use a decimal comma: 12,34 and 1.234,56 (default: "
                          "detected when a semicolon-separated file writes every amount "
                          "that way; otherwise amounts use a dot)")
    run.add_argument("--dry-run", action="store_true",
                     help="check the input and print what would be sent; send nothing")
    run.add_argument("--skip-invalid", action="store_true",
                     help="send the valid rows even if some are invalid (reported INVALID)")
    run.add_argument("--max-lines-per-request", type=_positive_int, metavar="N",
                     help="split an order's lines into requests of at most N lines")
    run.add_argument("--journal", type=Path, metavar="PATH",
                     help="journal file (default: FILE.journal.sqlite beside the input)")
    run.add_argument("--report", type=Path, metavar="PATH",
                     help="write one line per input row to PATH (.jsonl or .csv)")
    run.add_argument("--resend-uncertain", action="store_true",
                     help="send again the cancels that may already have been processed "
                          "(only once you checked they were not: a resent partial cancel "
                          "cancels more units)")
    run.add_argument("--mark-ahead", action="store_true",
                     help="journal each request as being sent a few requests before its "
                          "POST, so that a slow disk's flush overlaps the POSTs before it "
                          "(faster on network volumes); a crash then leaves up to "
                          "--concurrency more cancels UNCERTAIN, to be reconciled")
    run.add_argument("--metrics-port", type=_port, metavar="PORT",
                     help="serve Prometheus metrics on http://127.0.0.1:PORT/metrics while "
                          "the job runs (0: any free port, printed); needs "
                          "mirakl-cancel[prometheus]")
    run.add_argument("--force", action="store_true",
                     help="resume even though the input file (or base URL) changed since the "
                          "journal was created; the journal's plan is used")
    fleet = run.add_argument_group("fleet (several workers on one job, in PostgreSQL)")
    _add_fleet_store(fleet)
    fleet.add_argument("--lease", type=_positive_seconds, default=DEFAULT_LEASE,
                       metavar="SECONDS",
                       help="how long the fleet waits for a silent worker before taking its "
                            "work over (default: %(default)gs)")
    _add_connection(run)
    _add_tracking(run)
    _add_reconciliation(run, optional=True)
    _add_logging(run)

    rec = sub.add_parser(
        "reconcile", help="settle the UNCERTAIN cancels of an earlier job",
        description="Find out, from the orders' adjustments, whether the UNCERTAIN cancels\n"
                    "of an earlier job took effect, and record it in its journal.",
        epilog=_RECONCILE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rec.add_argument("--journal", type=Path, metavar="PATH", required=True,
                     help="the job's journal (FILE.journal.sqlite beside its input)")
    rec.add_argument("--report", type=Path, metavar="PATH",
                     help="write one line per input row to PATH (.jsonl or .csv)")
    rec.add_argument("--force", action="store_true",
                     help="reconcile even though the base URL differs from the journal's")
    _add_reconciliation(rec, optional=False)
    _add_connection(rec)
    _add_tracking(rec)
    _add_logging(rec)

    report = sub.add_parser(
        "report", help="write the whole report of a job (a fleet's or a journal's)",
        description="Write one line per input row of a job, and print its outcomes. From a "
                    "fleet's database (--store, --job) or a journal (--journal). Nothing is "
                    "sent. Exit 0 if every row SUCCEEDED, 1 otherwise, 2 if there is no "
                    "such job.")
    report.add_argument("--journal", type=Path, metavar="PATH",
                        help="the job's journal (instead of --store and --job)")
    report.add_argument("--report", type=Path, metavar="PATH",
                        help="write one line per input row to PATH (.jsonl or .csv)")
    _add_fleet_store(report)
    _add_logging(report)

    status = sub.add_parser(
        "status", help="print the status of actions",
        description="Print the status of each action (state, updated_at, errors), reading "
                    "each at most once a minute on this machine (the API's ceiling, shared "
                    "with run). Exit 0 if every action was read and found, 1 otherwise.")
    status.add_argument("action_ids", nargs="+", metavar="ACTION_ID")
    status.add_argument("--json", action="store_true", help="one JSON object per line")
    status.add_argument("--no-wait", action="store_true",
                        help="do not wait for an action read less than a minute ago on this "
                             "machine (by run or status): print when its next read is allowed "
                             "(state NOT_READ) instead")
    _add_connection(status)
    _add_logging(status)

    simulator = sub.add_parser(
        "simulator", help="serve a local Mirakl Connect simulator",
        description="Run a local Mirakl Connect simulator until SIGINT/SIGTERM.")
    if "simulator" in load:
        from ..simulator._cli import add_arguments as add_simulator_arguments

        add_simulator_arguments(simulator)

    demo = sub.add_parser(
        "demo", help="run a whole bulk job against the embedded simulator",
        description="Start the simulator in-process with scaled time, generate a realistic "
                    "job, and run it exactly as `run` would: journal, progress, report. No "
                    "credentials, no network beyond 127.0.0.1.")
    if "demo" in load:
        from .demo import add_arguments as add_demo_arguments

        add_demo_arguments(demo)
    return parser


def _add_fleet_store(group: argparse._ActionsContainer) -> None:
    group.add_argument("--store", metavar="URI",
                       help=f"the fleet's PostgreSQL database, postgresql://user@host/db "
                            f"(default: {ENV_STORE}; put the password in ~/.pgpass or "
                            "PGPASSWORD rather than in the URI)")
    group.add_argument("--job", metavar="NAME",
                       help="the fleet job's name: every worker of the job gives the same")


def _fleet_target(args: argparse.Namespace, command: str) -> tuple[str, str] | None:
    """(store URI, job name) for a fleet command, None for a journal one; ValueError
    when only half is given."""
    store = args.store or (os.environ.get(ENV_STORE) if args.job else None)
    if args.job is None:
        if args.store:
            raise ValueError("--store needs --job NAME (the fleet job to create or join)")
        return None
    if not store:
        raise ValueError(f"--job needs --store postgresql://... (or {ENV_STORE})")
    if getattr(args, "journal", None) is not None:
        raise ValueError(f"{command}: --job keeps the job in the database: no --journal")
    return store, args.job


def _hide_password(text: str) -> str:
    """A store URI with its password (userinfo or query) replaced by a placeholder."""
    text = re.sub(r"^(postgres(?:ql)?://[^:/@?#]*:)[^@/?#]*@", r"\1<PASSWORD>@", text)
    return re.sub(r"([?&]password=)[^&#]*", r"\1<PASSWORD>", text)


def _setup_logging(verbose: int, quiet: bool) -> ProgressLogHandler:
    # MIRAKL_CANCEL_LOG=info|debug works as -v|-vv, through this progress-aware handler.
    level = env_level()
    if level is not None:
        verbose = max(verbose, 2 if level <= logging.DEBUG else 1)
    remove_env_handler()
    handler = ProgressLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("mirakl_cancel")
    logger.handlers[:] = [handler]
    logger.propagate = False
    if verbose >= 2:
        logger.setLevel(logging.DEBUG)
    elif verbose == 1:
        logger.setLevel(logging.INFO)
    else:
        # Retries and 429s are expected in bulk; the summary counts them.
        logger.setLevel(logging.ERROR)
    return handler


def resolve_auth(args: argparse.Namespace) -> tuple[Auth | None, str | None]:
    """The credentials from flags/env, or None with the reason. Never echoes a secret."""
    token = args.token or os.environ.get(ENV_TOKEN)
    if token:
        try:
            return StaticToken(token), None
        except ValueError:
            return None, "the token is empty"
    client_id = os.environ.get(ENV_CLIENT_ID)
    secret = os.environ.get(ENV_CLIENT_SECRET)
    if client_id and secret:
        token_url = args.token_url or os.environ.get(ENV_TOKEN_URL) or DEFAULT_TOKEN_URL
        try:
            return ClientCredentials(client_id, secret, token_url), None
        except ValueError as exc:  # e.g. a plain-http token URL; the message has no secret
            return None, f"bad token URL: {exc}"
    if client_id or secret:
        missing = ENV_CLIENT_SECRET if client_id else ENV_CLIENT_ID
        return None, f"missing credentials: {missing} is not set"
    return None, (f"missing credentials: set {ENV_TOKEN}, or {ENV_CLIENT_ID} and "
                  f"{ENV_CLIENT_SECRET}")


def _base_url(args: argparse.Namespace) -> str:
    return str(args.base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL)


def _reconcile_policy(args: argparse.Namespace, enabled: bool) -> ReconcilePolicy | None:
    """The policy from --settle/--skew/--resend-unapplied; ValueError if given without
    --reconcile (silently ignoring them would hide that nothing gets reconciled)."""
    if not enabled:
        given = [flag for flag, value in (("--resend-unapplied", args.resend_unapplied),
                                          ("--settle", args.settle), ("--skew", args.skew))
                 if value not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --reconcile")
        return None
    return ReconcilePolicy(
        settle=_DEFAULT_RECONCILE.settle if args.settle is None else args.settle,
        skew=_DEFAULT_RECONCILE.skew if args.skew is None else args.skew,
        resend=args.resend_unapplied)


def _poll_policy(args: argparse.Namespace) -> PollPolicy:
    check_min_intervals(_base_url(args), args.min_poll_interval)
    return PollPolicy(min_interval=args.min_poll_interval,
                      interval=max(args.poll_interval, args.min_poll_interval),
                      first_delay=args.first_poll_delay, timeout=args.timeout)


def _job_settings(args: argparse.Namespace, command: str,
                  reconcile: bool) -> tuple[str, PollPolicy, ReconcilePolicy | None] | None:
    """The checked settings `run` and `reconcile` share, or None after printing why."""
    base_url = _base_url(args)
    try:
        check_base_url(base_url)
        if args.report is not None:
            check_report_path(args.report)
        policy = _poll_policy(args)
        reconciling = _reconcile_policy(args, reconcile)
        if reconciling is not None and getattr(args, "resend_uncertain", False):
            raise ValueError("--resend-uncertain sends uncertain cancels blindly, --reconcile "
                             "checks them first: use one or the other")
        network_options_from_env(os.environ)  # MIRAKL_PROXY, MIRAKL_CA_BUNDLE... readable
    except (ValueError, ValidationError) as exc:
        print(f"mirakl-cancel {command}: error: {exc}", file=sys.stderr)
        return None
    return base_url, policy, reconciling


_TOKEN_PLACEHOLDER = "<TOKEN>"


def _command_line(argv: Sequence[str]) -> str:
    """`argv` as a command to paste again, with any `--token` value replaced (a secret
    is never printed, even back to the user who typed it)."""
    words: list[str] = []
    hide = False
    for word in argv:
        if hide:
            words.append(_TOKEN_PLACEHOLDER)
            hide = False
        elif word == "--token":
            words.append(word)
            hide = True
        elif word.startswith("--token="):
            words.append(f"--token={_TOKEN_PLACEHOLDER}")
        else:
            words.append(_hide_password(word))
    return shlex.join(["mirakl-cancel", *words])


def _reconcile_command_line(args: argparse.Namespace, journal: Path) -> str:
    """The `mirakl-cancel reconcile` command that settles this job's UNCERTAIN cancels
    later, with the connection and reconciliation flags the run was given."""
    words = ["reconcile", "--journal", str(journal)]
    for flag, value in (("--base-url", args.base_url), ("--token-url", args.token_url),
                        ("--settle", args.settle), ("--skew", args.skew)):
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.min_poll_interval != API_MIN_INTERVAL:
        words += ["--min-poll-interval", f"{args.min_poll_interval:g}"]
    if args.token:
        words += ["--token", _TOKEN_PLACEHOLDER]
    if args.resend_unapplied:
        words.append("--resend-unapplied")
    return _command_line(words)


def _run_command(args: argparse.Namespace) -> int:
    handler = _setup_logging(args.verbose, args.quiet)
    settings = _job_settings(args, "run", args.reconcile)
    if settings is None:
        return EXIT_BAD_INPUT
    base_url, policy, reconciling = settings
    try:
        fleet = _fleet_target(args, "run")
        if fleet is not None and args.resend_uncertain:
            raise ValueError("--resend-uncertain is not for a fleet job: use --reconcile "
                             "(with --resend-unapplied) to settle its UNCERTAIN cancels")
        if fleet is not None and args.mark_ahead:
            raise ValueError("--mark-ahead is not for a fleet job: a worker's marks are "
                             "checked against its lease as they are made")
    except ValueError as exc:
        print(f"mirakl-cancel run: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    auth: Auth | None = None
    if not args.dry_run:
        auth, problem = resolve_auth(args)
        if auth is None:
            print(f"mirakl-cancel run: error: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
    options = JobOptions(
        input_path=args.file, base_url=base_url, input_format=args.format,
        encoding=args.encoding, decimal_comma=args.decimal_comma,
        journal_path=args.journal, report_path=args.report, concurrency=args.concurrency,
        rate_limit=args.rate_limit, max_lines_per_request=args.max_lines_per_request,
        policy=policy, resend_uncertain=args.resend_uncertain, mark_ahead=args.mark_ahead,
        skip_invalid=args.skip_invalid, dry_run=args.dry_run, force=args.force,
        quiet=args.quiet, progress_interval=args.progress_interval, reconcile=reconciling,
        resume_command=_command_line(args.argv),
        reconcile_command=_command_line([*args.argv, "--reconcile"]) if fleet else
        _reconcile_command_line(args, args.journal or default_journal_path(args.file)))

    def run(options: JobOptions) -> int:
        if fleet is None:
            return run_job(options, auth, log_handler=handler)
        from .._jobs.fleet import run_fleet_job  # psycopg: only for a fleet

        return run_fleet_job(options, auth, dsn=fleet[0], name=fleet[1], lease=args.lease,
                             log_handler=handler)

    if args.metrics_port is None:
        return run(options)
    return _run_with_metrics(args.metrics_port, options, run)


def _run_with_metrics(port: int, options: JobOptions,
                      run: Callable[[JobOptions], int]) -> int:
    """`run --metrics-port`: the job, with /metrics served on 127.0.0.1 while it runs."""
    try:
        from .._observe.metrics import PrometheusCollector, serve_metrics

        collector = PrometheusCollector()
        server = serve_metrics(port, collector)
        bound = server.__enter__()
    except ImportError:
        print("mirakl-cancel run: error: --metrics-port needs prometheus_client: "
              "pip install 'mirakl-cancel[prometheus]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"mirakl-cancel run: error: cannot serve metrics on 127.0.0.1:{port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        print(f"metrics: http://127.0.0.1:{bound}/metrics", file=sys.stderr, flush=True)
        return run(attrs.evolve(options, hooks=Hooks(collector)))
    finally:
        server.__exit__(None, None, None)


def _reconcile_command(args: argparse.Namespace) -> int:
    handler = _setup_logging(args.verbose, args.quiet)
    settings = _job_settings(args, "reconcile", True)
    if settings is None:
        return EXIT_BAD_INPUT
    base_url, policy, reconciling = settings
    auth, problem = resolve_auth(args)
    if auth is None:
        print(f"mirakl-cancel reconcile: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = JobOptions(
        input_path=None, base_url=base_url, journal_path=args.journal,
        report_path=args.report, concurrency=args.concurrency, rate_limit=args.rate_limit,
        policy=policy, force=args.force, quiet=args.quiet,
        progress_interval=args.progress_interval, reconcile=reconciling,
        reconcile_command=_command_line(args.argv))
    return reconcile_job(options, auth, log_handler=handler)


def _ready_in(client: MiraklConnectClient, action_id: str) -> float:
    """Seconds until `action_id` may be read without breaking the once-a-minute ceiling,
    counting every read of it on this machine the client knows of."""
    return max(0.0, client.poll_ready_in(action_id))


def _at(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))


def _secs(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


class _NotRead:
    """A status read `--no-wait` declined: the ceiling allows it only in `wait` seconds."""

    def __init__(self, wait: float) -> None:
        self.wait = wait

    def __str__(self) -> str:
        return (f"read less than a minute ago on this machine: the next read is allowed at "
                f"{_at(self.wait)} (in {_secs(self.wait)}; the API allows one per minute)")


async def _statuses(client: MiraklConnectClient, action_ids: Sequence[str],
                    as_json: bool, *, wait: bool = True) -> int:
    """Read and print each action's status, at most once per action per minute.

    A read due later (an action read recently, by `run` or an earlier `status`) is
    waited for with a message saying until when, or, with `wait=False`, not made: the
    line says when it will be allowed. The first read is made without retries, so an
    unreachable API (connection refused) is reported at once and the other actions
    are not tried; a transient failure of that read (5xx, 429, a timeout) gets one more
    read, announced with its real wait.
    """
    semaphore = asyncio.Semaphore(client.max_concurrency)
    unreachable: list[ConnectError] = []

    async def read(action_id: str) -> ActionStatus:
        delay = _ready_in(client, action_id)
        if delay > 0:
            print(f"{action_id}: read less than a minute ago on this machine; waiting "
                  f"{_secs(delay)}, until {_at(delay)}, as the API allows one read per minute "
                  "(--no-wait to skip it)", file=sys.stderr, flush=True)
        return await client.get_action_status(action_id, retry=False)

    async def one(action_id: str) -> ActionStatus | MiraklError | _NotRead:
        async with semaphore:
            if unreachable:
                return unreachable[0]
            delay = _ready_in(client, action_id)
            if delay > 0 and not wait:
                return _NotRead(delay)
            try:
                try:
                    return await read(action_id)
                except ConnectError as exc:
                    unreachable.append(exc)
                    return exc
                except (ServerError, RateLimitError, TransportError) as exc:
                    # Transient: one more read (a read that reached the API counts against
                    # the ceiling, so it may have to wait, and says so).
                    delay = _ready_in(client, action_id)
                    if delay > 0 and not wait:
                        return _NotRead(delay)
                    print(f"{action_id}: {exc}; reading once more", file=sys.stderr,
                          flush=True)
                    return await read(action_id)
            except MiraklError as exc:
                return exc

    code = EXIT_OK
    results = await asyncio.gather(*(one(a) for a in action_ids))
    if unreachable:
        print(f"mirakl-cancel status: error: cannot reach {client.base_url}: {unreachable[0]}; "
              "check --base-url / MIRAKL_CONNECT_BASE_URL and the network", file=sys.stderr)
    for action_id, result in zip(action_ids, results, strict=True):
        if isinstance(result, (MiraklError, _NotRead)):
            code = EXIT_SOME_FAILED
            state = ("NOT_FOUND" if isinstance(result, NotFoundError) else
                     "NOT_READ" if isinstance(result, (_NotRead, ConnectError)) else "ERROR")
            if as_json:
                item: dict[str, object] = {"id": action_id, "state": state,
                                           "error": str(result)}
                if isinstance(result, _NotRead):
                    item["next_read_in"] = round(result.wait, 3)
                print(json.dumps(item))
            else:
                print(printable(f"{action_id}  {state}  {result}", limit=None))
            continue
        errors = [f"{e.code}: {e.message}" for e in result.errors]
        updated = result.updated_at.isoformat() if result.updated_at else None
        if as_json:
            print(json.dumps({"id": action_id, "state": result.raw_status,
                              "updated_at": updated, "errors": errors}))
        else:
            line = f"{action_id}  {result.raw_status}  updated_at={updated or '-'}"
            if errors:
                line += "  errors: " + "; ".join(errors)
            print(printable(line, limit=None))  # the server's words: no terminal escapes
    return code


def _report_command(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose, args.quiet)
    try:
        fleet = _fleet_target(args, "report")
        if fleet is None and args.journal is None:
            raise ValueError("give --journal PATH, or --store and --job NAME")
        if args.report is not None:
            check_report_path(args.report)
    except ValueError as exc:
        print(f"mirakl-cancel report: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from .._jobs.fleet import report_job

    if fleet is None:
        return report_job(args.report, journal=args.journal)
    return report_job(args.report, dsn=fleet[0], name=fleet[1])


def _status_command(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose, args.quiet)
    base_url = _base_url(args)
    try:
        check_base_url(base_url)
        check_min_intervals(base_url, args.min_poll_interval)
        network = network_options_from_env(os.environ)
    except ValueError as exc:
        print(f"mirakl-cancel status: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    auth, problem = resolve_auth(args)
    if auth is None:
        print(f"mirakl-cancel status: error: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    action_ids = list(dict.fromkeys(args.action_ids))  # one read per action, not per mention

    async def go() -> int:
        async with MiraklConnectClient(
                auth=auth, base_url=base_url, max_concurrency=args.concurrency,
                rate_limit=args.rate_limit, min_poll_interval=args.min_poll_interval,
                **network) as client:
            return await _statuses(client, action_ids, args.json, wait=not args.no_wait)

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 130


#: Allocations between two collections of the youngest generation, in the command's
#: own process (`entry`); Python's default is 700.
_GC_YOUNG = 10_000


def entry() -> int:
    """The `mirakl-cancel` command (and `python -m mirakl_cancel.cli`): `main` as a process
    of its own.

    What a process may do and a library call may not, for the garbage collector:
    the objects that live as long as the process (the modules, classes and functions
    loaded here, most of what it tracks) are moved out of its reach (`gc.freeze`), so
    that its full passes no longer walk them; and its youngest generation is collected
    every `_GC_YOUNG` allocations instead of Python's 700, since a job allocates a few
    short-lived objects per request and nearly all of them are freed by reference
    counting before any pass could find them. Measured on a 5,000-request job (perf):
    collection took 6.0 % of its CPU samples, 4.1 % frozen, 0.35 % frozen and at 10,000.
    What is cyclic garbage waits at most that many allocations longer: a bounded few MB.
    """
    import gc

    from .._jobs import job  # noqa: F401  (loaded before the freeze, to be frozen too)

    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: parse `argv` (default sys.argv[1:]) and run; returns the code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # The top-level parser has only flags without values, so the command is the first
    # word that is not a flag.
    command = next((word for word in words if not word.startswith("-")), None)
    parser = build_parser(load=[command] if command in _SIMULATOR_COMMANDS else [])
    try:
        args = parser.parse_args(words)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    args.argv = words
    if args.command == "run":
        return _run_command(args)
    if args.command == "status":
        return _status_command(args)
    if args.command == "reconcile":
        return _reconcile_command(args)
    if args.command == "report":
        return _report_command(args)
    if args.command == "simulator":
        from ..simulator._cli import run_from_args

        return run_from_args(args)
    from .demo import run_demo

    _setup_logging(args.verbose, args.quiet)
    return run_demo(args)

