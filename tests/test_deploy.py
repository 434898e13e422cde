"""docs/deploy.md followed on this machine: one config file, the generated broker, the installed units.

There is no systemd here, so the test does what systemd would do with the units
`fogmesh install-units` wrote: run each ExecStart with the unit's Environment
and a NOTIFY_SOCKET, wait for READY, and stop it with SIGTERM. (StateDirectory
and CacheDirectory would give the service its own writable folders; the test
points those variables at folders of its own.)
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from broker.runtime.proc import free_port, wait_port
from tests.services import NotifySocket, cli, wait_for

pytestmark = pytest.mark.slow


def unit_command(unit: Path) -> tuple[list[str], dict[str, str]]:
    lines = unit.read_text().splitlines()
    cmd = shlex.split(next(line for line in lines if line.startswith("ExecStart=")).split("=", 1)[1])
    env = dict(line.split("=", 1)[1].split("=", 1) for line in lines if line.startswith("Environment="))
    return cmd, env


def test_a_gateway_set_up_as_docs_deploy_says_serves_over_tls(tmp_path):
    port = free_port()
    broker_dir, data = tmp_path / "broker", tmp_path / "data"
    config = tmp_path / "fogmesh.toml"
    cred = broker_dir / "credentials"
    config.write_text(f"""
[site]
broker = "mqtts://127.0.0.1:{port}"
site = "plant"
ca_file = "{broker_dir}/certs/ca.crt"

[broker]
site = "plant"
out_dir = "{broker_dir}"
data_dir = "{data}"
bind = "127.0.0.1"
tls_port = {port}

[broker.users]
coordinator = "coordinator"
edge-01 = "agent"
sensor-1 = "device"
oncall = "operator"

[coordinator]
username = "coordinator"
password_file = "{cred}/coordinator.password"
ledger = "{tmp_path}/ledger.db"

[agent]
agent_id = "edge-01"
username = "edge-01"
password_file = "{cred}/edge-01.password"
threads = 2

[client]
username = "oncall"
password_file = "{cred}/oncall.password"
""")
    for step in (["broker", "certs", "--out", str(broker_dir / "certs"), "--host", "127.0.0.1"],
                 ["broker", "config", "--config", str(config)],
                 ["config", "check", str(config)],
                 ["install-units", "--dest", str(tmp_path / "units"), "--config", str(config), "--user",
                  os.environ.get("USER") or "root", "--mosquitto-conf", str(broker_dir / "mosquitto.conf"),
                  "--no-reload"]):
        out = cli(*step, timeout_s=120)
        assert out.returncode == 0, f"fogmesh {' '.join(step)}: {out.stderr}"

    procs: dict[str, subprocess.Popen[bytes]] = {}
    notify: dict[str, NotifySocket] = {}
    try:
        for name in ("fogmesh-broker", "fogmesh-coordinator", "fogmesh-agent"):
            cmd, env = unit_command(tmp_path / "units" / f"{name}.service")
            notify[name] = NotifySocket(tmp_path / f"{name}.notify")
            env.update(FOGMESH_STATE_DIR=str(tmp_path / "state"), XDG_CACHE_HOME=os.environ.get(
                "XDG_CACHE_HOME", str(Path.home() / ".cache")), NOTIFY_SOCKET=str(notify[name].path),
                WATCHDOG_USEC="30000000")
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=log)
            if name == "fogmesh-broker":
                assert wait_port("127.0.0.1", port, 10), (tmp_path / f"{name}.log").read_text()
            else:
                wait_for(lambda n=notify[name]: n.has("READY=1"), 120, what=f"READY=1 from {name}")
        def edge_online() -> dict | None:
            out = cli("status", "--json", "--config", str(config), timeout_s=120)
            snap = orjson.loads(out.stdout or b"{}")
            return snap if snap.get("agents", {}).get("edge-01", {}).get("state") == "online" else None

        status = wait_for(edge_online, 60, every_s=0.5, what="edge-01 online")
        assert status["coordinator"]["state"] == "online"
        answer = cli("ask", "--json", "--config", str(config), "--username", "sensor-1", "--password-file",
                     str(cred / "sensor-1.password"), "--device", "sensor-1", "--max-tokens", "12",
                     "The boiler's temperature is", timeout_s=120)
        assert answer.returncode == 0, answer.stderr
        final = orjson.loads(answer.stdout)
        assert final["status"] == "done" and final["served_by"] == {"tier": "edge", "node": "edge-01"}
    finally:
        for name in ("fogmesh-agent", "fogmesh-coordinator", "fogmesh-broker"):
            proc = procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
