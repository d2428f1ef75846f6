"""Run a :class:`Simulator` on its own thread and event loop.

This is what lets synchronous tests (and async tests on any loop, with or
without pytest-asyncio) use the simulator: the server never shares a loop
with the code under test, and every call that touches its state is
marshalled onto the simulator's loop, so state is only ever mutated there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ._config import SimulatorConfig
from ._faults import Fault
from ._model import SimAction, SimOrder
from ._server import Simulator
from ._stats import SimulatorStats

__all__ = ["ThreadedSimulator"]

T = TypeVar("T")

_TIMEOUT = 30.0


class ThreadedSimulator:
    """Sync context manager around a background-thread :class:`Simulator`.

    ``with ThreadedSimulator(cfg) as sim: requests.post(sim.base_url + ...)``.
    """

    def __init__(
        self, config: SimulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = Simulator(config, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> ThreadedSimulator:
        if self._thread is not None:
            raise RuntimeError("already started")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.simulator.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.simulator.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="mirakl-simulator", daemon=True)
        thread.start()
        try:
            started.result(_TIMEOUT)
        except BaseException:
            thread.join(_TIMEOUT)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT)

    def __enter__(self) -> ThreadedSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the simulator loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("simulator not started")
        if self._thread is threading.current_thread():
            return fn(*args, **kwargs)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result(_TIMEOUT)

    # -- the Simulator surface, thread-safe ------------------------------------

    @property
    def base_url(self) -> str:
        return self.simulator.base_url

    @property
    def token_url(self) -> str:
        return self.simulator.token_url

    @property
    def token(self) -> str:
        return self.simulator.token

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config

    @property
    def stats(self) -> SimulatorStats:
        """The live counters; reading them from another thread is safe (plain ints and dicts)."""
        return self.simulator.stats

    def stats_snapshot(self) -> dict[str, Any]:
        """A consistent copy taken on the simulator loop."""
        return self.call(self.simulator.stats.as_dict)

    @property
    def orders(self) -> dict[str, SimOrder]:
        return self.simulator.orders

    @property
    def actions(self) -> dict[str, SimAction]:
        return self.simulator.actions

    def add_order(self, order: SimOrder) -> SimOrder:
        return self.call(self.simulator.add_order, order)

    def generate_orders(
        self,
        n_orders: int = 200,
        lines_per_order: tuple[int, int] = (1, 5),
        wrong_state_ratio: float = 0.05,
    ) -> list[SimOrder]:
        return self.call(
            self.simulator.generate_orders, n_orders, lines_per_order, wrong_state_ratio
        )

    def load_orders(self, path: str | Path) -> list[SimOrder]:
        return self.call(self.simulator.load_orders, path)

    def inject(self, fault: Fault, route: str = "*", count: int = 1) -> None:
        self.call(self.simulator.inject, fault, route, count)

    def clear_faults(self) -> None:
        self.call(self.simulator.clear_faults)

    def reset_stats(self) -> None:
        self.call(self.simulator.reset_stats)

    def issue_token(self, ttl: float | None = None) -> str:
        return self.call(self.simulator.issue_token, ttl)

    def revoke_tokens(self) -> None:
        self.call(self.simulator.revoke_tokens)
