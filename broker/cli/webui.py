"""``fogmesh dashboard``: serve the static web dashboard (broker/cli/dashboard/) over HTTP.

The page itself talks to the broker over MQTT over WebSockets, so any web
server can serve the same folder; this one exists so a gateway needs nothing else.
"""

from __future__ import annotations

import errno
import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from broker.runtime.errors import ConfigError
from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.dashboard")


def folder() -> Path:
    return Path(str(resources.files("broker.cli").joinpath("dashboard")))


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug(kv("http", request=format % args))


def page_url(bind: str, port: int, ws: str, site: str, username: str = "", offline_after_s: float | None = None,
             view: str = "") -> str:
    """The page's address: never a password in it (the page asks for one, and keeps it in the tab).
    ``offline_after_s``: the page hides agents offline for longer (its own default: 600 s);
    ``view="fleet"``: the page that lists every site."""
    query = {"broker": ws, "site": site, **({"username": username} if username else {}),
             **({"offline_after": f"{offline_after_s:g}"} if offline_after_s is not None else {}),
             **({"view": view} if view else {})}
    host = "127.0.0.1" if bind in ("0.0.0.0", "") else bind
    return f"http://{host}:{port}/?{urlencode(query)}"


def serve(bind: str, port: int) -> ThreadingHTTPServer:
    handler = functools.partial(_Handler, directory=str(folder()))
    if not 0 <= port <= 65535:
        raise ConfigError(f"dashboard: --port {port} is not a port (0-65535)")
    try:
        return ThreadingHTTPServer((bind, port), handler)
    except OSError as exc:
        which = "--port" if exc.errno == errno.EADDRINUSE else "--bind (an address of this host) or --port"
        raise ConfigError(f"dashboard: cannot listen on {bind}:{port} ({exc.strerror or exc}); choose another "
                          f"{which}") from exc
