"""systemd integration: sd_notify (READY, WATCHDOG, STATUS, STOPPING) and the unit files.

The notify protocol is one datagram to ``$NOTIFY_SOCKET``; it needs no library.
A daemon calls :meth:`Notifier.tick` from the loop that proves it is alive, so a
wedged loop stops the pings and systemd restarts the daemon (``WatchdogSec``).
Outside systemd every call is a no-op.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from broker.errors import ConfigError
from broker.logs import kv

log = logging.getLogger("fogmesh.systemd")
UNITS = ("fogmesh-broker", "fogmesh-coordinator", "fogmesh-agent", "fogmesh-bridge", "fogmesh-cloud-worker")


class Notifier:
    """sd_notify for one daemon; silent when not started by systemd with ``Type=notify``."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # ping at half the timeout, as sd_watchdog_enabled(3) recommends
        self.watchdog_s = int(usec) / 2e6 if usec and (not pid or int(pid) == os.getpid()) else None
        self._last_ping = 0.0
        self._warned = False

    def send(self, *fields: str, wait_s: float = 1.0) -> bool:
        """One notify datagram; gives up after ``wait_s`` if the socket's queue is full."""
        if not self.socket_path:
            return False
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(wait_s)  # a notify socket nobody reads must not stall the daemon's loop
                s.connect(address)
                s.sendall("\n".join(fields).encode())
            return True
        except OSError as exc:
            if not self._warned:
                log.warning(kv("sd_notify_failed", socket=self.socket_path, reason=exc.strerror or str(exc)))
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self._last_ping = time.monotonic()

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def tick(self) -> None:
        """WATCHDOG=1, at most every half watchdog interval."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send("WATCHDOG=1", wait_s=0.0)

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")


# ---------------------------------------------------------------------- unit files


def unit_template(name: str) -> str:
    """A unit as shipped in deploy/systemd/ (installed with the package as broker/units/)."""
    return resources.files("broker").joinpath("units", f"{name}.service").read_text()


def render_unit(name: str, fogmesh: str, config: str, user: str, mosquitto_conf: str) -> str:
    """The shipped unit with this host's paths in place of the defaults it names."""
    return (unit_template(name)
            .replace("/opt/fogmesh/.venv/bin/fogmesh", fogmesh)
            .replace("/etc/fogmesh/fogmesh.toml", config)
            .replace("/etc/fogmesh/broker/mosquitto.conf", mosquitto_conf)
            .replace("/usr/sbin/mosquitto", shutil.which("mosquitto") or "/usr/sbin/mosquitto")
            .replace("User=fogmesh", f"User={user}").replace("Group=fogmesh", f"Group={user}"))


def fogmesh_executable() -> str:
    """The ``fogmesh`` of the environment running now (the venv it was installed into)."""
    here = Path(sys.executable).parent / "fogmesh"
    return str(here) if here.exists() else shutil.which("fogmesh") or "/usr/local/bin/fogmesh"


def install_units(dest: Path, config: str, user: str, mosquitto_conf: str, reload: bool = True) -> list[Path]:
    """Write the five units into ``dest``; create the service user and reload systemd when we can."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        path = dest / f"{name}.service"
        path.write_text(render_unit(name, fogmesh_executable(), config, user, mosquitto_conf))
        written.append(path)
    missing = subprocess.run(["id", "-u", user], capture_output=True).returncode != 0
    if missing and os.geteuid() == 0 and shutil.which("useradd"):
        subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/fogmesh", "--shell",
                        "/usr/sbin/nologin", user], check=True)
        log.info(kv("user_created", user=user))
    if reload and shutil.which("systemctl") and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    return written


def default_user() -> str:
    return "fogmesh" if os.geteuid() == 0 else getpass.getuser()


def verify(paths: list[Path]) -> str:
    """``systemd-analyze verify`` on unit files; its complaints ('' when clean)."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        raise ConfigError("systemd-analyze is not installed")
    out = subprocess.run([tool, "verify", *map(str, paths)], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip() or ("" if out.returncode == 0 else f"exit status {out.returncode}")
