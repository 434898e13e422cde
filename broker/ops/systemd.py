"""systemd unit files: rendered, installed, verified (``fogmesh install-units``).

The daemons' side of systemd, sd_notify, is in ``broker.runtime.notify``."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from broker.runtime.errors import ConfigError
from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.systemd")
SYSTEM_UNIT_DIRS = (Path("/etc/systemd/system"), Path("/usr/local/lib/systemd/system"), Path("/lib/systemd/system"))
UNITS = ("fogmesh-broker", "fogmesh-coordinator", "fogmesh-agent", "fogmesh-bridge", "fogmesh-cloud-worker",
         "fogmesh-gateway")


# ---------------------------------------------------------------------- unit files


def unit_template(name: str) -> str:
    """A unit as shipped in deploy/systemd/ (installed with the package as broker/units/)."""
    return resources.files("broker.ops").joinpath("units", f"{name}.service").read_text()


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
    """Write the units into ``dest``. Only when ``dest`` is systemd's own unit folder does it
    also change the system: create the service user, reload systemd. Writing units to any other
    folder (to read them, to package them) changes nothing else."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in UNITS:
        path = dest / f"{name}.service"
        path.write_text(render_unit(name, fogmesh_executable(), config, user, mosquitto_conf))
        written.append(path)
    if dest.resolve() not in SYSTEM_UNIT_DIRS:
        return written
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
