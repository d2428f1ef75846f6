"""Scaled time.

Only *durations* are scaled; timestamps shown on the wire stay wall-clock UTC
so that a client comparing ``created_at`` with its own clock is never
confused by a simulator that runs a thousand times faster.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone

__all__ = ["Clock", "format_rfc3339"]


def format_rfc3339(moment: datetime) -> str:
    """Render like Mirakl does: UTC, ``Z`` suffix, millisecond precision."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class Clock:
    """Monotonic time for decisions, wall time for display, one scale factor."""

    __slots__ = ("time_scale",)

    def __init__(self, time_scale: float = 1.0) -> None:
        self.time_scale = time_scale

    @staticmethod
    def now() -> float:
        """Monotonic seconds: immune to wall-clock jumps during a long benchmark."""
        return time.monotonic()

    @staticmethod
    def wall() -> datetime:
        return datetime.now(timezone.utc)

    def scaled(self, api_seconds: float) -> float:
        """Real seconds that an API-level duration lasts under this scale."""
        return api_seconds * self.time_scale

    def retry_after(self, real_seconds: float) -> str:
        """Format a ``Retry-After`` value for a wait of ``real_seconds``.

        At real speed this is RFC 9110 delta-seconds, rounded up so a client
        that obeys it is never early. Under scaled time whole seconds would be
        far too coarse, so the simulator (and only the simulator) sends a
        decimal number of real seconds such as ``"0.042"``, rounded up to the
        millisecond.
        """
        wait = max(real_seconds, 0.0)
        if self.time_scale == 1.0:
            return str(max(1, math.ceil(wait)))
        return f"{math.ceil(wait * 1000) / 1000:.3f}"
