"""Settings for every daemon come from one place: a TOML file, then ``FOGMESH_*`` variables, then flags.

A file has a table per daemon (``[agent]``, ``[coordinator]``, ``[site]``, ...).
A variable names its daemon and key: ``FOGMESH_AGENT_SLOTS=2``; the keys every
daemon shares (``broker``, ``site``) also read ``FOGMESH_BROKER`` / ``FOGMESH_SITE``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from broker.runtime.errors import ConfigError

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


def file_values(doc: dict[str, Any], section: str, names: set[str]) -> dict[str, Any]:
    """A daemon's keys as the file gives them: the site-wide ones from ``[site]``, then its own table."""
    if not isinstance(doc.get("site", {}), dict):
        raise ConfigError("[site] must be a table")
    data: dict[str, Any] = {k: v for k, v in doc.get("site", {}).items() if k in SHARED_KEYS and k in names}
    data.update({k: v for k, v in doc.get(section, {}).items() if k in names})
    return data


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
        raise ConfigError(f"{file}: unknown key {section}.{unknown[0]}{suggest(unknown[0], names)}")
    data = file_values(doc, section, names)
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
        raise ConfigError(f"[{section}] {friendly(exc, cls)}".replace("$.", f"{section}.")) from exc


def friendly(exc: Exception, cls: type) -> str:
    """msgspec's validation message, with the allowed values spelled out for a choice."""
    text = str(exc)
    m = re.match(r"Invalid enum value (.+) - at `\$\.(\w+)`", text)
    if m:
        hints = typing.get_type_hints(cls, include_extras=False)
        choices = typing.get_args(hints.get(m.group(2)))
        if choices:
            unique = list(dict.fromkeys(str(c) for c in choices))
            name = m.group(2).replace("_", " ")
            return f"unknown {name} {m.group(1)}; one of {', '.join(unique)} - at `$.{m.group(2)}`"
    return text


def suggest(key: str, names: set[str]) -> str:
    """``; did you mean agent_id?`` for a typo, else the keys there are."""
    close = difflib.get_close_matches(key.replace("-", "_"), sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f" (known: {', '.join(sorted(names))})"


# ---------------------------------------------------------------------- fogmesh config check


@dataclasses.dataclass(frozen=True)
class Problem:
    key: str  # "section.key", or "section" for a whole table
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.key}: {self.message}" if self.line else f"{self.key}: {self.message}"


def _sections() -> dict[str, type]:
    from agents.settings import AgentSettings
    from broker.coordinator.settings import CoordinatorSettings
    from broker.gateway.settings import GatewaySettings
    from broker.ops.security import BrokerSettings
    from broker.runtime.settings import Connection
    from cloud_bridge.settings import BridgeSettings, WorkerSettings

    return {"coordinator": CoordinatorSettings, "agent": AgentSettings, "bridge": BridgeSettings,
            "cloud-worker": WorkerSettings, "gateway": GatewaySettings, "broker": BrokerSettings,
            "client": Connection}


def key_line(text: str, section: str, key: str | None = None) -> int | None:
    """The line of ``[section]`` (or of ``key = ...`` inside it) in a TOML text; None if not found."""
    current = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[] ").split("]")[0].strip().strip('"')
            if key is None and current == section:
                return number
            continue
        if key is not None and current == section and line.split("=", 1)[0].strip().strip('"') == key:
            return number
    return None


def _semantic(section: str, settings: Any) -> list[tuple[str, str]]:
    """(key, problem) pairs a type check cannot see: files that must exist, names that must be known."""
    from agents.backends.llama import check_gguf
    from agents.errors import AgentError
    from agents.model import parse_models

    found: list[tuple[str, str]] = []
    if section == "agent" and settings.models:
        try:
            for _, path in parse_models(settings.models):
                check_gguf(path)
        except AgentError as exc:
            found.append(("models", str(exc)))
    if section == "gateway":
        try:
            settings.api_keys()
        except ConfigError as exc:
            found.append(("api_keys_file" if settings.api_keys_file else "bind", str(exc)))
    if hasattr(settings, "address"):
        try:
            settings.address()
        except ConfigError as exc:
            key = next((k for k in ("password_file", "ca_file", "cert_file", "key_file") if k in str(exc)), "broker")
            found.append((key, str(exc)))
    return found


def check(path: Path) -> list[Problem]:
    """Every problem in a config file, each with its key and line, as `fogmesh config check` reports them."""
    try:
        text = path.read_text()
        doc = tomllib.loads(text)
    except OSError as exc:
        return [Problem(str(path), None, exc.strerror or str(exc))]
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        line = int(m.group(1)) if m else (len(text.splitlines()) if "end of document" in str(exc) else None)
        return [Problem("syntax", line, str(exc))]
    sections = _sections()
    problems: list[Problem] = []
    for name, value in doc.items():
        if name not in sections and name != "site":
            problems.append(Problem(name, key_line(text, name), f"unknown table [{name}]; known: "
                                    f"{', '.join(['site', *sections])}"))
        elif not isinstance(value, dict):
            problems.append(Problem(name, key_line(text, name), f"[{name}] must be a table"))
    doc = {name: value for name, value in doc.items() if isinstance(value, dict)}  # the rest is reported
    for key in sorted(set(doc.get("site", {})) - set(SHARED_KEYS)):
        problems.append(Problem(f"site.{key}", key_line(text, "site", key),
                                f"unknown key; [site] holds {', '.join(SHARED_KEYS)}"))
    for section, cls in sections.items():
        if section not in doc and section != "client":
            continue
        table = doc.get(section, {})
        names = {f.name for f in dataclasses.fields(cls)}
        for key in sorted(set(table) - names):
            problems.append(Problem(f"{section}.{key}", key_line(text, section, key),
                                    f"unknown key{suggest(key, names)}"))
        data = file_values(doc, section, names)
        settings: Any = None
        for _ in range(len(data) + 1):  # report every bad key, not just the first
            try:
                settings = msgspec.convert(data, cls, strict=False)
                break
            except (msgspec.ValidationError, ConfigError) as exc:
                said = friendly(exc, cls)
                m = (re.search(r"\$\.([A-Za-z_-]+)", said)
                     or re.search(rf"{re.escape(section)}\.([\w.-]+)", said))
                dotted = f"{section}.{m.group(1)}" if m else section
                table_name, _, key = dotted.rpartition(".")
                message = re.sub(r"\s*- at `\$[^`]*`", "", said).removeprefix(f"{dotted}: ")
                line = key_line(text, table_name, key) if table_name else key_line(text, section)
                problems.append(Problem(dotted, line, message))
                if not m or m.group(1).split(".")[0] not in data:
                    break
                del data[m.group(1).split(".")[0]]
        if settings is None:
            continue
        for key, message in _semantic(section, settings):
            where = section if key in table or key not in doc.get("site", {}) else "site"
            problems.append(Problem(f"{where}.{key}", key_line(text, where, key), message))
    return list(dict.fromkeys(problems))  # a [site] key shared by several daemons is reported once
