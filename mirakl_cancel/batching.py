"""Many cancels at once: grouping lines per order, and a lingering batcher for workers
that receive cancel intents one at a time (the concurrent sending itself is
`client.cancel_many`, in `_sending`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import attrs

from ._constants import DEFAULT_LINGER
from ._observe.logs import fields
from ._sending import CancelOutcome, send_one
from .models import Cancelation, CancelRequest

if TYPE_CHECKING:
    from .client import MiraklConnectClient
    from .tracker import ActionTracker

__all__ = ["CancelBatcher", "CancelOutcome", "LineCancel", "group_by_order"]

logger = logging.getLogger("mirakl_cancel")


@attrs.frozen
class LineCancel:
    """A cancel intent for one line of one order, before grouping."""

    order_id: str
    cancelation: Cancelation


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


class _Batch:
    """The lines of one order waiting for the same POST, and who waits for them."""

    __slots__ = ("futures", "lines", "order_id", "sent", "timer")

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        self.lines: list[Cancelation] = []
        self.futures: list[asyncio.Future[CancelOutcome]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sent = False


class CancelBatcher:
    """Coalesces cancel intents that arrive one at a time into one POST per order.

    An order-sync worker often learns about the lines of one order separately, a few
    milliseconds apart. Sending them as they come would make one action (and one
    minute-spaced poll schedule) per line; holding each order's lines for `linger`
    seconds after the first one sends them together. Each `submit()` returns the
    outcome of the request that carried its line, shared with the other lines.

    With a `tracker`, every accepted action is handed to it at once, so
    `await tracker.wait(outcome.accepted.action_id)` gives the final status.
    Closing (or leaving the `async with` block) sends whatever is still lingering.
    """

    def __init__(
        self,
        client: MiraklConnectClient,
        *,
        linger: float = DEFAULT_LINGER,
        max_lines: int | None = None,
        tracker: ActionTracker | None = None,
    ) -> None:
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not linger >= 0:
            raise ValueError("linger must be a number of seconds >= 0")
        if max_lines is not None and (isinstance(max_lines, bool) or max_lines < 1):
            raise ValueError("max_lines must be at least 1, or None")
        self.client = client
        self.linger = float(linger)
        self.max_lines = max_lines
        self.tracker = tracker
        #: POSTs sent so far (for a worker's metrics).
        self.requests_sent = 0
        self._open: dict[str, _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> CancelBatcher:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def lingering(self) -> int:
        """Lines waiting for their order's POST."""
        return sum(len(batch.lines) for batch in self._open.values())

    async def submit(self, order_id: str, cancelation: Cancelation) -> CancelOutcome:
        """Queue one line and wait for the outcome of the POST that carries it.

        A bad line raises ValidationError here, alone, instead of spoiling the
        request of the lines it would have joined. Cancelling this call withdraws the
        line if its POST has not been sent yet; once sent, it cannot be withdrawn.
        """
        if self._closed:
            raise RuntimeError("this CancelBatcher is closed")
        CancelRequest(order_id, (cancelation,))  # validates, raising ValidationError
        loop = asyncio.get_running_loop()
        batch = self._open.get(order_id)
        if batch is None:
            batch = self._open[order_id] = _Batch(order_id)
            batch.timer = loop.call_later(self.linger, self._send, batch)
        future: asyncio.Future[CancelOutcome] = loop.create_future()
        batch.lines.append(cancelation)
        batch.futures.append(future)
        if self.max_lines is not None and len(batch.lines) >= self.max_lines:
            self._send(batch)
        try:
            return await future
        except asyncio.CancelledError:
            if not batch.sent and future in batch.futures:
                index = batch.futures.index(future)
                del batch.futures[index], batch.lines[index]
                if not batch.lines:
                    self._forget(batch)
            raise

    async def flush(self) -> None:
        """Send every lingering line now and wait for all POSTs in flight."""
        for batch in list(self._open.values()):
            self._send(batch)
        while self._sending:
            sending = list(self._sending)
            await asyncio.gather(*sending, return_exceptions=True)
            # Not left to the tasks' done-callbacks: awaiting finished tasks need not
            # yield to the loop (it does not on 3.13), and this loop would spin forever.
            self._sending.difference_update(sending)

    async def close(self) -> None:
        """Refuse new lines, then send the lingering ones and wait for every POST."""
        self._closed = True
        await self.flush()

    def _forget(self, batch: _Batch) -> None:
        if batch.timer is not None:
            batch.timer.cancel()
        if self._open.get(batch.order_id) is batch:
            del self._open[batch.order_id]

    def _send(self, batch: _Batch) -> None:
        if batch.sent:
            return
        batch.sent = True
        self._forget(batch)
        if not batch.lines:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: _Batch) -> None:
        try:
            self.requests_sent += 1
            outcome = await send_one(self.client, CancelRequest(batch.order_id, batch.lines))
            accepted = outcome.accepted
            if accepted is not None and self.tracker is not None:
                try:
                    self.tracker.add(accepted.action_id, order_id=accepted.order_id)
                except RuntimeError:
                    logger.warning("tracker closed: action %s of order %s is not tracked",
                                   accepted.action_id, accepted.order_id,
                                   extra=fields(order_id=accepted.order_id,
                                                action_id=accepted.action_id))
        except BaseException:
            for future in batch.futures:
                future.cancel()
            raise
        for future in batch.futures:
            if not future.done():
                future.set_result(outcome)
