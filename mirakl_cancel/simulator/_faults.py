"""Scripted and random faults.

Two families, because they tell the client different things:

* HTTP faults (429, 5xx) are decided *before* the handler runs: the request
  was refused and may be retried safely.
* ``drop_after_read`` and ``delay`` let the handler run first (the cancel is
  processed, quantity reserved) and then lose or stall the answer: the
  client cannot know whether its request took effect.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ._config import parse_fault_kind

__all__ = ["API_ROUTES", "ROUTES", "Fault", "FaultPlan"]

#: Routes that make up the Mirakl Connect API proper.
API_ROUTES = ("cancel", "status", "orders")
#: Every route a fault may target. ``"*"`` means every API route but not
#: ``token``: in production the token endpoint lives on another host
#: (auth.mirakl.net), so a Connect outage does not take it down.
ROUTES = (*API_ROUTES, "token", "*")

FaultKind = Literal["http", "drop_after_read", "delay"]


@dataclass(frozen=True)
class Fault:
    """One misbehaviour to apply to one request. Build with the class methods."""

    kind: FaultKind
    status: int = 0
    retry_after: str | float | None = None
    seconds: float = 0.0

    @classmethod
    def http(cls, status: int, retry_after: str | float | None = None) -> Fault:
        """Answer ``status`` without processing the request.

        ``retry_after``: a string is sent verbatim (e.g. an HTTP-date); a number
        is API seconds, scaled and formatted like every other ``Retry-After``.
        With ``None``, 429 and 503 still get a one-API-second hint, as gateways
        usually send one. 502 answers an HTML page like a real gateway; other
        statuses answer the spec's JSON ``Error`` body.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"HTTP fault status must be 4xx or 5xx, got {status}")
        return cls("http", status=status, retry_after=retry_after)

    @classmethod
    def drop_after_read(cls) -> Fault:
        """Process the request fully, then close the connection without answering."""
        return cls("drop_after_read")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Process the request, then wait ``seconds`` (real, unscaled) before answering."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        return cls("delay", seconds=seconds)

    @property
    def label(self) -> str:
        """Key under which ``stats.faults_injected`` counts this fault."""
        return str(self.status) if self.kind == "http" else self.kind


class _Scripted:
    __slots__ = ("fault", "left")

    def __init__(self, fault: Fault, left: int) -> None:
        self.fault = fault
        self.left = left


class FaultPlan:
    """Picks the fault (if any) for each request: scripted first, then random."""

    def __init__(self, rates: Mapping[str, float], rng: random.Random) -> None:
        self._rng = rng
        self._scripted: dict[str, deque[_Scripted]] = {route: deque() for route in ROUTES}
        self._random: list[tuple[float, Fault]] = []
        cumulative = 0.0
        for key, rate in rates.items():
            if rate <= 0:
                continue
            cumulative += rate
            kind = parse_fault_kind(key)
            fault = Fault.drop_after_read() if kind == "drop" else Fault.http(int(kind))
            self._random.append((cumulative, fault))

    def inject(self, fault: Fault, route: str = "*", count: int = 1) -> None:
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        self._scripted[route].append(_Scripted(fault, count))

    def clear(self) -> None:
        for queue in self._scripted.values():
            queue.clear()

    def pending(self) -> int:
        """Scripted faults not yet consumed (handy to assert a scenario ran out)."""
        return sum(entry.left for queue in self._scripted.values() for entry in queue)

    def _take(self, route: str) -> Fault | None:
        queue = self._scripted[route]
        if not queue:
            return None
        entry = queue[0]
        entry.left -= 1
        if entry.left <= 0:
            queue.popleft()
        return entry.fault

    def choose(self, route: str) -> Fault | None:
        """The fault for the next request on ``route``, consuming scripted ones."""
        fault = self._take(route)
        if fault is None and route != "token":
            fault = self._take("*")
        if fault is None and self._random and route != "token":
            draw = self._rng.random()
            for threshold, candidate in self._random:
                if draw < threshold:
                    return candidate
        return fault
