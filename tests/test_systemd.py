"""The systemd units pass systemd-analyze, and every daemon really sends READY, WATCHDOG and STOPPING."""

from __future__ import annotations

import shutil
import socket
import time

import pytest

from broker.ops.systemd import UNITS, fogmesh_executable, render_unit, verify
from tests.conftest import agent_args
from tests.services import NotifySocket, wait_for


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    paths = []
    for name in UNITS:
        path = tmp_path / f"{name}.service"
        path.write_text(render_unit(name, fogmesh_executable(), str(tmp_path / "fogmesh.toml"), "fogmesh-svc",
                                    str(tmp_path / "mosquitto.conf")))
        paths.append(path)
    assert verify(paths) == ""
    for path in paths:
        unit = path.read_text()
        assert "Type=notify" in unit and "Restart=on-failure" in unit and "NoNewPrivileges=yes" in unit
        assert "ProtectSystem=strict" in unit and "PrivateTmp=yes" in unit and "User=fogmesh-svc" in unit
        assert path.stem == "fogmesh-broker" or "WatchdogSec=" in unit


@pytest.mark.slow
def test_every_daemon_sends_ready_watchdog_and_stopping(daemons, sqs_endpoint, tmp_path):
    sockets, started = {}, {}
    extra = {"coordinator": [], "agent": agent_args("a1"),
             "bridge": ["--endpoint-url", sqs_endpoint, "--outbox", str(tmp_path / "outbox.db")],
             "cloud-worker": ["--endpoint-url", sqs_endpoint, "--backend", "synthetic"]}
    for kind, args in extra.items():
        sockets[kind] = NotifySocket(tmp_path / f"{kind}.notify")
        env = {"NOTIFY_SOCKET": str(sockets[kind].path), "WATCHDOG_USEC": "1000000",
               "FOGMESH_AGENT_HEARTBEAT_S": "0.2", "FOGMESH_BRIDGE_STATUS_INTERVAL_S": "0.2",
               "FOGMESH_CLOUD_WORKER_WAIT_S": "1"}
        started[kind] = daemons(kind, *args, env=env, on_site=kind != "cloud-worker")
    for kind, sock in sockets.items():
        wait_for(lambda s=sock: s.has("READY=1"), 120, what=f"READY=1 from the {kind}")
        ready = next(m for m in sock.messages if "READY=1" in m)
        assert f"MAINPID={started[kind].pid}" in ready and "STATUS=" in ready
    t0 = time.monotonic()
    for kind, sock in sockets.items():  # WATCHDOG_USEC=1 s: a ping every half second from a live loop
        wait_for(lambda s=sock: s.has("WATCHDOG=1", 3), 10, what=f"WATCHDOG=1 pings from the {kind}")
    assert time.monotonic() - t0 < 10
    for kind, d in started.items():
        assert d.stop() == 0, d.log()[-2000:]
        assert sockets[kind].has("STOPPING=1"), f"no STOPPING=1 from the {kind}"


def test_a_notify_socket_nobody_reads_never_stalls_the_loop(tmp_path, monkeypatch):
    from broker.runtime.notify import Notifier

    path = tmp_path / "full.notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "2")  # a ping on every tick
    notifier = Notifier()
    t0 = time.monotonic()
    for _ in range(200):  # far past the socket's queue (net.unix.max_dgram_qlen, 10 by default)
        notifier.tick()
    assert time.monotonic() - t0 < 1.0
    assert sock.recv(100) == b"WATCHDOG=1"
    sock.close()
