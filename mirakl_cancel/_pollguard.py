"""The per-action polling ceiling, enforced where every status read passes.

Mirakl Connect allows one `v2-getActionStatus` call per minute per action ID. Keeping
that rule in the transport, rather than trusting each caller's schedule, makes it hold
for a user's own polling loop, for retries after a 5xx, and for the tracker alike.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["PollGuard"]


class PollGuard:
    """Remembers when each action was last read and holds a read back until allowed.

    A read counts from the moment its attempt *ended*: the server saw the request no
    later than that, so spacing the next send from there keeps the server-side interval
    at least `min_interval` whatever the network latency was.
    """

    __slots__ = ("_last", "_sweep_at", "min_interval")

    def __init__(self, min_interval: float) -> None:
        if min_interval < 0:
            raise ValueError("min_interval must not be negative")
        self.min_interval = min_interval
        self._last: dict[str, float] = {}
        self._sweep_at = 1024

    def ready_at(self, action_id: str) -> float:
        """The monotonic time from which `action_id` may be read again."""
        last = self._last.get(action_id)
        return 0.0 if last is None else last + self.min_interval

    async def wait(self, action_id: str) -> None:
        """Sleep until `action_id` may be read again (no wait for a fresh one)."""
        while True:
            delay = self.ready_at(action_id) - time.monotonic()
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    def record(self, action_id: str, at: float | None = None) -> None:
        """Note that a read of `action_id` ended at monotonic time `at` (default now)."""
        at = time.monotonic() if at is None else at
        if at > self._last.get(action_id, float("-inf")):
            self._last[action_id] = at
        if len(self._last) >= self._sweep_at:
            self._sweep()

    def _sweep(self) -> None:
        """Forget reads older than the interval: they no longer constrain anything."""
        horizon = time.monotonic() - self.min_interval
        self._last = {key: at for key, at in self._last.items() if at > horizon}
        self._sweep_at = max(1024, 2 * len(self._last))
