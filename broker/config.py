"""Settings for every daemon come from one place: a TOML file, then ``FOGMESH_*`` variables, then flags.

A file has a table per daemon (``[agent]``, ``[coordinator]``, ``[site]``, ...).
A variable names its daemon and key: ``FOGMESH_AGENT_SLOTS=2``; the keys every
daemon shares (``broker``, ``site``) also read ``FOGMESH_BROKER`` / ``FOGMESH_SITE``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from broker.errors import ConfigError

T = TypeVar("T")
DEFAULT_CONFIG = Path("/etc/fogmesh/fogmesh.toml")
SHARED_KEYS = ("broker", "site", "ca_file", "log_level", "log_format")


def config_path(explicit: str | Path | None = None) -> Path | None:
    """The file to read: the flag, else ``FOGMESH_CONFIG``, else the default if it exists."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("FOGMESH_CONFIG")
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def read_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def load(cls: type[T], section: str, path: str | Path | None = None, **overrides: Any) -> T:
    """Build the settings dataclass ``cls`` for ``section``; raise ConfigError naming the bad key."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    file = config_path(path)
    doc = read_file(file)
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [{section}] must be a table")
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{file}: unknown key {section}.{unknown[0]} (known: {', '.join(sorted(names))})")
    data: dict[str, Any] = {k: v for k, v in doc.get("site", {}).items() if k in SHARED_KEYS and k in names}
    data.update(table)
    prefix = f"FOGMESH_{section.upper().replace('-', '_')}_"
    for name in names:
        if name in SHARED_KEYS and f"FOGMESH_{name.upper()}" in os.environ:
            data[name] = os.environ[f"FOGMESH_{name.upper()}"]
        if prefix + name.upper() in os.environ:
            data[name] = os.environ[prefix + name.upper()]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(data, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"[{section}] {exc}".replace("$.", f"{section}.")) from exc
