"""Figure 2 — latency-bound throughput: requests/second vs the C/L ceiling.

The fixed server adds L seconds to every answer; with C requests in flight no client
can exceed C/L requests per second. The library (`max_concurrency=C`) and the raw
aiohttp loop (same C) each send the same requests, in interleaved rounds.

The server is the lean one (`--impl lean`, a bare `asyncio.Protocol` server): client and
server share the machine, and aiohttp.web's ~70 µs of CPU per request delays the
client's answers on two cores, which would measure the test bed rather than the client.
"""

from __future__ import annotations

import time

from ._clients import RawJob, run_library, run_raw_aiohttp
from ._common import Figure, Sizes, fmt_ratio, make_requests, median
from ._procs import fixed_server

__all__ = ["run"]

GOAL = 0.90
TOKEN = "bench-token"
SERVER = "lean"  # see the module docstring


async def run(sizes: Sizes) -> Figure:
    n, conc, latency = sizes.latency_requests, sizes.latency_concurrency, sizes.latency_seconds
    ceiling = conc / latency
    requests = make_requests([f"0002_{3_300_000 + i}-A" for i in range(n)])
    lib_rates: list[float] = []
    raw_rates: list[float] = []
    with fixed_server(latency=latency, impl=SERVER) as server:
        base = f"http://127.0.0.1:{server.info['port']}"
        job = RawJob(base, TOKEN, requests)
        server_cpu = server.cpu_seconds()
        for _ in range(sizes.latency_rounds):
            started = time.perf_counter()
            accepted = await run_library(base, TOKEN, requests, conc)
            lib_rates.append(accepted / (time.perf_counter() - started))
            started = time.perf_counter()
            accepted_raw = await run_raw_aiohttp(job, conc)
            raw_rates.append(accepted_raw / (time.perf_counter() - started))
            if accepted != n or accepted_raw != n:
                raise RuntimeError(f"accepted {accepted} / {accepted_raw} of {n}")
        server_after = server.cpu_seconds()
    lib, raw = median(lib_rates), median(raw_rates)
    notes = [f"{n:,} requests per run, {sizes.latency_rounds} interleaved round(s); the "
             "wall time includes opening the C connections. The server is "
             f"`benchmarks/_fixed_server.py --impl {SERVER}` in its own process."]
    if server_cpu is not None and server_after is not None:
        sent = 2 * n * sizes.latency_rounds
        notes.append(f"The server used {(server_after - server_cpu) / sent * 1e6:.0f} µs of CPU "
                     "per request (on the same two cores as the client).")
    return Figure(
        number=2, title=f"Throughput at L = {latency * 1000:.0f} ms, C = {conc}",
        result=f"{lib:,.0f} req/s",
        baseline=f"C/L = {ceiling:,.0f} req/s (raw aiohttp: {raw:,.0f})",
        ratio=fmt_ratio(lib / ceiling), goal=f"≥ {GOAL:.2f}x C/L", met=lib / ceiling >= GOAL,
        header=["client", "req/s (median)", "of C/L"],
        rows=[["mirakl-cancel `cancel_many` (max_concurrency=C)", f"{lib:,.0f}",
               fmt_ratio(lib / ceiling)],
              ["raw aiohttp loop (C workers)", f"{raw:,.0f}", fmt_ratio(raw / ceiling)],
              ["ceiling C/L", f"{ceiling:,.0f}", "1.00x"]],
        notes=notes)
