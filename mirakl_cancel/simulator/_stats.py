"""Counters that benchmarks and tests read to judge a client's manners.

Plain ints and dicts, bumped inline: the simulator must sustain thousands of
requests per second, so no locks, no histograms, no per-request objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["SimulatorStats"]


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


@dataclass
class SimulatorStats:
    """Live counters (mutated by the server; read them, don't write them).

    ``posts_per_order`` and ``duplicate_posts`` only count authenticated cancel
    POSTs that reached the handler, i.e. ones the server could have acted on:
    re-sending after a 503 or a rate-limit 429 (which are refused before any
    processing) is legitimate and must not look like a duplicate, whereas
    re-sending after a dropped connection is exactly the risk to measure.
    """

    requests: int = 0
    requests_by_route: dict[str, int] = field(default_factory=dict)
    posts_per_order: dict[str, int] = field(default_factory=dict)
    duplicate_posts: int = 0
    actions_created: int = 0
    polls_per_action: dict[str, int] = field(default_factory=dict)
    poll_violations: int = 0
    #: v2-listOrders calls, and those that came sooner than once a minute per credential
    #: (answered 429): a client that keeps the ceiling shows 0 here.
    list_calls: int = 0
    list_violations: int = 0
    responses_429: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    drops: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)

    def count_request(self, route: str) -> None:
        self.requests += 1
        _bump(self.requests_by_route, route)

    def count_response(self, status: int) -> None:
        _bump(self.status_codes, str(status))
        if status == 429:
            self.responses_429 += 1

    def count_fault(self, kind: str) -> None:
        _bump(self.faults_injected, kind)

    def count_post(self, order_id: str, duplicate: bool) -> None:
        _bump(self.posts_per_order, order_id)
        if duplicate:
            self.duplicate_posts += 1

    def count_poll(self, action_id: str) -> None:
        _bump(self.polls_per_action, action_id)

    def reset(self) -> None:
        """Zero everything, e.g. between a warm-up and the measured run."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                value.clear()
            else:
                setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (copies, so it does not change under the reader)."""
        return {
            f.name: dict(value) if isinstance(value := getattr(self, f.name), dict) else value
            for f in fields(self)
        }
