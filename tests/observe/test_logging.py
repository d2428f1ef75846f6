"""Structured log records (order_id, action_id, attempt, status) and MIRAKL_CANCEL_LOG."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from builders import request_for, sim_order

from mirakl_cancel import (
    ActionTracker,
    MiraklConnectClient,
    PollPolicy,
    RetryPolicy,
    StaticToken,
    UncertainDeliveryError,
)
from mirakl_cancel._observe.logs import FIELDS
from mirakl_cancel.simulator import Fault, Simulator, SimulatorConfig

SCALE = 0.001
MIN = 60.0 * SCALE
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=10.0)




async def test_every_record_carries_the_ids_it_concerns(
        caplog: pytest.LogCaptureFixture) -> None:
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(30.0, 60.0), seed=6)
    async with Simulator(config) as sim:
        for order_id in ("0001_L-A", "0002_L-A"):
            sim.add_order(sim_order(order_id))
        sim.inject(Fault.http(429, retry_after=10.0), route="cancel")
        sim.inject(Fault.http(503), route="status")
        with caplog.at_level(logging.INFO, logger="mirakl_cancel"):
            async with MiraklConnectClient(
                    auth=StaticToken(sim.token), base_url=sim.base_url, min_poll_interval=MIN,
                    retry=RetryPolicy(base_delay=0.001, max_delay=0.01)) as client:
                accepted = await client.cancel(request_for("0001_L-A"))
                sim.inject(Fault.drop_after_read(), route="cancel")  # the second cancel
                with pytest.raises(UncertainDeliveryError):
                    await client.cancel(request_for("0002_L-A"))
                async with ActionTracker(client, POLICY) as tracker:
                    await tracker.wait(accepted.action_id)
    records = [r for r in caplog.records if r.name == "mirakl_cancel"]
    assert records and all(all(hasattr(r, name) for name in FIELDS) for r in records)

    def one(text: str) -> logging.LogRecord:
        (found,) = [r for r in records if text in r.getMessage()]
        return found

    rate_limited = one("429 from POST")
    assert (rate_limited.order_id, rate_limited.attempt, rate_limited.status) == \
        ("0001_L-A", 1, 429)  # type: ignore[attr-defined]
    retry = one("retrying POST")
    assert (retry.order_id, retry.attempt, retry.status) == ("0001_L-A", 1, 429)  # type: ignore[attr-defined]
    lost = one("may have been processed")
    assert (lost.order_id, lost.action_id, lost.attempt, lost.status) == \
        ("0002_L-A", None, 1, None)  # type: ignore[attr-defined]
    failed_read = one("reading action")
    assert (failed_read.action_id, failed_read.status) == (accepted.action_id, 503)  # type: ignore[attr-defined]
    # Outside any request, the fields are there, and None.
    with caplog.at_level(logging.INFO, logger="mirakl_cancel"):
        logging.getLogger("mirakl_cancel").warning("after")
    (after,) = [r for r in caplog.records if r.getMessage() == "after"]
    assert [getattr(after, name) for name in FIELDS] == [None] * 4


def test_mirakl_cancel_log_turns_on_stderr_logging() -> None:
    code = ("import logging, mirakl_cancel\n"
            "log = logging.getLogger('mirakl_cancel')\n"
            "log.debug('a debug line')\n"
            "log.info('an info line', extra={'order_id': 'O-1'})\n")
    env = {**os.environ, "MIRAKL_CANCEL_LOG": "info"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert "an info line [order_id=O-1 action_id=None attempt=None status=None]" in done.stderr
    assert "a debug line" not in done.stderr
    env["MIRAKL_CANCEL_LOG"] = "debug"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert "a debug line" in done.stderr
    env.pop("MIRAKL_CANCEL_LOG")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stderr == ""


def test_the_cli_takes_mirakl_cancel_log_as_verbosity(monkeypatch: pytest.MonkeyPatch) -> None:
    from mirakl_cancel._observe import logs as _logging
    from mirakl_cancel.cli import _setup_logging

    logger = logging.getLogger("mirakl_cancel")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    try:
        monkeypatch.setenv("MIRAKL_CANCEL_LOG", "debug")
        _logging.configure_from_env()
        assert any(isinstance(h, _logging._EnvHandler) for h in logger.handlers)
        _setup_logging(0, False)
        assert logger.level == logging.DEBUG
        assert not any(isinstance(h, _logging._EnvHandler) for h in logger.handlers)
        monkeypatch.setenv("MIRAKL_CANCEL_LOG", "info")
        _setup_logging(0, False)
        assert logger.level == logging.INFO
    finally:
        logger.level, logger.handlers[:], logger.propagate = saved[0], saved[1], saved[2]
