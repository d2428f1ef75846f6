"""Simulator configuration.

Every knob is explicit and validated up front so that a typo in a benchmark
script fails at construction time instead of silently producing a lenient
server that proves nothing about the client under test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["SimulatorConfig", "parse_fault_kind"]

#: Keys of ``fault_rates`` that are not HTTP status codes.
NON_HTTP_FAULTS = frozenset({"drop"})


def parse_fault_kind(key: str) -> int | str:
    """Return the HTTP status (int) or the non-HTTP fault name of a rate key.

    Accepting only known shapes matters because a misspelt key ("5O3") would
    otherwise be a fault that never fires.
    """
    if key in NON_HTTP_FAULTS:
        return key
    if key.isdigit() and 400 <= int(key) <= 599:
        return int(key)
    raise ValueError(f"unknown fault kind {key!r}: use an HTTP status 400-599 or 'drop'")


def _check_range(name: str, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not (0 <= low <= high) or not math.isfinite(high):
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high, got {bounds!r}")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated Mirakl Connect behaves.

    Durations are expressed in *API seconds* and multiplied by ``time_scale``
    so the same scenario (a 60 s poll ceiling, a 1-5 s processing delay) can
    run in milliseconds in tests and at real speed in demos. Exceptions, on
    purpose: ``rate_limit`` is a real requests-per-second budget, because
    client-side limiters are configured in real seconds too, and
    ``Fault.delay`` durations are real seconds because they exist to trip the
    client's (real) read timeout.
    """

    time_scale: float = 1.0
    processing_delay: tuple[float, float] = (1.0, 5.0)
    min_poll_interval: float = 60.0
    #: v2-listOrders' ceiling: once a minute per credential (API seconds).
    min_list_interval: float = 60.0
    rate_limit: float | None = None
    token_ttl: float = 3599.0
    latency: tuple[float, float] = (0.0, 0.0)
    fault_rates: Mapping[str, float] = field(default_factory=dict)
    seed: int = 0
    client_id: str = "sim-client"
    client_secret: str = "sim-secret"

    def __post_init__(self) -> None:
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")
        _check_range("processing_delay", self.processing_delay)
        _check_range("latency", self.latency)
        if self.min_poll_interval < 0:
            raise ValueError("min_poll_interval must be >= 0")
        if self.min_list_interval < 0:
            raise ValueError("min_list_interval must be >= 0")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError("rate_limit must be > 0 or None")
        if not self.token_ttl > 0:
            raise ValueError("token_ttl must be > 0")
        total = 0.0
        for key, rate in self.fault_rates.items():
            parse_fault_kind(key)
            if not 0 <= rate <= 1:
                raise ValueError(f"fault rate for {key!r} must be within [0, 1], got {rate!r}")
            total += rate
        if total > 1:
            raise ValueError(f"fault rates add up to {total}, more than 1")
        # Freeze a private copy: the caller's dict must not change the plan later.
        object.__setattr__(self, "fault_rates", dict(self.fault_rates))
