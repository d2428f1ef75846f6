"""pytest plugin: a Mirakl Connect simulator fixture for any test.

Registered through the ``pytest11`` entry point, so installing mirakl-cancel
is enough. The simulator runs on a background thread with its own loop,
which works for sync tests and for async tests whatever their loop, and
needs no pytest-asyncio. Override ``mirakl_simulator_config`` to change the
configuration::

    @pytest.fixture
    def mirakl_simulator_config():
        return SimulatorConfig(time_scale=0.001, processing_delay=(0.5, 1))
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._config import SimulatorConfig
from ._threaded import ThreadedSimulator

__all__ = ["mirakl_simulator", "mirakl_simulator_config"]


@pytest.fixture
def mirakl_simulator_config() -> SimulatorConfig:
    """Fast by default: a thousandth of real time, so the 60 s poll ceiling lasts 60 ms."""
    return SimulatorConfig(time_scale=0.001)


@pytest.fixture
def mirakl_simulator(mirakl_simulator_config: SimulatorConfig) -> Iterator[ThreadedSimulator]:
    """A running simulator: ``base_url``, ``token_url``, ``token``, ``stats``, ``inject``..."""
    with ThreadedSimulator(mirakl_simulator_config) as simulator:
        yield simulator
