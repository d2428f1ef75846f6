"""A faithful local Mirakl Connect for tests, demos and benchmarks.

It implements the slice of the API that mirakl-cancel uses (OAuth token,
``v2-cancelOrderLines``, ``v2-getActionStatus``, ``v2-listOrders``) from the
published spec, independently of the client code, and adds the misbehaviour
production shows rarely but clients must survive: rate limits, the
once-per-minute polling ceiling, gateway errors, lost responses, timeouts.

Durations are scaled by ``SimulatorConfig.time_scale`` so a 60 s rule can last
60 ms in a test. Under scaled time, ``Retry-After`` and ``expires_in`` are
decimal *real* seconds (e.g. ``"0.042"``), a simulator-only convenience; at
``time_scale=1`` they are whole seconds as in production.
"""

from ._app import create_app
from ._config import SimulatorConfig
from ._faults import Fault
from ._model import SimAction, SimAdjustment, SimLine, SimOrder
from ._server import Simulator
from ._state import SimState
from ._stats import SimulatorStats
from ._threaded import ThreadedSimulator

__all__ = [
    "Fault",
    "SimAction",
    "SimAdjustment",
    "SimLine",
    "SimOrder",
    "SimState",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "ThreadedSimulator",
    "create_app",
]
