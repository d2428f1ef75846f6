"""Figure 1 — client CPU per cancel: this library vs a raw aiohttp loop (and httpx).

All loops talk to the same fixed-answer server, in another process, at the same
concurrency. Each measure is `time.process_time()` around the whole send loop (session
set-up included) divided by the number of requests; rounds are interleaved (library,
raw, httpx, library, ...) and the median per client is kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from mirakl_cancel._serde import request_body

from ._clients import (
    RawJob,
    httpx_available,
    library_timeout,
    run_httpx,
    run_library,
    run_raw_aiohttp,
)
from ._common import Figure, Sizes, fmt_ratio, make_requests, median
from ._procs import fixed_server

__all__ = ["run"]

GOAL = 1.15
TOKEN = "bench-token"
# aiohttp.web, on a core of its own here: the lean server gave the same ratio (see the
# README's method section), so the figure keeps the full HTTP server.
SERVER = "aiohttp"
TIMED = "raw aiohttp loop, the library's timeouts"


async def _measure(send: Callable[[], Awaitable[int]], expected: int) -> tuple[float, float]:
    """(CPU µs per request, requests per wall second) of one send loop."""
    cpu, wall = time.process_time(), time.perf_counter()
    accepted = await send()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if accepted != expected:
        raise RuntimeError(f"only {accepted} of {expected} requests were accepted")
    return cpu / expected * 1e6, expected / wall


async def run(sizes: Sizes) -> Figure:
    n, conc = sizes.overhead_requests, sizes.overhead_concurrency
    requests = make_requests([f"0001_{3_200_000 + i}-A" for i in range(n)])
    with fixed_server(impl=SERVER) as server:
        base = f"http://127.0.0.1:{server.info['port']}"
        job = RawJob(base, TOKEN, requests)
        # Same bytes on the wire, or the comparison means nothing.
        first_raw = job.items[0][1]
        if json.dumps(first_raw, separators=(",", ":")).encode() != request_body(requests[0]):
            raise RuntimeError("the raw loop's body differs from the library's")
        loops: dict[str, Callable[[], Awaitable[int]]] = {
            "mirakl-cancel `cancel_many`": lambda: run_library(base, TOKEN, requests, conc),
            "raw aiohttp loop": lambda: run_raw_aiohttp(job, conc),
            # For reference, not the goal's baseline: how much of the gap is the library's
            # per-read timeout (aiohttp re-arms a timer as data arrives), not its code.
            TIMED: lambda: run_raw_aiohttp(job, conc, timeout=library_timeout()),
        }
        # httpx costs several times more per request: fewer requests keep the run short.
        n_httpx = max(n // 5, min(n, 200))
        httpx_job = RawJob(base, TOKEN, requests[:n_httpx])
        if httpx_available():
            loops["httpx AsyncClient loop"] = lambda: run_httpx(httpx_job, conc)
        # Warm-up: imports, first connections, code paths; not recorded.
        warm = make_requests([f"0001_{i}-W" for i in range(min(200, n))])
        warm_job = RawJob(base, TOKEN, warm)
        await run_library(base, TOKEN, warm, conc)
        await run_raw_aiohttp(warm_job, conc)
        await run_raw_aiohttp(warm_job, conc, timeout=library_timeout())
        if httpx_available():
            await run_httpx(warm_job, conc)
        server_cpu = server.cpu_seconds()
        sent = 0
        cpu: dict[str, list[float]] = {name: [] for name in loops}
        rps: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(sizes.overhead_rounds):
            for name, send in loops.items():
                count = n_httpx if name.startswith("httpx") else n
                per_request, rate = await _measure(send, count)
                sent += count
                cpu[name].append(per_request)
                rps[name].append(rate)
        server_after = server.cpu_seconds()
    lib, raw = median(cpu["mirakl-cancel `cancel_many`"]), median(cpu["raw aiohttp loop"])
    ratio = lib / raw
    rows = []
    for name in loops:
        spread = f"{min(cpu[name]):.0f}-{max(cpu[name]):.0f}"
        rows.append([name, f"{median(cpu[name]):.0f}", spread,
                     fmt_ratio(median(cpu[name]) / raw), f"{median(rps[name]):,.0f}"])
    notes = [f"{n:,} requests per run, concurrency {conc}, {sizes.overhead_rounds} interleaved "
             "round(s), median kept; the server is `benchmarks/_fixed_server.py --impl "
             f"{SERVER}` in its own process, so only the client's CPU is counted."]
    if server_cpu is not None and server_after is not None:
        notes.append(f"The server used {(server_after - server_cpu) / sent * 1e6:.0f} µs of CPU "
                     "per request (its own core: it is not what limits the client).")
    notes.append(f"The row '{TIMED}' is the raw loop with the timeouts the library's transport "
                 "sets (`Timeout()`: a 60 s whole-answer deadline and a 30 s bound on each wait "
                 "for data, which aiohttp re-arms as data arrives; the plain loop has aiohttp's "
                 "5-minute total only): the share of the gap that is those timers, not the "
                 "library's code. The goal is measured against the plain loop.")
    if httpx_available():
        notes.append(
            f"httpx ran {n_httpx:,} requests per run (it is much slower). Its cost per request "
            "grows with concurrency: httpcore 1.0's pool rescans every connection whenever it "
            "assigns a request (encode/httpcore#1035). Without `sniffio` installed, httpcore "
            "also retries a failing `import sniffio` on every request; "
            "`benchmarks/requirements.txt` installs both.")
    if not httpx_available():
        rows.append(["httpx AsyncClient loop", "—", "—", "—", "—"])
        notes.append("httpx row skipped: httpx is not installed "
                     "(`pip install -r benchmarks/requirements.txt`).")
    return Figure(
        number=1, title="Client CPU per cancel request",
        result=f"{lib:.0f} µs CPU/request",
        baseline=f"raw aiohttp loop: {raw:.0f} µs",
        ratio=fmt_ratio(ratio), goal=f"≤ {GOAL:.2f}x", met=ratio <= GOAL,
        header=["client", "CPU µs/request (median)", "range", "vs raw aiohttp", "wall req/s"],
        rows=rows, notes=notes)
