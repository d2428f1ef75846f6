"""Client guards: awaited callbacks that may refuse what is about to happen, by raising.

Hooks (`_observe/hooks.py`) observe: a hook's failure is logged and swallowed, so that nothing a
dashboard does can break a cancel on its way out. Some callers need the opposite: the
job's journal must record a cancel as *being sent*, durably, before its POST leaves,
and if that record cannot be made, the POST must not leave. That is a guard:

- `before_send(attempt)`: awaited right before each attempt of a cancel leaves, after
  every wait (concurrency slot, rate limit, token), so that a cancel still queued is
  never mistaken for one in flight. Raising refuses the attempt: nothing is sent, and
  the exception reaches the caller of `cancel` as it is (not as a `MiraklError`).
- `before_read(action_id)`: awaited before a status read (before its wait for the
  ceiling); raising refuses the read.
- `after_read(action_id, status)`: called when the read ended (`status` None when it
  failed). It cannot refuse anything (the read is over): it must not raise.

Guards are registered on a client (`client.guards.before_send(fn)`, which returns a
function that removes it), or, for the cancels one piece of code sends, for a scope
only: ``with client.guards.sending(fn): await client.cancel(request)`` (the engine
guards each request with its own journal mark this way). No guard, no cost: a cancel
or a read with no guard registered runs no code of this module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from ..models import ActionStatus

__all__ = ["Guards", "SendAttempt"]

_F = TypeVar("_F")


class SendAttempt(NamedTuple):
    """One attempt of a cancel about to leave (a tuple: made for every attempt, cheaply)."""

    order_id: str
    #: 1 for the first attempt that leaves, 2 for the next (after a refusal the API did
    #: not process), and so on.
    number: int
    #: The caller's key for the request (the job's journal key), if it set one.
    request_key: str | None = None


SendGuard = Callable[[SendAttempt], Awaitable[None] | None]
ReadGuard = Callable[[str], Awaitable[None] | None]
ReadEnd = Callable[[str, ActionStatus | None], None]


def _remover(guards: list[_F], fn: _F) -> Callable[[], None]:
    guards.append(fn)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            guards.remove(fn)

    return remove


class Guards:
    """The guards of one client (see the module docstring)."""

    def __init__(self) -> None:
        self._send: list[SendGuard] = []
        self._read: list[ReadGuard] = []
        self._read_end: list[ReadEnd] = []
        # One context variable per client: a scope guards this client's cancels only.
        self._scoped: contextvars.ContextVar[tuple[SendGuard, ...]] = contextvars.ContextVar(
            f"mirakl_cancel_send_guards_{id(self)}", default=())

    def before_send(self, fn: SendGuard) -> Callable[[], None]:
        """Await `fn(attempt)` before every attempt of every cancel of this client."""
        return _remover(self._send, fn)

    def before_read(self, fn: ReadGuard) -> Callable[[], None]:
        """Await `fn(action_id)` before every status read of this client."""
        return _remover(self._read, fn)

    def after_read(self, fn: ReadEnd) -> Callable[[], None]:
        """Call `fn(action_id, status or None)` after every status read of this client."""
        return _remover(self._read_end, fn)

    def sending(self, fn: SendGuard) -> _Scope:
        """Guard only the cancels sent inside this `with` block (in this task)."""
        return _Scope(self._scoped, fn)

    @property
    def reads_guarded(self) -> bool:
        return bool(self._read or self._read_end)

    def send_gate(self, order_id: str, request_key: str | None,
                  ) -> Callable[[], Awaitable[None] | None] | None:
        """What the transport calls before each attempt of one cancel (None: no guard).

        Synchronous guards cost no coroutine: the gate returns an awaitable only once a
        guard returned one (the transport then awaits it before the attempt leaves)."""
        scoped = self._scoped.get()
        guards = (*self._send, *scoped) if self._send else scoped
        if not guards:
            return None
        left = [0]  # attempts let go so far

        def gate() -> Awaitable[None] | None:
            attempt = SendAttempt(order_id, left[0] + 1, request_key)
            for index, guard in enumerate(guards):
                pending = guard(attempt)
                if pending is not None:
                    return _rest(pending, guards[index + 1:], attempt, left)
            left[0] += 1
            return None

        return gate

    async def reading(self, action_id: str) -> None:
        for guard in tuple(self._read):
            pending = guard(action_id)
            if pending is not None:
                await pending

    def read_over(self, action_id: str, status: ActionStatus | None) -> None:
        for end in tuple(self._read_end):
            end(action_id, status)


async def _rest(pending: Awaitable[None], guards: tuple[SendGuard, ...], attempt: SendAttempt,
                left: list[int]) -> None:
    """The rest of a gate, once a guard returned an awaitable."""
    await pending
    for guard in guards:
        more = guard(attempt)
        if more is not None:
            await more
    left[0] += 1  # counted once every guard let it go


class _Scope:
    """`Guards.sending`: a context manager (a class: it is entered for every cancel a
    guarded caller sends, so it must cost little)."""

    __slots__ = ("_fn", "_token", "_var")

    def __init__(self, var: contextvars.ContextVar[tuple[SendGuard, ...]],
                 fn: SendGuard) -> None:
        self._var = var
        self._fn = fn
        self._token: contextvars.Token[tuple[SendGuard, ...]] | None = None

    def __enter__(self) -> None:
        self._token = self._var.set((*self._var.get(), self._fn))

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        self._var.reset(self._token)
