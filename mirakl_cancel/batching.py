"""Many cancels at once: grouping lines per order, sending them concurrently, and a
lingering batcher for workers that receive cancel intents one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING

import attrs

from .errors import MiraklError
from .models import ActionAccepted, Cancelation, CancelRequest

if TYPE_CHECKING:
    from .client import MiraklConnectClient

__all__ = ["CancelOutcome", "LineCancel", "cancel_many", "group_by_order"]


@attrs.frozen
class LineCancel:
    """A cancel intent for one line of one order, before grouping."""

    order_id: str
    cancelation: Cancelation


@attrs.frozen
class CancelOutcome:
    """What became of one request: accepted (with its action) or an error, never both."""

    request: CancelRequest
    accepted: ActionAccepted | None = None
    error: MiraklError | None = None

    @property
    def ok(self) -> bool:
        """Whether the API accepted the request (its action may still fail later)."""
        return self.accepted is not None


def group_by_order(
    lines: Iterable[LineCancel | tuple[str, Cancelation]], *, max_lines: int | None = None
) -> list[CancelRequest]:
    """One CancelRequest per order, in the order orders first appear.

    Fewer POSTs means fewer actions to poll; `max_lines` splits an order with more
    lines than one request should carry into several requests.
    """
    if max_lines is not None and max_lines < 1:
        raise ValueError("max_lines must be at least 1")
    per_order: dict[str, list[Cancelation]] = {}
    for line in lines:
        order_id, cancelation = (line.order_id, line.cancelation) if isinstance(
            line, LineCancel) else line
        per_order.setdefault(order_id, []).append(cancelation)
    requests: list[CancelRequest] = []
    for order_id, cancelations in per_order.items():
        step = max_lines or len(cancelations)
        for start in range(0, len(cancelations), step):
            requests.append(CancelRequest(order_id, cancelations[start:start + step]))
    return requests


async def _iterate(
    items: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
) -> AsyncIterator[CancelRequest]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def send_one(client: MiraklConnectClient, request: CancelRequest) -> CancelOutcome:
    """Send one request and turn any failure into an outcome."""
    try:
        return CancelOutcome(request, accepted=await client.cancel(request))
    except MiraklError as exc:
        return CancelOutcome(request, error=exc)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug must not lose the other requests' outcomes
        error = MiraklError(f"unexpected {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return CancelOutcome(request, error=error)


async def cancel_many(
    client: MiraklConnectClient,
    requests: Iterable[CancelRequest] | AsyncIterable[CancelRequest],
    *,
    concurrency: int | None = None,
) -> AsyncIterator[CancelOutcome]:
    """Send requests concurrently and yield one outcome per request as each completes.

    A fixed pool of workers pulls from `requests` lazily, so a generator of a million
    requests costs a million outcomes over time, not a million tasks at once.
    """
    workers = concurrency or client.max_concurrency
    source = _iterate(requests)
    lock = asyncio.Lock()
    results: asyncio.Queue[CancelOutcome | None] = asyncio.Queue()

    async def worker() -> None:
        try:
            while True:
                async with lock:
                    try:
                        request = await source.__anext__()
                    except StopAsyncIteration:
                        return
                await results.put(await send_one(client, request))
        finally:
            await results.put(None)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        running = len(tasks)
        while running:
            outcome = await results.get()
            if outcome is None:
                running -= 1
            else:
                yield outcome
        for task in tasks:
            task.result()  # surface an error of the source iterable itself
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
