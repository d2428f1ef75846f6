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

Two implementations give the same answers, with the same headers (``Content-Type``,
``Content-Length``, ``Date``, ``Server``) in the same order:

- ``--impl aiohttp`` (default): aiohttp.web's low-level ``web.Server`` (no router, no
  middleware); about 70 µs of CPU per request.
- ``--impl lean``: a bare ``asyncio.Protocol`` HTTP/1.1 keep-alive server that parses the
  request line, the headers and a ``Content-Length`` body just enough to route; several
  times cheaper per request. Requests on one connection are answered in order (pipelined
  requests are queued behind the one in progress); chunked bodies are refused (501), and
  heads over 64 KiB or bodies over 1 MiB end the connection (431/413).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from email.utils import formatdate

import aiohttp
from aiohttp import web

_CANCEL_PREFIX = "/v2/orders/"
_STATUS_PREFIX = "/v2/orders/actions/"
_STATUS_TAIL = (b'","status":"SUCCESS","created_at":"2025-01-01T00:00:00.000Z",'
                b'"updated_at":"2025-01-01T00:01:00.000Z"}')
_JSON = "application/json"
_NOT_FOUND = b'{"code":"DATA_NOT_FOUND","message":"no route"}'

IMPLS = ("aiohttp", "lean")


class FixedServer:
    """Request counters and the answers, shared by both implementations."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.counts = {"cancel": 0, "status": 0, "other": 0}
        self._next_id = 0

    def cancel_body(self) -> bytes:
        self._next_id += 1
        action = f"act-{self._next_id:08d}"
        return f'{{"action_id":"{action}","tracking_id":"{action}"}}'.encode()

    @staticmethod
    def status_body(action: bytes) -> bytes:
        return b'{"id":"' + action + _STATUS_TAIL

    def stats_body(self) -> bytes:
        return json.dumps(self.counts).encode()

    def reset(self) -> None:
        for key in self.counts:
            self.counts[key] = 0

    async def handle(self, request: web.BaseRequest) -> web.Response:
        """The aiohttp.web handler (``--impl aiohttp``)."""
        path = request.path
        method = request.method
        if method == "POST" and path.startswith(_CANCEL_PREFIX) and path.endswith("/cancel"):
            await request.read()  # consume the body, as a real server would
            self.counts["cancel"] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            return web.Response(status=202, body=self.cancel_body(), content_type=_JSON)
        if method == "GET" and path.startswith(_STATUS_PREFIX):
            self.counts["status"] += 1
            if self.latency:
                await asyncio.sleep(self.latency)
            body = self.status_body(path[len(_STATUS_PREFIX):].encode())
            return web.Response(status=200, body=body, content_type=_JSON)
        if path == "/_stats":
            return web.Response(body=self.stats_body(), content_type=_JSON)
        if path == "/_reset" and method == "POST":
            self.reset()
            return web.Response(body=b"{}", content_type=_JSON)
        self.counts["other"] += 1
        return web.Response(status=404, body=_NOT_FOUND, content_type=_JSON)


# --- lean implementation -------------------------------------------------------------

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_REASONS = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 404: b"Not Found",
            413: b"Payload Too Large", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented"}
# The header block aiohttp.web sends, so that the client parses the same thing.
_SERVER = (f"Python/{sys.version_info[0]}.{sys.version_info[1]} "
           f"aiohttp/{aiohttp.__version__}").encode()
_B_CANCEL_PREFIX = _CANCEL_PREFIX.encode()
_B_STATUS_PREFIX = _STATUS_PREFIX.encode()


class _Clock:
    """The ``Date`` header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class _Lean:
    """What every lean connection shares: the answers and the live connections."""

    def __init__(self, fixed: FixedServer) -> None:
        self.fixed = fixed
        self.clock = _Clock()
        self.connections: set[_LeanProtocol] = set()

    def response(self, status: int, body: bytes, *, close: bool = False) -> bytes:
        return b"".join((
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Date: %s\r\nServer: %s\r\n" % (status, _REASONS[status], len(body),
                                            self.clock.date(), _SERVER),
            b"Connection: close\r\n\r\n" if close else b"\r\n",
            body))

    def route(self, method: bytes, target: bytes) -> tuple[int, bytes, bool]:
        """(status, body, delayed by the latency) for one request."""
        path = target.split(b"?", 1)[0]
        fixed = self.fixed
        if method == b"POST" and path.startswith(_B_CANCEL_PREFIX) \
                and path.endswith(b"/cancel"):
            fixed.counts["cancel"] += 1
            return 202, fixed.cancel_body(), True
        if method == b"GET" and path.startswith(_B_STATUS_PREFIX):
            fixed.counts["status"] += 1
            return 200, fixed.status_body(path[len(_B_STATUS_PREFIX):]), True
        if path == b"/_stats":
            return 200, fixed.stats_body(), False
        if path == b"/_reset" and method == b"POST":
            fixed.reset()
            return 200, b"{}", False
        fixed.counts["other"] += 1
        return 404, _NOT_FOUND, False


class _Slot:
    """One answer on its way: its bytes once due, whether to close after, its timer."""

    __slots__ = ("close", "data", "timer")

    def __init__(self, data: bytes | None, close: bool) -> None:
        self.data = data
        self.close = close
        self.timer: asyncio.TimerHandle | None = None


class _LeanProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; answers leave in the order requests came."""

    def __init__(self, lean: _Lean) -> None:
        self.lean = lean
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        # The request whose body is awaited: (method, target, keep-alive, body length).
        self.head: tuple[bytes, bytes, bool, int] | None = None
        # Answers not yet written, oldest first.
        self.queue: deque[_Slot] = deque()
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.lean.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lean.connections.discard(self)
        self._cancel_timers()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.buffer = self.buffer + data if self.buffer else data
        while not self.closing:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > _MAX_HEAD:
                        self._fail(431)
                    return
                if end > _MAX_HEAD:
                    self._fail(431)
                    return
                head = self._parse_head(self.buffer[:end])
                self.buffer = self.buffer[end + 4:]
                if head is None:
                    return
                self.head = head
            method, target, keep_alive, length = self.head
            if len(self.buffer) < length:
                return
            self.buffer = self.buffer[length:]  # the body: read, not looked at
            self.head = None
            self._answer(method, target, keep_alive)

    def _parse_head(self, head: bytes) -> tuple[bytes, bytes, bool, int] | None:
        line, _, fields = head.partition(b"\r\n")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._fail(400)
            return None
        method, target, version = parts
        length = 0
        connection = b""
        for field in fields.split(b"\r\n") if fields else ():
            name, sep, value = field.partition(b":")
            if not sep:
                self._fail(400)
                return None
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    self._fail(400)
                    return None
                length = int(value)
                if length > _MAX_BODY:
                    self._fail(413)
                    return None
            elif name == b"transfer-encoding":
                self._fail(501)
                return None
            elif name == b"connection":
                connection = value.strip().lower()
        if version == b"HTTP/1.1":
            keep_alive = connection != b"close"
        else:
            keep_alive = connection == b"keep-alive"
        return method, target, keep_alive, length

    def _answer(self, method: bytes, target: bytes, keep_alive: bool) -> None:
        lean = self.lean
        status, body, delayed = lean.route(method, target)
        close = not keep_alive
        if close:
            self.closing = True  # whatever follows on this connection is not read
        latency = lean.fixed.latency
        if delayed and latency:
            slot = _Slot(None, close)
            slot.timer = self.loop.call_later(latency, self._due, slot, status, body)
            self.queue.append(slot)
        elif self.queue:
            self.queue.append(_Slot(lean.response(status, body, close=close), close))
        else:
            self._write(lean.response(status, body, close=close), close)

    def _due(self, slot: _Slot, status: int, body: bytes) -> None:
        slot.data = self.lean.response(status, body, close=slot.close)
        slot.timer = None
        queue = self.queue
        while queue:
            data = queue[0].data
            if data is None:  # an earlier request is not due yet: keep the order
                return
            self._write(data, queue.popleft().close)

    def _cancel_timers(self) -> None:
        for slot in self.queue:
            if slot.timer is not None:
                slot.timer.cancel()
        self.queue.clear()

    def _write(self, data: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(data)
        if close:
            transport.close()

    def _fail(self, status: int) -> None:
        """Answer an unusable request at once and end the connection."""
        self.closing = True
        self.buffer = b""
        self._cancel_timers()
        self._write(self.lean.response(status, b'{"message":"%d"}' % status, close=True), True)


# --- serving -------------------------------------------------------------------------

async def _wait_for_stop(max_seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)


async def serve_aiohttp(fixed: FixedServer, port: int, max_seconds: float) -> None:
    server = web.Server(fixed.handle, access_log=None)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or ()
    bound = int(sockets[0].getsockname()[1]) if sockets else port
    print(f"port={bound}", flush=True)
    await _wait_for_stop(max_seconds)
    await runner.cleanup()


async def serve_lean(fixed: FixedServer, port: int, max_seconds: float) -> None:
    lean = _Lean(fixed)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _LeanProtocol(lean), "127.0.0.1", port,
                                      backlog=1024)
    print(f"port={int(server.sockets[0].getsockname()[1])}", flush=True)
    await _wait_for_stop(max_seconds)
    server.close()
    for connection in list(lean.connections):
        if connection.transport is not None:
            connection.transport.abort()


async def serve(port: int, latency: float, max_seconds: float, impl: str = "aiohttp") -> None:
    fixed = FixedServer(latency)
    if impl == "lean":
        await serve_lean(fixed, port, max_seconds)
    else:
        await serve_aiohttp(fixed, port, max_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._fixed_server",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="added to every API request (default: 0)")
    parser.add_argument("--impl", choices=IMPLS, default="aiohttp",
                        help="aiohttp.web or a bare asyncio.Protocol server "
                             "(default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="exit after this long whatever happens (default: %(default)s)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.latency, args.max_seconds, args.impl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
