"""The one exponential backoff: the transport's retries and the trackers' failed reads.

Both wait `base`, `2 * base`, `4 * base`… after the first, second, third failure in a
row, capped; the transport also spreads its waits with full jitter (AWS's name for a
uniform draw in [0, delay)), so that many clients failing together do not come back
together. The randomness is an argument (`fraction`), never drawn here, so that the
rules that use these functions stay pure and table-testable.
"""

from __future__ import annotations

__all__ = ["exponential", "full_jitter"]

#: 2**20 times the base is past any cap in use; it also keeps the power a finite float
#: however many failures a long-lived tracker counts.
_MAX_EXPONENT = 20


def exponential(failures: int, base: float, cap: float) -> float:
    """The delay after the `failures`-th failure in a row (counted from 1): `base`
    doubled each time, never above `cap`."""
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    return min(cap, base * 2.0 ** exponent)


def full_jitter(delay: float, fraction: float) -> float:
    """`delay` spread uniformly: `fraction` is a draw in [0, 1) (`random.random()`)."""
    return delay * fraction
