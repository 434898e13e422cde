"""The gateway's settings: ``[gateway]`` in the config file, ``FOGMESH_GATEWAY_*``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from msgspec import Meta

from broker.runtime.errors import ConfigError
from broker.runtime.settings import Connection, Port, Seconds
from schemas.topics import is_valid_id


@dataclass
class GatewaySettings(Connection):
    bind: str = "127.0.0.1"  # without api_keys_file only a loopback address is allowed
    port: Port = 8000
    # The device id the gateway asks as (default: its user name, else "gateway"): its jobs are
    # <device_id>/<job> in the ledger, and a production broker's `gateway` role lets a user publish
    # only as the device of its own name.
    device_id: str = ""
    api_keys_file: str = ""  # one API key per line (# comments); never the keys in this file
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 1_048_576  # a larger request body gets 413
    answer_timeout_s: Seconds = 600.0  # a request with no final by then: its job is cancelled, 504
    broker_grace_s: Seconds = 10.0  # a request waits this long for a lost broker to come back, then 503
    drain_timeout_s: Seconds = 30.0  # on SIGTERM, how long requests in flight may finish

    def __post_init__(self) -> None:
        self.device_id = self.device_id or self.username or "gateway"
        if not is_valid_id(self.device_id):
            raise ValueError(f"device_id {self.device_id!r} must be 1-128 characters of letters, digits and "
                             "_ . : @ -")

    def loopback(self) -> bool:
        if self.bind == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            return False

    def api_keys(self) -> frozenset[str]:
        """The keys a client may present; ConfigError for a file that cannot be used, or for no keys on
        an address other hosts can reach."""
        if not self.api_keys_file:
            if not self.loopback():
                raise ConfigError(f"gateway.bind {self.bind!r} would let any host on the network use the site "
                                  "without a key; set gateway.api_keys_file (a file with one API key per line, "
                                  "e.g. from `openssl rand -hex 24`), or bind 127.0.0.1")
            return frozenset()
        path = Path(self.api_keys_file)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"gateway.api_keys_file {path}: {exc.strerror}") from exc
        lines = (line.strip() for line in text.splitlines())
        keys = frozenset(line for line in lines if line and not line.startswith("#"))
        if not keys:
            raise ConfigError(f"gateway.api_keys_file {path} holds no key: write one API key per line")
        return keys
