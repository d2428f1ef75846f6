"""The seam between the transport and a pacing state shared by a fleet of processes.

Without a store, a client paces itself in process (`Transport._pace`, `PollGuard`), as
before. Given a store (`MiraklConnectClient(..., store=store)`), the transport also asks
the store's `FleetPacing` before each attempt: the rate limit becomes one schedule for
every worker with the same API base URL and credential, a 429 pauses all of them, and a
read of a ceilinged resource (an action's status, the order listing) is reserved on the
store's clock right before it leaves, and held as in flight until it ends. The
in-process rules stay in force underneath, so a process never does worse than alone.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

__all__ = ["FleetPacing", "SharedStore", "fleet_key"]


def fleet_key(base_url: str, credential: str) -> str:
    """The key under which a fleet shares pacing: per API base URL and credential.

    `credential` is already a one-way identity (`auth.credential_identity`); hashing it
    with the URL keeps the key short and reveals neither.
    """
    return hashlib.sha256(f"mirakl-cancel fleet\0{base_url}\0{credential}".encode()
                          ).hexdigest()[:40]


class FleetPacing(Protocol):
    """What the transport asks of a shared pacing state (one per base URL + credential)."""

    async def pace(self, rate_limit: float | None, max_pause: float) -> None:
        """Wait out the fleet's 429 pause, then take the fleet's next rate-limit slot.

        Raises RateLimitError when the pause left is longer than `max_pause`.
        """

    async def pause(self, seconds: float) -> None:
        """Hold every worker's requests for `seconds` from now (after a 429)."""

    async def claim_read(self, resource: str, min_interval: float, hold: float) -> object:
        """Reserve a read of `resource` fleet-wide if it is allowed now, atomically: the
        reservation, or None when another worker's read still holds the slot.

        Until `end_read`, the reservation counts as a read ending `hold` seconds from
        now (the attempt's bound): one in flight cannot be overtaken, and a worker killed
        mid-read frees its slots once that has passed.
        """

    async def read_ready_in(self, resource: str, min_interval: float) -> tuple[float, bool]:
        """Seconds until `resource` may be read fleet-wide, and whether a read of it is
        in flight (its end will bring that forward: look again soon)."""

    async def end_read(self, claim: object, *, sent: bool, answered: bool = True) -> None:
        """The read ended: count it from now (`sent`; an abandoned one, `answered=False`,
        from a little later), or give the reservation back when the request certainly
        never reached the server (a refused connection)."""


@runtime_checkable
class SharedStore(Protocol):
    """A store that can share pacing between processes (e.g. `PostgresStore`)."""

    def fleet_pacing(self, key: str) -> FleetPacing:
        """The shared pacing state for `key` (see `fleet_key`)."""
