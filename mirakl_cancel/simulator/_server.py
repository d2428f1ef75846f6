"""The :class:`Simulator`: state + app + a listening socket, one object."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from aiohttp import web

from ._app import create_app
from ._config import SimulatorConfig
from ._faults import Fault
from ._model import SimAction, SimOrder
from ._state import SimState
from ._stats import SimulatorStats

__all__ = ["Simulator"]


_READY_TOKEN_REAL_SECONDS = 86_400.0


class Simulator:
    """A local Mirakl Connect listening on ``host:port`` (port 0 picks a free one).

    Use ``async with Simulator(cfg) as sim`` in tests, or ``start()``/``stop()``
    to run it as a plain server. All methods must be called from the event
    loop the simulator runs on (see ``ThreadedSimulator`` for other threads).
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config)
        self.app = create_app(self.state)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._token: str | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # No access log: at benchmark rates it would cost more than the handlers.
        # A short shutdown timeout: a handler stalled by Fault.delay must not
        # hold up a test's teardown; there is nothing to drain gracefully.
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or ()
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port
        # The ready-made token outlives any scaled run (a day of real time), as a static
        # token would in production; tokens from /oauth/token expire after token_ttl.
        self._token = self.issue_token(ttl=_READY_TOKEN_REAL_SECONDS / self.config.time_scale)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses and credentials -------------------------------------------

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("simulator not started")
        return self._bound_port

    @property
    def base_url(self) -> str:
        """The API root; clients append ``/v2/...``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth/token"

    @property
    def token(self) -> str:
        """A bearer token issued at start, valid for a day of real time.

        It deliberately ignores ``token_ttl``: under scaled time a one-hour token would
        expire within seconds and cut a long test short. Use ``issue_token(ttl)`` or the
        token endpoint to exercise expiry.
        """
        if self._token is None:
            raise RuntimeError("simulator not started")
        return self._token

    def issue_token(self, ttl: float | None = None) -> str:
        """Mint another valid token, optionally with its own ``ttl`` (API seconds)."""
        return self.state.tokens.issue(ttl, owner=self.config.client_id)[0]

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far (forces the client through a 401)."""
        self.state.tokens.revoke_all()

    # -- state ----------------------------------------------------------------

    @property
    def stats(self) -> SimulatorStats:
        return self.state.stats

    @property
    def orders(self) -> dict[str, SimOrder]:
        return self.state.orders

    @property
    def actions(self) -> dict[str, SimAction]:
        return self.state.actions

    def add_order(self, order: SimOrder) -> SimOrder:
        return self.state.add_order(order)

    def generate_orders(
        self,
        n_orders: int = 200,
        lines_per_order: tuple[int, int] = (1, 5),
        wrong_state_ratio: float = 0.05,
    ) -> list[SimOrder]:
        """Add seeded, realistic orders; a ``wrong_state_ratio`` share can no longer be canceled."""
        return self.state.generate_orders(n_orders, lines_per_order, wrong_state_ratio)

    def load_orders(self, path: str | Path) -> list[SimOrder]:
        return self.state.load_orders(path)

    def inject(self, fault: Fault, route: str = "*", count: int = 1) -> None:
        """Script ``fault`` for the next ``count`` requests on ``route``.

        ``route`` is ``"cancel"``, ``"status"``, ``"orders"``, ``"token"`` or
        ``"*"`` (every API route except ``token``). Scripted faults are served
        in injection order, before any random ``fault_rates``.
        """
        self.state.faults.inject(fault, route, count)

    def clear_faults(self) -> None:
        self.state.faults.clear()

    def reset_stats(self) -> None:
        self.state.stats.reset()
