"""The connection every command shares: flags, then ``FOGMESH_*``, then the config file, then the
site `fogmesh up` started."""

from __future__ import annotations

import argparse
import os
from typing import Any


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The connection flags every command shares, as settings overrides."""
    return {"broker": args.broker, "site": args.site, "username": args.username,
            "password_file": args.password_file, "ca_file": args.ca_file,
            "log_level": args.log_level, "log_format": args.log_format,
            "metrics_port": getattr(args, "metrics_port", None)}


def client_settings(args: argparse.Namespace) -> Any:
    """A client command's connection: flags, then FOGMESH_*, then ``[client]`` of the config file,
    then the site `fogmesh up` started."""
    from broker.ops.config import config_path, load
    from broker.ops.site import current
    from broker.runtime.settings import Connection

    overrides = flags(args)
    if not (args.broker or os.environ.get("FOGMESH_BROKER") or config_path(args.config)):
        cur = current()
        overrides["broker"] = cur.get("broker")
        overrides["site"] = args.site or os.environ.get("FOGMESH_SITE") or cur.get("site")
    return load(Connection, "client", args.config, **overrides)
