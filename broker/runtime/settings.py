"""Settings of the gateway daemons (``[coordinator]`` and ``[site]`` in the config file)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta

from broker.runtime.errors import ConfigError
from broker.runtime.mqtt import BrokerAddress

# Declared constraints: `fogmesh config check` and every daemon's start refuse a value outside
# them, naming the key (msgspec checks them when settings are loaded).
Positive = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]
Port = Annotated[int, Meta(ge=0, le=65535)]
LogLevel = Literal["debug", "info", "warning", "error", "critical", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def state_dir() -> Path:
    """Where daemons keep their state (the ledger) and ``fogmesh up`` records the site it started."""
    base = os.environ.get("FOGMESH_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fogmesh"
    )
    return Path(base)


@dataclass
class DaemonSettings:
    """What every daemon has, whether it talks MQTT or not: its logs and its metrics."""

    log_level: LogLevel = "info"
    log_format: Literal["kv", "json"] = "kv"
    metrics_port: Port = 0  # Prometheus /metrics on this port (0 = off)
    metrics_bind: str = "127.0.0.1"


@dataclass
class Connection(DaemonSettings):
    """How a daemon or a client reaches the site broker; every daemon's settings start with these keys.

    ``broker``, ``site`` and ``ca_file`` are site-wide (``[site]`` in the file); the
    credentials belong to one daemon's role, so each daemon's table has its own.
    """

    broker: str = "mqtt://127.0.0.1:1883"
    site: str = "site"
    username: str = ""
    password_file: str = ""  # a file holding the password (mode 0600), never the password itself
    ca_file: str = ""  # the site CA that signed the broker's certificate (mqtts://)
    cert_file: str = ""  # a client certificate, where the broker asks for one
    key_file: str = ""
    keepalive_s: Annotated[int, Meta(ge=1, le=65535)] = 10

    def address(self) -> BrokerAddress:
        """The broker address with TLS and credentials; ConfigError says which key is wrong."""
        address = BrokerAddress.parse(self.broker)
        if (self.ca_file or self.cert_file) and not address.tls:
            raise ConfigError(f"ca_file/cert_file are set but broker {self.broker!r} is plaintext; "
                              "use mqtts://host:8883")
        password = address.password
        if self.password_file:
            try:
                password = Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"password_file {self.password_file}: {exc.strerror}") from exc
        for key in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(f"{key} {value} does not exist")
        return BrokerAddress(host=address.host, port=address.port, tls=address.tls,
                             username=self.username or address.username, password=password,
                             ca_file=self.ca_file or None, cert_file=self.cert_file or None,
                             key_file=self.key_file or None)


