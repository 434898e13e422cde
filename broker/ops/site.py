"""``fogmesh up``: a whole site on one machine, each daemon its own process, as on real hardware."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agents.settings import AgentSettings
from broker.gateway.settings import GatewaySettings
from broker.ops.config import load
from broker.ops.mosquitto import Mosquitto
from broker.runtime.client import snapshot
from broker.runtime.errors import SiteError
from broker.runtime.logs import kv
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port, own_session, wait_port
from broker.runtime.settings import state_dir
from cloud_bridge.local import LocalSqs, local_env

log = logging.getLogger("fogmesh.site")
CURRENT = "current-site.json"
RESTART_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # after 1, 2, ... quick deaths in a row, as systemd would back off
STEADY_S = 60.0  # a process that ran this long starts the backoff afresh when it dies


@dataclass
class SiteSpec:
    site: str = "site"
    agents: int = 2
    port: int | None = None
    broker: str | None = None  # an existing broker; None starts a private mosquitto
    model: str = ""
    slots: int = 1
    threads: int = 0  # per process that runs a model; 0: the cores shared out (``model_threads``)
    policy: str = "deadline"
    data_dir: Path | None = None
    log_format: str = "kv"
    log_to_files: bool = False  # daemons' logs to <data dir>/logs/<name>.log instead of the console
    local_cloud: bool = False  # a local SQS-compatible server, a bridge and a cloud worker
    config: str | None = None  # a fogmesh.toml every daemon reads (else $FOGMESH_CONFIG or /etc/fogmesh)
    http_port: int | None = 0  # the OpenAI-compatible gateway's port: None picks one (8000 if free), 0 runs none


def record_current(broker: str, site: str, ws: str | None = None) -> Path:
    """Where ``fogmesh ask``, ``status`` and ``dashboard`` find the site by default."""
    path = state_dir() / CURRENT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"broker": broker, "site": site, "ws": ws, "pid": os.getpid()}))
    return path


def current() -> dict[str, str]:
    try:
        return orjson.loads((state_dir() / CURRENT).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


class Site:
    def __init__(self, spec: SiteSpec) -> None:
        self.spec = spec
        self.data_dir = spec.data_dir or state_dir() / spec.site
        self.broker: Mosquitto | None = None
        self.sqs: LocalSqs | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = spec.broker or ""
        self.http: tuple[str, int] | None = None  # where the gateway listens, when the site runs one
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self._started_at: dict[str, float] = {}
        self._deaths: dict[str, int] = {}  # quick deaths in a row
        self._restart_at: dict[str, float] = {}
        self._lock_file: Any = None

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        """Start a daemon in a session of its own: Ctrl-C in the terminal reaches ``fogmesh up`` only,
        which then stops the site in order instead of every process dying at once."""
        self._commands[name] = (args, env)
        cmd = [sys.executable, "-m", "broker.cli", *args]
        if self.spec.log_to_files:
            log_dir = self.data_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            with (log_dir / f"{name}.log").open("ab") as out:
                self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                                    preexec_fn=own_session)
        else:
            self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env, preexec_fn=own_session)
        self._started_at[name] = time.monotonic()
        log.info(kv("process_started", name=name, pid=self.procs[name].pid))

    def lock(self) -> None:
        """One ``fogmesh up`` per site on a machine: a second would share the first one's ledger and
        broker store, adopt its agents and overwrite the current-site record."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        path = self.data_dir / "site.lock"
        self._lock_file = path.open("a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            held = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise SiteError(f"site {self.spec.site!r} is already up on this machine ({held}); stop it first, or "
                            "start another site with --site NAME") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"fogmesh up pid {os.getpid()}")
        self._lock_file.flush()

    def start(self, ready_timeout_s: float = 120.0) -> None:
        p = self.spec
        self.lock()
        if p.port and not p.broker and free_port(p.port) != p.port:
            raise SiteError(f"port {p.port} is taken on 127.0.0.1; choose another --port, or leave it out and "
                            "fogmesh up takes 1883 or a free one")
        if not p.broker:
            port = free_port(p.port or 1883)
            ws_port = free_port(9001 if port == 1883 else None)
            self.broker = Mosquitto(port, self.data_dir / "mosquitto", ws_port=ws_port)
            self.broker.start()
            self.url = self.broker.url
        common = ["--broker", self.url, "--site", p.site, "--log-format", p.log_format,
                  *(["--config", p.config] if p.config else [])]
        # One metrics port each: N agents reading one [agent] metrics_port would fight over it
        # (and the site stopped); agent i gets that port + i - 1.
        agent_metrics = load(AgentSettings, "agent", p.config).metrics_port
        self._spawn("coordinator", ["coordinator", *common, "--policy", p.policy,
                                    "--ledger", str(self.data_dir / "ledger.db")])
        threads = p.threads or model_threads(os.cpu_count() or 1, p.agents, p.local_cloud)
        for i in range(1, p.agents + 1):
            args = ["agent", *common, "--agent-id", f"agent-{i}", "--threads", str(threads),
                    "--slots", str(p.slots)]
            if p.model:
                args += ["--model", p.model]
            if agent_metrics:
                args += ["--metrics-port", str(agent_metrics + i - 1)]
            self._spawn(f"agent-{i}", args)
        if p.http_port != 0:
            self._start_gateway(common)
        if p.local_cloud:
            self.sqs = LocalSqs(free_port(), self.data_dir / "cloud")
            self.sqs.start()
            env = local_env()
            # one worker process, one job at a time: the scheduler predicts the cloud's queue from it
            self._spawn("bridge", ["bridge", *common, "--endpoint-url", self.sqs.url,
                                   "--outbox", str(self.data_dir / "outbox.db")],
                        {**env, "FOGMESH_BRIDGE_CLOUD_WORKERS": "1"})
            self._spawn("cloud-worker", ["cloud-worker", "--endpoint-url", self.sqs.url, "--threads", str(threads),
                                         *(["--config", p.config] if p.config else []),
                                         "--log-format", p.log_format, *(["--model", p.model] if p.model else [])],
                        env)
        record_current(self.url, p.site, self.broker.ws_url if self.broker else None)
        self.wait_ready(ready_timeout_s)

    def _start_gateway(self, common: list[str]) -> None:
        """The OpenAI-compatible front door, with the [gateway] settings of the config file; a key file
        that cannot be used, or no key on a public address, stops `fogmesh up` before it starts."""
        gateway = load(GatewaySettings, "gateway", self.spec.config)
        gateway.api_keys()
        port = self.spec.http_port or free_port(8000, "127.0.0.1" if gateway.loopback() else gateway.bind)
        self._spawn("gateway", ["gateway", *common, "--port", str(port)])
        self.http = ("127.0.0.1" if gateway.bind in ("0.0.0.0", "::", "localhost") else gateway.bind, port)

    @property
    def http_url(self) -> str:
        """The gateway's base URL for OpenAI clients ('' without one)."""
        if self.http is None:
            return ""
        host, port = self.http
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        address = BrokerAddress.parse(self.url)
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SiteError(f"{name} exited with status {proc.returncode} while the site was starting")
            snap = snapshot(address, self.spec.site, settle_s=0.3)
            online = [a for a in snap["agents"].values() if a.get("state") == "online"]
            coordinator = snap["coordinator"] or {}
            bridge_ok = not self.spec.local_cloud or (snap["bridge"] or {}).get("reachable")
            http_ok = self.http is None or wait_port(*self.http, 0.1)
            if len(online) >= self.spec.agents and coordinator.get("state") == "online" and bridge_ok and http_ok:
                return
            time.sleep(0.2)
        raise SiteError(f"the site was not ready within {timeout_s:.0f} s; see the logs above")

    def describe(self) -> str:
        lines = [f"fogmesh site {self.spec.site!r} is up", f"  broker       {self.url}"
                 + (f"  (mosquitto pid {self.broker.proc.pid}, config {self.broker.config})"
                    if self.broker and self.broker.proc else "  (existing)")]
        if self.broker and self.broker.ws_url:
            lines.append(f"  websockets   {self.broker.ws_url}  (for the web dashboard)")
        for name, proc in self.procs.items():
            where = f"  log {self.data_dir / 'logs' / (name + '.log')}" if self.spec.log_to_files else ""
            lines.append(f"  {name:<12} pid {proc.pid}{where}")
        if self.sqs:
            lines.append(f"  local SQS    {self.sqs.url}  (moto server mode)")
        if self.http_url:
            lines.append(f"  OpenAI API   {self.http_url}  (base_url for OpenAI clients; docs/gateway.md)")
        lines += [f"  prompts      fogmesh/{self.spec.site}/prompts/<device_id>",
                  f"  results      fogmesh/{self.spec.site}/results/<device_id>/<job_id>",
                  "  try:         fogmesh ask \"MQTT is a protocol that\"     fogmesh status --watch"
                  + ("     fogmesh dashboard" if self.broker and self.broker.ws_url else "")]
        return "\n".join(lines)

    def wait(self, stop: threading.Event) -> int:
        """Supervise the site until ``stop`` is set, as systemd's ``Restart=on-failure`` would on a
        gateway: a process that dies (the broker and the local SQS server included) is logged and
        started again after a backoff, and the rest of the site keeps serving meanwhile."""
        while not stop.wait(0.25):
            self.supervise(time.monotonic())
        return 0

    def _children(self) -> dict[str, subprocess.Popen[bytes] | None]:
        children: dict[str, subprocess.Popen[bytes] | None] = {}
        if self.broker:
            children["mosquitto"] = self.broker.proc
        if self.sqs:
            children["local-sqs"] = self.sqs.proc
        return {**children, **self.procs}

    def supervise(self, now: float) -> None:
        """One round: note the dead, restart those whose backoff is over."""
        for name, proc in self._children().items():
            if proc is None or proc.poll() is None or name in self._restart_at:
                continue
            quick = now - self._started_at.get(name, 0.0) < STEADY_S
            self._deaths[name] = self._deaths.get(name, 0) + 1 if quick else 1
            delay = RESTART_DELAYS_S[min(self._deaths[name], len(RESTART_DELAYS_S)) - 1]
            self._restart_at[name] = now + delay
            log.error(kv("process_died", name=name, pid=proc.pid, status=proc.returncode, restart_in_s=delay,
                         deaths_in_a_row=self._deaths[name]))
        for name, when in sorted(self._restart_at.items(), key=lambda item: item[1]):
            if when <= now:
                del self._restart_at[name]
                self._restart(name, now)

    def _restart(self, name: str, now: float) -> None:
        try:
            if name == "mosquitto" and self.broker:
                self.broker.start()  # same ports and persistence: sessions and retained statuses come back
            elif name == "local-sqs" and self.sqs:
                self.sqs.start()
                # moto keeps its queues in memory: the bridge and the worker must create them again
                for dependent in ("bridge", "cloud-worker"):
                    proc = self.procs.get(dependent)
                    if proc and proc.poll() is None and dependent not in self._restart_at:
                        proc.terminate()
            else:
                self._spawn(name, *self._commands[name])
        except SiteError as exc:
            self._restart_at[name] = now + RESTART_DELAYS_S[-1]
            log.error(kv("process_restart_failed", name=name, detail=str(exc), retry_in_s=RESTART_DELAYS_S[-1]))
            return
        self._started_at[name] = now
        log.warning(kv("process_restarted", name=name, pid=self._children()[name].pid))  # type: ignore[union-attr]

    def stop(self, timeout_s: float = 40.0) -> None:
        """The gateway first (its requests in flight finish while the agents still run), then the agents
        and the cloud path (they drain), then the coordinator, then the brokers."""
        agents = [n for n in self.procs if n not in ("coordinator", "gateway")]
        deadline = time.monotonic() + timeout_s
        for group in ([n for n in self.procs if n == "gateway"], agents,
                      [n for n in self.procs if n == "coordinator"]):
            for name in group:
                if self.procs[name].poll() is None:
                    self.procs[name].send_signal(signal.SIGTERM)
            for name in group:
                proc = self.procs[name]
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning(kv("process_killed", name=name, reason="did not stop in time"))
                    proc.kill()
                    proc.wait()
        if self.broker:
            self.broker.stop()
        if self.sqs:
            self.sqs.stop()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the site's lock
            self._lock_file = None
        log.info(kv("site_stopped", site=self.spec.site))


def model_threads(cores: int, agents: int, local_cloud: bool) -> int:
    """Threads for each process that runs a model on this machine: the agents and, with
    ``--local-cloud``, the cloud worker share the cores. Giving each cores / agents threads
    oversubscribed them: an agent calibrated at 8.8 tokens/s decoded at 0.63 beside the worker."""
    return max(1, cores // max(agents + (1 if local_cloud else 0), 1))
