"""A minimal fixed-answer Mirakl Connect, for measuring the client alone.

Run as a separate process (``python -m benchmarks._fixed_server --port 0``) so that
none of its CPU time lands in the client's ``process_time()``. It answers:

- ``POST /v2/orders/{order_id}/cancel`` -> 202 ``{"action_id": ..., "tracking_id": ...}``
- ``GET /v2/orders/actions/{action_id}`` -> 200, a fixed SUCCESS ``ActionResponse``
- ``GET /_stats`` -> request counters; ``POST /_reset`` zeroes them

with an optional added latency (``--latency SECONDS``) per API request. It validates
nothing: the simulator exists for behaviour, this server exists to cost (almost) nothing.
It prints ``port=N`` once listening and serves until SIGTERM/SIGINT, or until
``--max-seconds`` pass, whichever comes first (a bound in case its parent dies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

from aiohttp import web

_CANCEL_PREFIX = "/v2/orders/"
_STATUS_PREFIX = "/v2/orders/actions/"
_STATUS_TAIL = (b'","status":"SUCCESS","created_at":"2025-01-01T00:00:00.000Z",'
                b'"updated_at":"2025-01-01T00:01:00.000Z"}')
_JSON = "application/json"


class FixedServer:
    """Request counters and the low-level handler (no router, no middleware)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.counts = {"cancel": 0, "status": 0, "other": 0}
        self._next_id = 0

    async def handle(self, request: web.BaseRequest) -> web.Response:
        path = request.path
        method = request.method
        if method == "POST" and path.startswith(_CANCEL_PREFIX) and path.endswith("/cancel"):
            await request.read()  # consume the body, as a real server would
            self.counts["cancel"] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            self._next_id += 1
            action = f"act-{self._next_id:08d}"
            body = f'{{"action_id":"{action}","tracking_id":"{action}"}}'.encode()
            return web.Response(status=202, body=body, content_type=_JSON)
        if method == "GET" and path.startswith(_STATUS_PREFIX):
            self.counts["status"] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            action = path[len(_STATUS_PREFIX):]
            body = b'{"id":"' + action.encode() + _STATUS_TAIL
            return web.Response(status=200, body=body, content_type=_JSON)
        if path == "/_stats":
            return web.Response(body=json.dumps(self.counts).encode(), content_type=_JSON)
        if path == "/_reset" and method == "POST":
            for key in self.counts:
                self.counts[key] = 0
            return web.Response(body=b"{}", content_type=_JSON)
        self.counts["other"] += 1
        return web.Response(status=404, body=b'{"code":"DATA_NOT_FOUND","message":"no route"}',
                            content_type=_JSON)


async def serve(port: int, latency: float, max_seconds: float) -> None:
    fixed = FixedServer(latency)
    server = web.Server(fixed.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or ()
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    print(f"port={bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._fixed_server",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="added to every API request (default: 0)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="exit after this long whatever happens (default: %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
