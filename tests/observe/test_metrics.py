"""Prometheus metrics: a collector in a caller's own registry, and `/metrics` scraped
from a real `mirakl-cancel run` while it works."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from builders import request_for, sim_order
from cli_support import write_csv

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest

from mirakl_cancel import (
    ActionTracker,
    Hooks,
    MiraklConnectClient,
    PollPolicy,
    RetryPolicy,
    StaticToken,
    UncertainDeliveryError,
)
from mirakl_cancel._observe.metrics import PrometheusCollector
from mirakl_cancel.simulator import (
    Fault,
    Simulator,
    SimulatorConfig,
    ThreadedSimulator,
)

SCALE = 0.001
MIN = 60.0 * SCALE
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=10.0)





@pytest.fixture
def cli_logger() -> Iterator[None]:
    """`main()` in-process sets up the CLI's logging: give the logger back as it was."""
    logger = logging.getLogger("mirakl_cancel")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


async def test_a_collector_in_the_callers_registry() -> None:
    collector = PrometheusCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    value = registry.get_sample_value
    assert value("mirakl_cancel_pending_actions") == 0  # present before any event
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(30.0, 60.0), seed=4)
    async with Simulator(config) as sim:
        for order_id in ("0001_M-A", "0002_M-A"):
            sim.add_order(sim_order(order_id))
        sim.inject(Fault.http(429, retry_after=10.0), route="cancel")
        sim.inject(Fault.http(503), route="status")
        async with MiraklConnectClient(
                auth=StaticToken(sim.token), base_url=sim.base_url, min_poll_interval=MIN,
                retry=RetryPolicy(base_delay=0.001, max_delay=0.01),
                hooks=Hooks(collector)) as client:
            accepted = await client.cancel(request_for("0001_M-A"))
            sim.inject(Fault.drop_after_read(), route="cancel")  # the second cancel
            with pytest.raises(UncertainDeliveryError):
                await client.cancel(request_for("0002_M-A"))
            async with ActionTracker(client, POLICY) as tracker:
                tracker.add(accepted.action_id)
                assert value("mirakl_cancel_pending_actions") == 1
    cancel = "v2-cancelOrderLines"
    assert value("mirakl_cancel_requests_total", {"route": cancel, "status": "429"}) == 1
    assert value("mirakl_cancel_requests_total", {"route": cancel, "status": "202"}) == 1
    assert value("mirakl_cancel_requests_total", {"route": cancel, "status": "none"}) == 1
    assert value("mirakl_cancel_rate_limited_total", {"route": cancel}) == 1
    assert value("mirakl_cancel_rate_limit_pause_seconds_total")  # > 0
    assert value("mirakl_cancel_uncertain_total", {"route": cancel}) == 1
    assert value("mirakl_cancel_calls_total", {"route": cancel, "outcome": "uncertain"}) == 1
    assert value("mirakl_cancel_retries_total", {"route": cancel, "reason": "HTTP 429"}) == 1
    assert value("mirakl_cancel_requests_total",
                 {"route": "v2-getActionStatus", "status": "503"}) == 1
    assert value("mirakl_cancel_pending_actions") == 0
    assert value("mirakl_cancel_actions_final_total", {"state": "SUCCESS"}) == 1
    assert value("mirakl_cancel_action_duration_seconds_count", {"state": "SUCCESS"}) == 1
    assert value("mirakl_cancel_poll_lag_seconds_count")  # one per read
    assert value("mirakl_cancel_request_duration_seconds_bucket",
                 {"route": cancel, "le": "+Inf"}) == 3
    text = generate_latest(registry).decode()
    assert "order_id" not in text and accepted.action_id not in text  # ids are not labels


# --- the CLI ---------------------------------------------------------------------------


def _scrape_until_pending(url: str, proc: subprocess.Popen[str]) -> str:
    """Scrape until a scrape shows pending actions, a counted cancel and a poll (the
    actions cannot end before the test lets them, so this is no race); bounded so that
    nothing hangs, and no bound on how long it may take within that."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        pending = [float(m.group(1)) for m in
                   re.finditer(r"^mirakl_cancel_pending_actions (\S+)$", text, re.M)]
        if (pending and max(pending) > 0 and "mirakl_cancel_poll_lag_seconds_count" in text
                and 'route="v2-cancelOrderLines",status="202"' in text):
            return text
        time.sleep(0.05)
    raise AssertionError(f"no scrape showed pending actions (exit code {proc.poll()})")


def test_metrics_scraped_during_a_cli_run(tmp_path: Path) -> None:
    # The actions stay pending until the test ends them (a processing delay of a day):
    # the scrape while they are pending cannot miss, however slow the machine.
    config = SimulatorConfig(time_scale=SCALE, processing_delay=(86_400.0, 86_400.0), seed=5)
    with ThreadedSimulator(config) as sim:
        orders = sim.generate_orders(n_orders=20, lines_per_order=(1, 1), wrong_state_ratio=0)
        source = tmp_path / "lines.csv"
        write_csv(source, orders)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
        env.update(MIRAKL_CONNECT_TOKEN=sim.token, MIRAKL_CONNECT_BASE_URL=sim.base_url)
        ceiling = str(MIN)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirakl_cancel.cli", "run", str(source), "--metrics-port",
             "0", "--journal", str(tmp_path / "j.db"), "--min-poll-interval", ceiling,
             "--poll-interval", "0.2", "--first-poll-delay", ceiling],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            url = None
            for line in proc.stderr:
                found = re.search(r"metrics: (http://127\.0\.0\.1:\d+/metrics)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, "the CLI did not say where its metrics are"
            during = _scrape_until_pending(url, proc)

            def end_every_action() -> None:
                for action in sim.actions.values():
                    action.due_mono = 0.0

            # Again until the job ends: cancels sent after the scrape end too.
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                sim.call(end_every_action)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, out
    assert "mirakl_cancel_request_duration_seconds_bucket" in during


def test_metrics_port_in_use_is_a_usage_error(
        cli_logger: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from mirakl_cancel.cli import main

    source = tmp_path / "lines.csv"
    write_csv(source, [sim_order("0001_M-A")])
    monkeypatch.setenv("MIRAKL_CONNECT_TOKEN", "t")
    monkeypatch.setenv("MIRAKL_CONNECT_BASE_URL", "http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["run", str(source), "--metrics-port", str(port),
                     "--journal", str(tmp_path / "j.db")]) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err
