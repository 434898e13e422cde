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
import socket
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from broker.mosquitto import free_port, wait_port
from tests.services import ROOT, wait_for

pytestmark = pytest.mark.slow
FOGMESH = [sys.executable, "-m", "broker.cli"]


def unit_command(unit: Path) -> tuple[list[str], dict[str, str]]:
    lines = unit.read_text().splitlines()
    cmd = shlex.split(next(line for line in lines if line.startswith("ExecStart=")).split("=", 1)[1])
    env = dict(line.split("=", 1)[1].split("=", 1) for line in lines if line.startswith("Environment="))
    return cmd, env


class Notify:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path, self.messages = path, []
        threading.Thread(target=lambda: [self.messages.append(self.sock.recv(4096).decode()) for _ in iter(int, 1)],
                         daemon=True).start()

    def ready(self) -> bool:
        return any("READY=1" in m.split("\n") for m in list(self.messages))


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
    run = lambda *a: subprocess.run([*FOGMESH, *a], capture_output=True, text=True, cwd=ROOT, timeout=120)  # noqa: E731
    for step in (["broker", "certs", "--out", str(broker_dir / "certs"), "--host", "127.0.0.1"],
                 ["broker", "config", "--config", str(config)],
                 ["config", "check", str(config)],
                 ["install-units", "--dest", str(tmp_path / "units"), "--config", str(config), "--user",
                  os.environ.get("USER") or "root", "--mosquitto-conf", str(broker_dir / "mosquitto.conf"),
                  "--no-reload"]):
        out = run(*step)
        assert out.returncode == 0, f"fogmesh {' '.join(step)}: {out.stderr}"

    procs: dict[str, subprocess.Popen[bytes]] = {}
    notify: dict[str, Notify] = {}
    try:
        for name in ("fogmesh-broker", "fogmesh-coordinator", "fogmesh-agent"):
            cmd, env = unit_command(tmp_path / "units" / f"{name}.service")
            notify[name] = Notify(tmp_path / f"{name}.notify")
            env.update(FOGMESH_STATE_DIR=str(tmp_path / "state"), XDG_CACHE_HOME=os.environ.get(
                "XDG_CACHE_HOME", str(Path.home() / ".cache")), NOTIFY_SOCKET=str(notify[name].path),
                WATCHDOG_USEC="30000000")
            with (tmp_path / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=log)
            if name == "fogmesh-broker":
                assert wait_port("127.0.0.1", port, 10), (tmp_path / f"{name}.log").read_text()
            else:
                wait_for(notify[name].ready, 120, what=f"READY=1 from {name}")
        status = wait_for(lambda: (lambda s: s if s.get("agents", {}).get("edge-01", {}).get("state") == "online"
                                   else None)(orjson.loads(run("status", "--json", "--config", str(config)).stdout
                                                           or b"{}")), 60, every_s=0.5, what="edge-01 online")
        assert status["coordinator"]["state"] == "online"
        answer = run("ask", "--json", "--config", str(config), "--username", "sensor-1", "--password-file",
                     str(cred / "sensor-1.password"), "--device", "sensor-1", "--max-tokens", "12",
                     "The boiler's temperature is")
        assert answer.returncode == 0, answer.stderr
        final = orjson.loads(answer.stdout)
        assert final["status"] == "done" and final["served_by"] == {"tier": "edge", "node": "edge-01"}
    finally:
        for name in ("fogmesh-agent", "fogmesh-coordinator", "fogmesh-broker"):
            proc = procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, (tmp_path / f"{name}.log").read_text()[-2000:]
