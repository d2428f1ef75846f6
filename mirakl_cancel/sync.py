"""A blocking client, for Django views, Celery tasks, scripts: no event loop to manage.

`mirakl_cancel.sync.MiraklConnectClient` takes the same arguments as the async client and
runs one on a private event-loop thread of its own. Every method submits a coroutine to
that loop and waits for it, so:

- it is thread-safe: any number of threads may call one client at once, and they share
  its concurrency limit, rate limit, 429 pause and per-action polling ceiling, exactly
  as coroutines sharing an async client do;
- it refuses to run inside a running event loop (`SyncClientInLoopError`): blocking
  there would freeze that loop — use the async client in async code.

Iterators (`cancel_many`, `cancel_and_track`) pull one result per `next()`; closing them
(or leaving a `with contextlib.closing(...)` block) stops the work behind them, as does
closing the client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import client as _client
from ._http.transport import TransportStats
from ._observe.hooks import Hooks
from .batching import CancelOutcome
from .bulk import CancelResult
from .errors import MiraklError, SyncClientInLoopError
from .models import ActionAccepted, ActionStatus, Cancelation, CancelRequest, Order
from .tracker import DEFAULT_POLICY, ActionTracker, PollPolicy

__all__ = ["MiraklConnectClient", "SyncClientInLoopError"]

T = TypeVar("T")


def _refuse_inside_a_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncClientInLoopError(
        f"mirakl_cancel.sync.MiraklConnectClient.{what}() was called inside a running event "
        "loop, which it would block: use mirakl_cancel.MiraklConnectClient (async) there")


class MiraklConnectClient:
    """The blocking twin of `mirakl_cancel.MiraklConnectClient` (same arguments).

    Use it as a context manager (or call `close()`), which stops its loop thread.
    """

    def __init__(self, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="mirakl-cancel-sync", daemon=True)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread.start()
        try:
            # Built on the loop thread: everything async in it belongs to that loop.
            self._async = self._submit(self._build(options))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _build(options: Mapping[str, Any]) -> _client.MiraklConnectClient:
        return _client.MiraklConnectClient(**options)

    def __repr__(self) -> str:
        return f"sync.{self._async!r}"

    def __enter__(self) -> MiraklConnectClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- the loop thread --------------------------------------------------------------

    def _submit(self, work: Awaitable[T]) -> T:
        """Run `work` on the loop thread and wait for it; Ctrl-C cancels it there."""
        future = asyncio.run_coroutine_threadsafe(_awaited(work), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        _refuse_inside_a_loop(what)
        if self._closed:
            raise MiraklError("this client is closed")
        return self._submit(make())

    def _iterate(self, what: str, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        _refuse_inside_a_loop(what)
        if self._closed:
            raise MiraklError("this client is closed")
        return _BlockingIterator(self, make())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def close(self) -> None:
        """Close the HTTP session and stop the loop thread (idempotent)."""
        _refuse_inside_a_loop("close")
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._submit(self._async.close())
            # Iterators left unclosed: finish their generators (and the work behind them).
            self._submit(self._loop.shutdown_asyncgens())
        finally:
            self._stop_loop()

    # --- the API ----------------------------------------------------------------------

    @property
    def stats(self) -> TransportStats:
        """Live counters (see the async client)."""
        return self._async.stats

    @property
    def hooks(self) -> Hooks:
        """The hooks; they run on the client's loop thread, not the caller's."""
        return self._async.hooks

    @property
    def async_client(self) -> _client.MiraklConnectClient:
        """The async client underneath (use it only on `loop`)."""
        return self._async

    def cancel_order_lines(self, order_id: str,
                           cancelations: Iterable[Cancelation | Mapping[str, Any]],
                           ) -> ActionAccepted:
        """See `mirakl_cancel.MiraklConnectClient.cancel_order_lines`."""
        items = list(cancelations) if isinstance(cancelations, Iterable) else cancelations
        return self._call("cancel_order_lines",
                          lambda: self._async.cancel_order_lines(order_id, items))

    def cancel(self, request: CancelRequest) -> ActionAccepted:
        """See `mirakl_cancel.MiraklConnectClient.cancel`."""
        return self._call("cancel", lambda: self._async.cancel(request))

    def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        """See `mirakl_cancel.MiraklConnectClient.get_action_status` (waits for the
        once-a-minute ceiling like it, across every thread using this client)."""
        return self._call("get_action_status",
                          lambda: self._async.get_action_status(action_id, retry=retry))

    def list_orders(self, order_ids: Iterable[str]) -> list[Order]:
        """See `mirakl_cancel.MiraklConnectClient.list_orders`."""
        ids = list(order_ids)
        return self._call("list_orders", lambda: self._async.list_orders(ids))

    def wait(self, action_id: str, policy: PollPolicy = DEFAULT_POLICY) -> ActionStatus:
        """Poll `action_id` to its final status under `policy` (ActionTimeoutError at its
        timeout)."""
        async def wait() -> ActionStatus:
            async with ActionTracker(self._async, policy) as tracker:
                return await tracker.wait(action_id)

        return self._call("wait", wait)

    def cancel_many(self, requests: Iterable[CancelRequest]) -> Iterator[CancelOutcome]:
        """One CancelOutcome per request, as each ends (see the async `cancel_many`)."""
        return self._iterate("cancel_many", lambda: self._async.cancel_many(requests))

    def cancel_and_track(self, requests: Iterable[CancelRequest],
                         policy: PollPolicy = DEFAULT_POLICY, **options: Any,
                         ) -> Iterator[CancelResult]:
        """One CancelResult per request, as each reaches its end (see the async
        `cancel_and_track`; `options` are its keyword arguments)."""
        from .bulk import cancel_and_track

        return self._iterate("cancel_and_track",
                             lambda: cancel_and_track(self._async, requests, policy, **options))


async def _awaited(work: Awaitable[T]) -> T:
    return await work


class _BlockingIterator(Iterator[T]):
    """An async iterator of the loop thread, pulled one item per `next()`."""

    def __init__(self, client: MiraklConnectClient, source: AsyncIterator[T]) -> None:
        self._client = client
        self._source = source
        self._done = False

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        _refuse_inside_a_loop("__next__")
        try:
            return self._client._submit(self._source.__anext__())
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the work behind the iterator (cancels in flight are finished first)."""
        if self._done:
            return
        self._done = True
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None and not self._client._closed:
            with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                self._client._submit(aclose())
