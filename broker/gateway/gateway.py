"""``fogmesh gateway``: the site behind OpenAI's HTTP API, for applications that speak it.

    HTTP client --POST /v1/chat/completions--> gateway --prompts/<device_id> (QoS 1)--> coordinator
    HTTP client <--JSON or server-sent events--- gateway <--results/<device_id>/<job>--- agents, coordinator

Each request is one job of the site under the gateway's device id, so it gets the ledger,
scheduling, deadlines, privacy, cost and one-answer guarantees any device's prompt gets.
uvicorn serves the Starlette app on a thread of its own; the main thread is the daemon's.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import uvicorn

from broker.gateway.app import Routes
from broker.gateway.relay import Relay
from broker.gateway.settings import GatewaySettings
from broker.runtime.daemon import Daemon
from broker.runtime.errors import ConfigError, SiteError
from broker.runtime.logs import kv
from broker.runtime.mqtt import Publisher

log = logging.getLogger("fogmesh.gateway")


class Gateway(Daemon):
    name, stopped_event = "gateway", "gateway_stopped"

    def __init__(self, settings: GatewaySettings, session: Publisher | None = None) -> None:
        super().__init__(settings, {"requests": 0, "done": 0, "rejected": 0, "error": 0, "cancelled": 0,
                                    "expired": 0, "refused": 0, "unauthorized": 0, "unavailable": 0, "timeout": 0,
                                    "client_gone": 0, "diverged": 0})
        self.settings = settings
        self.keys = settings.api_keys()  # ConfigError before anything starts
        self.relay = Relay(settings, session)
        self.metrics.reconnects(lambda: self.relay.session.reconnects)
        self.metrics.gauge("broker_connected", "1 while the gateway's MQTT session is up",
                           lambda: float(self.relay.connected))
        self.metrics.gauge("requests_in_flight", "Requests waiting for their job's answer",
                           lambda: float(self.relay.in_flight))
        latency = self.metrics.histogram("request_seconds", "HTTP requests by path and status, "
                                         "from the request to its last byte", labels=("path", "http_status"))
        app = Routes(self.relay, self.keys, settings, self.counters, latency).app()
        self.server = uvicorn.Server(uvicorn.Config(
            app, host=settings.bind, port=settings.port, log_config=None, access_log=False, lifespan="off",
            server_header=False, timeout_graceful_shutdown=int(settings.drain_timeout_s),
            # h11 bounds a request's headers (16 KiB); httptools would take any size
            http="h11"))
        self._http: threading.Thread | None = None
        self.port = settings.port
        for name in ("uvicorn", "uvicorn.error"):  # fogmesh logs the requests itself, one line each
            logging.getLogger(name).setLevel(logging.WARNING)

    def start(self) -> None:
        sock = self._listen()
        self.relay.start()
        self._http = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="http", daemon=True)
        self._http.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._http.is_alive() or time.monotonic() > deadline:
                raise SiteError(f"the gateway's HTTP server did not start on {self.url}")
            time.sleep(0.01)
        if self.settings.username and self.settings.username != self.settings.device_id:
            log.warning(kv("gateway_device_not_user", device=self.settings.device_id, user=self.settings.username,
                           detail="fogmesh's ACL lets a user publish prompts only as the device of its own name: "
                                  "the broker will refuse this gateway's prompts (mosquitto closes the connection)"))
        log.info(kv("gateway_online", url=self.url, site=self.settings.site, device=self.settings.device_id,
                    broker=self.relay.session.address.url, api_keys=len(self.keys)))

    def _listen(self) -> socket.socket:
        """The listening socket, bound here so a taken port is a clear error (and port 0 a free one)."""
        family = socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET
        try:
            sock = socket.create_server((self.settings.bind, self.settings.port), family=family, backlog=512)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"gateway.port: cannot listen on {self.settings.bind}:{self.settings.port} ({why}); "
                              "choose another port (--port)") from exc
        self.port = sock.getsockname()[1]
        return sock

    @property
    def url(self) -> str:
        host = f"[{self.settings.bind}]" if ":" in self.settings.bind else self.settings.bind
        return f"http://{host}:{self.port}"

    def ready(self) -> str:
        return f"gateway of site {self.settings.site} on {self.url}/v1"

    def serve(self) -> None:
        while not self._stop.wait(1.0):
            self.alive()
            if self._http is not None and not self._http.is_alive():
                log.error(kv("gateway_http_stopped", detail="the HTTP server stopped on its own"))
                return

    def draining(self) -> str:
        return f"finishing {self.relay.in_flight} request(s)"

    def stop(self) -> None:
        """Stop taking requests, let those in flight finish (up to drain_timeout_s; the rest are
        cancelled as their streams end), then leave the broker."""
        self.server.should_exit = True
        if self._http is not None:
            self._http.join(self.settings.drain_timeout_s + 5)
        self.relay.stop()
