"""Ways to run the simulator: threaded, pytest fixture, ``python -m``; order books."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mirakl_cancel.simulator import (
    Fault,
    SimLine,
    SimOrder,
    Simulator,
    SimulatorConfig,
    ThreadedSimulator,
    pytest_plugin,
)
from mirakl_cancel.simulator.__main__ import build_arg_parser
from mirakl_cancel.simulator._cli import config_from_args

# The pytest11 entry point provides these once the package is installed; binding
# them here as well keeps this module runnable from a plain checkout.
mirakl_simulator = pytest_plugin.mirakl_simulator
mirakl_simulator_config = pytest_plugin.mirakl_simulator_config

REPO = Path(__file__).resolve().parents[2]


def request(
    method: str, url: str, token: str | None = None, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    """Plain urllib: the point is that no event loop is involved on this side."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), dict(err.headers)


CANCEL = {
    "cancelations": [
        {
            "product_id": "P1",
            "quantity": 1,
            "reason": "DEFECT",
            "price": {"amount": 2, "currency": "EUR"},
            "shipping_price": {"amount": 0, "currency": "EUR"},
        }
    ]
}


def small_order() -> SimOrder:
    return SimOrder(
        id="T1", lines=[SimLine(id="T1-1", product_id="P1", quantity=2, price=Decimal(2))]
    )


def test_fixture_in_a_sync_test(mirakl_simulator: ThreadedSimulator) -> None:
    sim = mirakl_simulator
    sim.add_order(small_order())
    status, body, _ = request("POST", f"{sim.base_url}/v2/orders/T1/cancel", sim.token, CANCEL)
    assert status == 202
    sim.inject(Fault.http(503), route="status")
    status, _, _ = request(
        "GET", f"{sim.base_url}/v2/orders/actions/{body['action_id']}", sim.token
    )
    assert status == 503
    assert sim.stats.actions_created == 1
    assert sim.stats_snapshot()["faults_injected"] == {"503": 1}
    assert sim.token_url.endswith("/oauth/token")


@pytest.mark.asyncio
async def test_fixture_in_an_async_test(mirakl_simulator: ThreadedSimulator) -> None:
    import aiohttp

    orders = mirakl_simulator.generate_orders(n_orders=3)
    async with aiohttp.ClientSession() as session:
        url = f"{mirakl_simulator.base_url}/v2/orders"
        headers = {"Authorization": f"Bearer {mirakl_simulator.token}"}
        async with session.get(url, headers=headers) as resp:
            page = await resp.json()
    assert {o["id"] for o in page["data"]} == {o.id for o in orders}


class TestConfigOverride:
    @pytest.fixture
    def mirakl_simulator_config(self) -> SimulatorConfig:
        return SimulatorConfig(time_scale=0.001, client_secret="override")

    def test_override(self, mirakl_simulator: ThreadedSimulator) -> None:
        assert mirakl_simulator.config.client_secret == "override"


def test_threaded_context_manager_and_stop() -> None:
    with ThreadedSimulator(SimulatorConfig(time_scale=0.001)) as sim:
        url = sim.base_url
        sim.add_order(small_order())
        assert request("GET", f"{url}/_sim/stats")[0] == 200
        assert "T1" in sim.orders
        sim.reset_stats()
        assert sim.stats.requests == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/_sim/stats", timeout=1)


def test_threaded_port_in_use_raises() -> None:
    with ThreadedSimulator() as first, pytest.raises(OSError, match=r"(?i)in use"):  # noqa: SIM117
        with ThreadedSimulator(port=first.simulator.port):
            pass


def test_cli_subprocess_serves_until_sigterm(tmp_path: Path) -> None:
    orders_out = tmp_path / "orders.json"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirakl_cancel.simulator",
            "--port",
            "0",
            "--time-scale",
            "0.001",
            "--orders",
            "5",
            "--seed",
            "4",
            "--processing-delay",
            "1,2",
            "--fault",
            "503=0.0",
            "--orders-out",
            str(orders_out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        info: dict[str, str] = {}
        deadline = time.monotonic() + 10
        while "stats_url" not in info and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            key, sep, value = line.strip().partition("=")
            if sep:
                info[key] = value
        assert info["client_id"] == "sim-client"
        status, page, _ = request("GET", info["base_url"] + "/v2/orders", info["token"])
        assert status == 200
        assert len(page["data"]) == 5
        saved = json.loads(orders_out.read_text())
        assert sorted(o["id"] for o in saved) == sorted(o["id"] for o in page["data"])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["requests"] == 1


def test_arg_parser_builds_config() -> None:
    args = build_arg_parser().parse_args(
        [
            "--time-scale",
            "0.01",
            "--processing-delay",
            "2",
            "--fault",
            "429=0.1",
            "--fault",
            "drop=0.05",
            "--rate-limit",
            "50",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.time_scale == 0.01
    assert cfg.processing_delay == (2.0, 2.0)
    assert cfg.fault_rates == {"429": 0.1, "drop": 0.05}
    assert cfg.rate_limit == 50
    with pytest.raises(SystemExit):
        build_arg_parser().parse_args(["--fault", "nope=1"])


def test_generate_orders_is_seeded_and_realistic() -> None:
    def book(seed: int) -> list[dict[str, Any]]:
        sim = Simulator(SimulatorConfig(seed=seed))
        return [
            o.to_dict()
            for o in sim.generate_orders(50, lines_per_order=(1, 5), wrong_state_ratio=0.2)
        ]

    first, again, other = book(1), book(1), book(2)
    for a, b in zip(first, again, strict=True):
        assert {k: v for k, v in a.items() if k != "created_at"} == {
            k: v for k, v in b.items() if k != "created_at"
        }
    assert first != other
    assert len({o["id"] for o in first}) == 50
    assert all(1 <= len(o["lines"]) <= 5 for o in first)
    assert any(o["status"] != "AWAITING_SHIPMENT" for o in first)
    assert all(
        Decimal(line["price"]).as_tuple().exponent >= -2 for o in first for line in o["lines"]
    )


def test_generate_twice_never_reuses_ids() -> None:
    sim = Simulator()
    ids = [o.id for o in sim.generate_orders(5)] + [o.id for o in sim.generate_orders(5)]
    assert len(set(ids)) == 10 == len(sim.orders)


def test_load_orders(tmp_path: Path) -> None:
    path = tmp_path / "orders.json"
    path.write_text(
        json.dumps(
            {
                "orders": [
                    {
                        "id": "L1",
                        "status": "SHIPPED",
                        "lines": [
                            {
                                "id": "L1-1",
                                "product_id": "P",
                                "quantity": 2,
                                "price": "9.90",
                                "currency": "USD",
                            }
                        ],
                    }
                ]
            }
        )
    )
    sim = Simulator()
    (loaded,) = sim.load_orders(path)
    assert sim.orders["L1"] is loaded
    assert loaded.status == "SHIPPED"
    assert loaded.lines[0].price == Decimal("9.90")
    assert loaded.lines[0].remaining_quantity == 2
    bad = tmp_path / "bad.json"
    bad.write_text(
        '[{"id": "X", "lines": [{"id": "a", "product_id": "p", "quantity": 1.5, "price": 1}]}]'
    )
    with pytest.raises(ValueError, match="quantity must be an integer"):
        sim.load_orders(bad)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        SimulatorConfig(fault_rates={"5O3": 0.1})
    with pytest.raises(ValueError, match="add up"):
        SimulatorConfig(fault_rates={"503": 0.6, "drop": 0.6})
    with pytest.raises(ValueError, match="time_scale"):
        SimulatorConfig(time_scale=0)
    with pytest.raises(ValueError, match="processing_delay"):
        SimulatorConfig(processing_delay=(5, 1))
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault.http(200)
    with pytest.raises(ValueError, match="route must be"):
        Simulator().inject(Fault.http(500), route="refunds")
