"""Global token bucket, the server-side twin of a client's rate limiter."""

from __future__ import annotations

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per real second, bursts up to ``burst`` (default: one second's worth).

    Not scaled by ``time_scale``: it models a throughput quota, and the client
    limiter it checks runs on real time too.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._tokens = self.burst
        self._last = now

    def take(self, now: float) -> float:
        """Consume one token; return 0 on success, else real seconds until one is available."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
