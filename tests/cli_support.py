"""What the CLI tests share: running `mirakl-cancel` as a subprocess against a simulator.

Test modules import these from here, never from one another.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mirakl_cancel.simulator import SimOrder, ThreadedSimulator

SCALE = 0.001  # the API's 60 s poll ceiling lasts 60 ms
FIELDS = ("order_id", "order_line_id", "product_id", "quantity", "reason", "price_amount",
          "price_currency", "shipping_amount", "shipping_currency", "taxes", "shipping_taxes")


def poll_flags(scale: float) -> list[str]:
    """Client polling scaled like the simulator (the CLI takes real seconds)."""
    ceiling = str(60 * scale)
    return ["--min-poll-interval", ceiling, "--poll-interval", ceiling,
            "--first-poll-delay", ceiling]


def env_for(sim: ThreadedSimulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    env.update(MIRAKL_CLIENT_ID=sim.config.client_id,
               MIRAKL_CLIENT_SECRET=sim.config.client_secret,
               MIRAKL_TOKEN_URL=sim.token_url, MIRAKL_CONNECT_BASE_URL=sim.base_url)
    return env


def write_csv(path: Path, orders: Sequence[SimOrder]) -> int:
    """One row per line of every order; returns the number of rows."""
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        for order in orders:
            for line in order.lines:
                writer.writerow({
                    "order_id": order.id, "order_line_id": line.id, "product_id": "",
                    "quantity": line.quantity, "reason": "OUT_OF_STOCK",
                    "price_amount": line.price * line.quantity, "price_currency": line.currency,
                    "shipping_amount": line.shipping_price, "shipping_currency": line.currency,
                    "taxes": "VAT:0.10", "shipping_taxes": ""})
                rows += 1
    return rows


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirakl_cancel.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def read_report(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
