"""Test doubles for your own tests: a clock you move by hand, and a fake status client.

`Clock` is the protocol of the `clock=` parameters (monotonic and wall time, sleeps,
timers); the real clock is the default everywhere.

`ManualClock` is the clock every time rule of the library takes: give it to
`MiraklConnectClient(clock=...)` (against the simulator: retry and 429 pauses, the poll
ceiling, token expiry and the schedule of a tracker on that client all run on it) or
to a `FakeStatusClient` without any server:

```python
from mirakl_cancel import ActionTracker, PollPolicy
from mirakl_cancel.testing import FakeStatusClient, ManualClock

clock = ManualClock()
client = FakeStatusClient({"a-1": ["PENDING", "PENDING", "SUCCESS"]}, clock=clock)
async with ActionTracker(client, PollPolicy()) as tracker:   # the client's clock
    task = asyncio.create_task(tracker.wait("a-1"))
    await clock.run_until(task.done, step=60)      # an hour of API time, instantly
assert task.result().state is ActionState.SUCCESS
assert client.reads["a-1"] == 3 and client.ceiling_waits == 0
```

`FakeStatusClient` keeps the API's once-a-minute ceiling with `MiraklConnectClient`'s
own poll guard (a read sooner than `min_poll_interval` after the previous one waits, on
the fake's clock), and counts the reads that had to wait: `ceiling_waits == 0` proves
your own schedule never asked too early. For whole exchanges (cancels, faults, the listing) use
the simulator (`mirakl_cancel.simulator`, or the `mirakl_simulator` pytest fixture).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TypeAlias

from ._clock import SYSTEM_CLOCK, Clock, ManualClock
from ._constants import API_MIN_INTERVAL
from ._http.pollguard import PollGuard
from .errors import MiraklError, NotFoundError
from .models import ActionState, ActionStatus

__all__ = ["Answer", "Clock", "FakeStatusClient", "ManualClock"]

#: One scripted answer: a state (or its raw name, kept as UNKNOWN if the library does not
#: know it), a whole ActionStatus, or an error to raise.
Answer: TypeAlias = "ActionState | str | ActionStatus | MiraklError"


class FakeStatusClient:
    """Answers `get_action_status` from a script, keeping the API's polling ceiling.

    `script` maps each action id to its answers, in order; the last one repeats once the
    script runs out (a final state stays final). An action with no script is unknown to
    the API: reading it raises `NotFoundError`, as a 404 would. Give the same `clock` as
    the code under test (a `ManualClock` to run hours of polling in an instant); without
    one, real monotonic time is used.
    """

    def __init__(self, script: Mapping[str, Iterable[Answer]] | None = None, *,
                 clock: Clock | None = None,
                 min_poll_interval: float = API_MIN_INTERVAL) -> None:
        if min_poll_interval < 0:
            raise ValueError("min_poll_interval must not be negative")
        self.clock: Clock = clock or SYSTEM_CLOCK
        # The client's own rule on the fake's clock (a log of its own: no other client
        # and no other process shares a fake's reads).
        self._guard = PollGuard(min_poll_interval, clock=self.clock)
        self._script: dict[str, list[Answer]] = {}
        #: Reads answered so far, per action.
        self.reads: dict[str, int] = {}
        #: Reads that had to wait for the ceiling (the caller asked too early).
        self.ceiling_waits = 0
        for action_id, answers in (script or {}).items():
            self.script(action_id, *answers)

    def script(self, action_id: str, *answers: Answer) -> None:
        """Add answers for `action_id` (after those it already has)."""
        if not answers:
            raise ValueError("script() needs at least one answer")
        for answer in answers:
            if not isinstance(answer, (ActionState, str, ActionStatus, MiraklError)):
                raise TypeError(f"not an answer: {answer!r} (a state, an ActionStatus "
                                "or a MiraklError)")
        self._script.setdefault(action_id, []).extend(answers)

    @property
    def min_poll_interval(self) -> float:
        """Seconds kept between two reads of one action (the API's ceiling by default)."""
        return self._guard.min_interval

    def poll_ready_in(self, action_id: str) -> float:
        """Seconds until `action_id` may be read again (0 if now)."""
        return self._guard.ready_in(action_id)

    def record_poll(self, action_id: str, seconds_ago: float = 0.0) -> None:
        """Count a read of `action_id` made elsewhere, `seconds_ago` seconds ago."""
        self._guard.record_ago(action_id, seconds_ago)

    async def get_action_status(self, action_id: str, *, retry: bool = True) -> ActionStatus:
        """The next scripted answer, after waiting for the ceiling if asked too early.

        `retry` is accepted for compatibility with `MiraklConnectClient` and ignored.
        """
        if self.poll_ready_in(action_id) > 0:
            self.ceiling_waits += 1
            await self._guard.wait(action_id)
        answers = self._script.get(action_id)
        self._guard.record(action_id)
        if not answers:
            raise NotFoundError(404, "NOT_FOUND", f"action {action_id} not found")
        index = self.reads.get(action_id, 0)
        self.reads[action_id] = index + 1
        answer = answers[min(index, len(answers) - 1)]
        if isinstance(answer, MiraklError):
            raise answer
        if isinstance(answer, ActionStatus):
            return answer
        return self._status(action_id, answer)

    def _status(self, action_id: str, state: ActionState | str) -> ActionStatus:
        raw = state.value if isinstance(state, ActionState) else state
        try:
            known = ActionState(raw)
        except ValueError:
            known = ActionState.UNKNOWN
        now = datetime.fromtimestamp(self.clock.wall(), timezone.utc)
        return ActionStatus(action_id, known, created_at=now, updated_at=now, raw_status=raw)


if TYPE_CHECKING:
    from .tracker import StatusClient

    def _is_a_status_client(client: FakeStatusClient) -> StatusClient:
        return client  # mypy checks here that the fake keeps up with the protocol


def _present_as_this_module() -> None:
    # Users meet these as `mirakl_cancel.testing.X`, whichever module defines them.
    for public in (Clock, FakeStatusClient, ManualClock):
        public.__module__ = __name__


_present_as_this_module()
