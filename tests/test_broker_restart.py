"""mosquitto itself stopped and restarted (persistence on) while jobs stream in.

This module has a broker of its own: stopping the shared one would disturb other tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.ops.mosquitto import Mosquitto
from broker.runtime.mqtt import BrokerAddress
from tests.conftest import agent_args, private_broker, wait_online
from tests.services import Device

pytestmark = [pytest.mark.slow, pytest.mark.fault]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with private_broker(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def broker_url(own_broker: Mosquitto) -> str:
    return own_broker.url


def test_mosquitto_restarted_under_load_loses_nothing(daemons, own_broker, site_id):
    daemons("coordinator")
    for name in ("a1", "a2"):
        daemons("agent", *agent_args(name), name=name)
    wait_online(own_broker.url, site_id, 2)
    # A device that wants its answers across a broker restart keeps a persistent session.
    device = Device(BrokerAddress.parse(own_broker.url), site_id, "sensor-r", persistent=True)
    ids: list[str] = []
    try:
        def send(n: int) -> None:
            for _ in range(n):
                ids.append(device.send({"id": f"r{len(ids)}", "prompt": f"Reading {len(ids)}:", "max_tokens": 12},
                                       wait=False))
                time.sleep(0.25)

        send(8)
        own_broker.stop()  # SIGTERM: mosquitto writes its persistence file
        down_at = time.monotonic()
        send(4)  # queued by the device's client while the broker is away
        time.sleep(max(0.0, 3.0 - (time.monotonic() - down_at)))
        own_broker.start()
        send(8)
        for job in ids:
            assert device.final(job, timeout_s=120)["status"] == "done"
        time.sleep(2)
        row = device.tally("broker restart", "mosquitto stopped for 3 s and restarted (persistence on) "
                           "while 20 jobs streamed in", ids)
        assert row["lost"] == 0 and row["twice"] == 0
    finally:
        device.close()
