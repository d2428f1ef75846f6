"""Run every figure and write the results table into `benchmarks/README.md`.

    python -m benchmarks            # the full run (a few minutes on 2 cores)
    python -m benchmarks --quick    # tiny sizes, for a smoke test (seconds)
    python -m benchmarks --big      # also figure 9 (a 1,000,000-row file) and figure 8
                                    # at 10,000 requests (minutes)

The table goes between the `<!-- results:start -->` and `<!-- results:end -->` markers
of the output file (`--output`, default `benchmarks/README.md`); the rest of the file
is left as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from . import (
    fig_batching,
    fig_journal,
    fig_latency,
    fig_overhead,
    fig_polling,
    fig_ratelimit,
    fig_tracker,
)
from ._clients import httpx_available
from ._common import Figure, Sizes, fresh_bytecode, fresh_cache_dir

__all__ = ["FIGURES", "main", "render", "write_results"]

START = "<!-- results:start -->"
END = "<!-- results:end -->"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "README.md"

FIGURES: dict[int, tuple[str, Callable[[Sizes], Awaitable[Figure]]]] = {
    1: ("Client CPU per cancel request", fig_overhead.run),
    2: ("Latency-bound throughput", fig_latency.run),
    3: ("Tracker scale", fig_tracker.run),
    4: ("Polling economy", fig_polling.run),
    5: ("Goodput under a server rate limit", fig_ratelimit.run),
    6: ("Batching", fig_batching.run),
    7: ("Journaled job on a slow disk", fig_journal.run_slowdisk),
    8: ("Journaled CLI job vs the library", fig_journal.run_overhead),
    9: ("A 1,000,000-row file", fig_journal.run_big),
}
#: Figures run only when asked for (`--big`, or `--only`): they take minutes.
BIG = (9,)


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    httpx_version = "not installed"
    if httpx_available():
        import httpx

        httpx_version = httpx.__version__
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "aiohttp": aiohttp.__version__,
        "httpx": httpx_version,
        "os": f"{platform.system()} {platform.release()}",
        "load": load,
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render(figures: Sequence[Figure], info: dict[str, str], *, quick: bool,
           seconds: float) -> str:
    """The results block (markdown), markers excluded."""
    mode = "`--quick` (tiny sizes: smoke test, not numbers)" if quick else "full"
    out = [
        f"Run of {info['date']}, {mode}, {seconds:.0f} s: {info['cpu']}, {info['cores']} cores, "
        f"{info['os']}, {info['python']}, aiohttp {info['aiohttp']}, httpx {info['httpx']}; "
        f"load average at start {info['load']}.",
        "",
    ]
    verdict = {True: "yes", False: "**no**", None: "n/a"}
    out += _table(
        ["#", "figure", "result", "baseline (same run)", "ratio", "goal", "met"],
        [[str(f.number), f.title, f.result, f.baseline, f.ratio, f.goal, verdict[f.met]]
         for f in figures])
    for figure in figures:
        out += ["", f"#### {figure.number}. {figure.title}", ""]
        if figure.rows:
            out += _table(figure.header, figure.rows)
            out.append("")
        out += [note for note in figure.notes for note in (note, "")][:-1] if figure.notes \
            else []
    return "\n".join(out).rstrip() + "\n"


def write_results(path: Path, block: str) -> None:
    """Put `block` between the markers of `path` (created or appended to if needed)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"{START}\n{block}{END}"
    if START in text and END in text and text.index(START) < text.index(END):
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + section + "\n"
    path.write_text(text, encoding="utf-8")


def _failed(number: int, title: str, exc: BaseException) -> Figure:
    return Figure(number=number, title=title, result=f"error: {type(exc).__name__}: {exc}",
                  baseline="-", ratio="-", goal="-", met=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="markdown file to write the table into (default: %(default)s)")
    parser.add_argument("--only", type=lambda s: [int(x) for x in s.split(",")],
                        default=None, metavar="N[,N...]",
                        help="run only these figures (default: all but --big's)")
    parser.add_argument("--big", action="store_true",
                        help="also figure 9 (a 1,000,000-row file) and figure 8 at "
                             "10,000 requests (several minutes)")
    args = parser.parse_args(argv)
    if args.only is None:
        args.only = [n for n in sorted(FIGURES) if n not in BIG or args.big]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s): {sorted(unknown)}")
    # The figures run in this process (figure 4 reads statuses on the real clock) keep
    # their poll-state record apart from the user's, and from the measured children's.
    os.environ["MIRAKL_CANCEL_CACHE_DIR"] = fresh_cache_dir()
    # The measured processes import compiled modules, as from an installed package.
    if not fresh_bytecode():
        print("note: the library's bytecode could not all be written; processes that "
              "import it compile it again (their times include that)", file=sys.stderr)
    # 429s are expected in figure 5; the library's warnings would drown the output.
    logging.getLogger("mirakl_cancel").setLevel(logging.ERROR)
    sizes = dataclasses.replace(Sizes.quick() if args.quick else Sizes(), big=args.big)
    info = machine()
    figures: list[Figure] = []
    started = time.perf_counter()
    failed = False
    for number in args.only:
        title, run = FIGURES[number]
        print(f"[{number}] {title} ...", file=sys.stderr, flush=True)
        figure_started = time.perf_counter()
        try:
            figure = asyncio.run(run(sizes))
        except Exception as exc:
            traceback.print_exc()
            figure, failed = _failed(number, title, exc), True
        print(f"[{number}] {figure.result} | {figure.baseline} | {figure.ratio} "
              f"({time.perf_counter() - figure_started:.1f} s)", file=sys.stderr, flush=True)
        figures.append(figure)
    block = render(figures, info, quick=args.quick, seconds=time.perf_counter() - started)
    write_results(args.output, block)
    print(block)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
