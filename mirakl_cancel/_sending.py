"""Sending many cancels concurrently, each ending as a `CancelOutcome`.

It sits below the client (which offers it as `client.cancel_many`) and below the
batcher and the bulk run (which use it), and knows only the `Canceller` protocol:
so the client does not import the layers built on it, and tests can give a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime, timezone
from typing import Protocol, TypeVar

import attrs

from ._observe.guards import Guards, SendAttempt
from ._observe.logs import fields
from ._serde import loads, structure_request
from .errors import MiraklError, UncertainDeliveryError
from .models import ActionAccepted, CancelRequest

__all__ = ["CancelOutcome", "Canceller", "GuardRefused", "StoredBody", "drain", "send_many",
           "send_one"]

logger = logging.getLogger("mirakl_cancel")

_T = TypeVar("_T")


class Canceller(Protocol):
    """What sending needs from a client: one cancel, and how many may be in flight."""

    @property
    def max_concurrency(self) -> int: ...

    async def cancel(self, request: CancelRequest, *,
                     on_send: Callable[[], Awaitable[None] | None] | None = None,
                     ) -> ActionAccepted: ...


class GuardRefused(Exception):
    """A guard (e.g. the journal's write-ahead mark) refused an attempt: it did not leave.

    Raised by `send_one` with the guard's own exception as `__cause__`; never turned into
    an outcome, since what failed is the caller's, not the cancel's."""


class StoredBody:
    """A cancel as the exact body bytes `_serde.request_body` wrote for it, checked when
    they were written (the job's journaled body): sent as they are, never parsed or
    checked again on the way out (the job sends thousands a second; re-reading each into
    a `CancelRequest` only to write the same bytes again was a tenth of its loop's time).

    Private to the library: only bytes that `request_body` produced for a request that
    passed its checks may be given (anything else would reach the API unchecked)."""

    __slots__ = ("_request", "body", "lines", "order_id")

    def __init__(self, order_id: str, body: bytes, lines: int) -> None:
        self.order_id = order_id
        self.body = body
        #: How many lines it cancels (for the cancel's hooks and spans).
        self.lines = lines
        self._request: CancelRequest | None = None

    def request(self) -> CancelRequest:
        """The request these bytes are (read back once, only if someone asks)."""
        if self._request is None:
            self._request = structure_request(self.order_id, loads(self.body)["cancelations"])
        return self._request

    def __repr__(self) -> str:
        return f"StoredBody(order_id={self.order_id!r}, lines={self.lines})"


@attrs.frozen
class CancelOutcome:
    """What became of one request: accepted (with its action) or an error, never both."""

    #: The request, or (a send of stored bytes) what `request` reads back on demand.
    _request: CancelRequest | StoredBody = attrs.field(alias="request")
    accepted: ActionAccepted | None = None
    error: MiraklError | None = None
    #: When the first attempt left (UTC): the earliest moment the cancel could apply,
    #: which reconciliation needs to tell our adjustment from older ones.
    sent_at: datetime | None = None

    @property
    def request(self) -> CancelRequest:
        """The request this outcome is about."""
        sent = self._request
        return sent.request() if isinstance(sent, StoredBody) else sent

    @property
    def ok(self) -> bool:
        """Whether the API accepted the request (its action may still fail later)."""
        return self.accepted is not None


async def send_one(client: Canceller, request: CancelRequest | StoredBody, *,
                   guard: Callable[[], Awaitable[None]] | None = None) -> CancelOutcome:
    """Send one request (or the stored bytes of one) and turn any failure into an outcome.

    An unexpected failure (not a MiraklError) once the cancel may have left is
    UNCERTAIN (`UncertainDeliveryError`), never a plain error: a caller, or a re-run,
    would feel free to send a plain error again, and cancel twice.

    `guard` is awaited right before each attempt leaves; if it raises, the attempt does
    not leave and `GuardRefused` is raised (from the guard's exception).
    """
    sent_at = datetime.now(timezone.utc)
    left = False

    async def guarded(guard: Callable[[], Awaitable[None]]) -> None:
        nonlocal left
        try:
            await guard()
        except Exception as exc:
            raise GuardRefused(str(exc)) from exc
        left = True

    def on_send(attempt: SendAttempt | None = None) -> Awaitable[None] | None:
        nonlocal left
        if guard is not None:
            return guarded(guard)
        left = True
        return None

    try:
        guards = getattr(client, "guards", None)
        noting = getattr(client, "_cancel_noting_send", None)
        if isinstance(request, StoredBody):  # only the library's own client sends bytes
            stored = getattr(client, "_cancel_stored")  # noqa: B009 - not in the protocol
            if guard is not None and isinstance(guards, Guards):
                with guards.sending(on_send):
                    accepted = await stored(request, None)
            else:
                accepted = await stored(request, on_send)
        elif guard is not None and isinstance(guards, Guards):
            with guards.sending(on_send):  # the last guard: the others let it go
                accepted = await client.cancel(request)
        elif noting is not None:  # unguarded: just note whether an attempt left
            accepted = await noting(request, on_send)
        else:  # a stand-in client (tests)
            accepted = await client.cancel(request, on_send=on_send)
        return CancelOutcome(request, accepted=accepted, sent_at=sent_at)
    except GuardRefused:
        raise
    except MiraklError as exc:
        return CancelOutcome(request, error=exc, sent_at=sent_at)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug must not lose the other requests' outcomes
        error: MiraklError
        if left:
            error = UncertainDeliveryError(
                f"the cancel of order {request.order_id} may have been processed, then "
                f"failed unexpectedly ({type(exc).__name__}): check it before resending",
                order_id=request.order_id)
        else:
            error = MiraklError(f"unexpected {type(exc).__name__} before sending: {exc}")
        error.__cause__ = exc
        return CancelOutcome(request, error=error, sent_at=sent_at)


async def drain(
    source: Iterable[_T] | AsyncIterable[_T],
    handle: Callable[[_T], Awaitable[None]],
    workers: int,
    *,
    more: Callable[[], bool] = lambda: True,
) -> None:
    """Run `handle` on every item of `source`, `workers` at a time: the one worker pool.

    Items are pulled lazily, so a generator of a million items costs a million handlings
    over time, not a million tasks at once. Pulling stops when `more()` turns false (the
    items in hand are still handled). An error of the source itself is raised once the
    workers have finished. Cancelled (the caller stopped), it logs a WARNING for each
    cancel in flight (an item that is a `CancelRequest`, or a pair starting with one
    whose order id is known): it may have been processed, so check before resending.
    """
    failure: list[BaseException] = []

    if isinstance(source, AsyncIterable):
        items = aiter(source)
        lock = asyncio.Lock()  # an async iterator must not be advanced concurrently

        async def pull() -> tuple[_T] | None:
            async with lock:
                if failure or not more():
                    return None
                try:
                    return (await anext(items),)
                except StopAsyncIteration:
                    return None
                except Exception as exc:
                    failure.append(exc)
                    return None
    else:
        plain = iter(source)  # a plain iterator needs no lock: next() never yields

        async def pull() -> tuple[_T] | None:
            if failure or not more():
                return None
            try:
                return (next(plain),)
            except StopIteration:
                return None
            except Exception as exc:
                failure.append(exc)
                return None

    in_flight: list[tuple[_T] | None] = [None] * workers

    async def worker(slot: int) -> None:
        while (got := await pull()) is not None:
            in_flight[slot] = got
            await handle(got[0])
            in_flight[slot] = None

    tasks = [asyncio.create_task(worker(slot)) for slot in range(workers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        for got in in_flight:
            if got is not None:
                _warn_in_flight(got[0])
    if failure:
        raise failure[0]


def _warn_in_flight(item: object) -> None:
    if isinstance(item, tuple) and item:
        item = item[0]  # an engine's (item, choice)
    order_id = getattr(item, "order_id", None)
    if order_id is None:
        return
    logger.warning("the cancel of order %s was in flight when sending stopped: "
                   "it may have been processed; check it before resending",
                   order_id, extra=fields(order_id=order_id))


async def send_many(
    client: Canceller,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    *,
    concurrency: int | None = None,
) -> AsyncIterator[CancelOutcome]:
    """Send requests concurrently and yield one outcome per request as each completes.

    A fixed pool of workers (`drain`) pulls from `requests` lazily, so a generator of a
    million requests costs a million outcomes over time, not a million tasks at once.
    Stopping the iteration early abandons the cancels in flight: they may have been
    processed, so each is logged (WARNING) with its order id, to be checked before any
    resend.
    """
    results: asyncio.Queue[CancelOutcome | None] = asyncio.Queue()

    async def one(request: CancelRequest) -> None:
        results.put_nowait(await send_one(client, request))

    async def run() -> None:
        try:
            await drain(requests, one, concurrency or client.max_concurrency)
        finally:
            results.put_nowait(None)

    task = asyncio.get_running_loop().create_task(run())
    try:
        while (outcome := await results.get()) is not None:
            yield outcome
        await task  # surface an error of the source iterable itself
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, return_exceptions=True)
