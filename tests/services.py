"""Real services for the tests: mosquitto, fogmesh daemons as processes, a device client.

Each test gets its own site id, so tests share one broker without seeing each
other's topics. Where a Docker daemon answers, ``FOGMESH_TEST_DOCKER=1`` could
swap the broker for testcontainers' Mosquitto; here the local package is used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from broker.runtime.client import DeviceClient
from broker.runtime.mqtt import BrokerAddress, Message, Session

ROOT = Path(__file__).resolve().parent.parent
FOGMESH = [sys.executable, "-m", "broker.cli"]


def cli(*args: str, timeout_s: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a ``fogmesh`` command as a user would, its output captured."""
    return subprocess.run([*FOGMESH, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout_s,
                          env={**os.environ, **(env or {})})


def wait_for(cond: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Daemon:
    """A fogmesh daemon in its own process, its output in a log file."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([*FOGMESH, *self.args], cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Listener:
    """Collects every message on some topic filters (an operator's dashboard, say), or whatever of
    them the broker's ACL lets its user read."""

    def __init__(self, address: BrokerAddress, *topics: str, settle_s: float = 0.05) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.session = Session(address, f"test-listen-{secrets.token_hex(4)}", self._collect, persistent=False)
        self.session.start()
        for topic in topics:
            self.session.subscribe(topic, qos=1)
        time.sleep(settle_s)

    def _collect(self, msg: Message) -> None:
        self.messages.append((msg.topic, orjson.loads(msg.payload) if msg.payload else {}))

    def topics(self, wait_s: float = 0.5) -> list[str]:
        """The topics of what arrived, after waiting ``wait_s`` for stragglers."""
        time.sleep(wait_s)
        return [topic for topic, _ in list(self.messages)]

    def close(self) -> None:
        self.session.stop()


class Device(DeviceClient):
    """The device client, with waits that fail the test instead of returning None."""

    def final(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        final = self.wait_final(job_id, timeout_s)
        assert final is not None, f"timed out after {timeout_s:.0f} s waiting for the final message of {job_id}"
        return final

    def tally(self, fault: str, action: str, ids: list[str]) -> dict[str, Any]:
        """One row of docs/reliability.md: of the jobs this device had accepted, how many were
        answered (exactly one final), lost (none) or answered twice; written to
        ``$FOGMESH_RELIABILITY_OUT`` (JSON lines) when it is set."""
        finals = {job: self.finals.get(job, []) for job in ids}
        statuses: dict[str, int] = {}
        for got in finals.values():
            if got:
                statuses[got[0]["status"]] = statuses.get(got[0]["status"], 0) + 1
        row = {"fault": fault, "action": action, "accepted": len(ids),
               "answered": sum(1 for got in finals.values() if len(got) == 1),
               "lost": sum(1 for got in finals.values() if not got),
               "twice": sum(1 for got in finals.values() if len(got) > 1), "statuses": statuses}
        out = os.environ.get("FOGMESH_RELIABILITY_OUT")
        if out:
            with open(out, "ab") as fh:
                fh.write(orjson.dumps(row) + b"\n")
        return row


class TcpProxy:
    """A TCP forwarder between a daemon and the broker, to cut one daemon off the network and back.

    ``cut()`` drops every open connection and refuses new ones until ``restore()``.
    ``hold_replies()`` stops passing what the broker sends (its PUBACKs among it) while the
    daemon's own packets still reach the broker, until the next ``cut()``.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._server = socket.create_server((host, 0))
        self.port = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self.cut_off = False
        self._held = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.target[0]}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.cut_off:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: Any, dst: Any, replies: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if replies and self._held.is_set():
                    continue  # dropped: the daemon never hears it
                dst.sendall(data)
        except OSError:
            pass
        self._drop([src, dst])

    @staticmethod
    def _drop(conns: list[socket.socket]) -> None:
        # shutdown() first: a close() alone neither sends FIN nor wakes the other pump's recv()
        # while that recv() holds the socket, so the broker would only notice at keepalive expiry.
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for s in conns:
            with contextlib.suppress(OSError):
                s.close()

    def hold_replies(self) -> None:
        self._held.set()

    def cut(self) -> None:
        self.cut_off = True
        with self._lock:
            conns, self._open = self._open, []
        self._drop(conns)
        self._held.clear()  # after the drop: nothing held may slip through on the way down

    def restore(self) -> None:
        self.cut_off = False

    def close(self) -> None:
        self.cut()
        self._server.close()


EJABBERD_CONFIG = """# ejabberd's MQTT 5 broker (mod_mqtt) for fogmesh's tests: loopback only, its own config and spool.
hosts: [localhost]
loglevel: warning
log_rotate_count: 0
certfiles: []
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: mod_mqtt
    backlog: 1000
# mod_mqtt always wants a user name; anonymous login takes any name and password.
auth_method: [anonymous]
anonymous_protocol: login_anon
allow_multiple_connections: true
modules:
  mod_mqtt:
    # as fogmesh's mosquitto config: no silent drops for an offline persistent session
    max_queue: unlimited
    session_expiry: 3600
    max_topic_depth: 12
    access_subscribe:
      "#": [{{allow: all}}]
    access_publish:
      "#": [{{allow: all}}]
"""


class Ejabberd:
    """ejabberd 23.01's MQTT 5 broker (Debian's ``ejabberd``), a second broker for the site tests.

    Debian's ``ejabberdctl`` always reads /etc/ejabberd/ejabberd.yml, so the Erlang VM is started
    here as ``ejabberdctl foreground`` would, with a config and spool of our own. Without a node
    name the VM starts no Erlang distribution (no epmd, no distribution port): the only socket it
    opens is the MQTT listener on loopback.
    """

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://fogmesh:fogmesh@127.0.0.1:{self.port}"

    @staticmethod
    def libs() -> str | None:
        """Where Debian put ejabberd's Erlang applications, if it is installed."""
        found = sorted(Path("/usr/lib").glob("*/ejabberd-[0-9]*"))
        return str(found[0].parent) if found and shutil.which("erl") else None

    def start(self, timeout_s: float = 90.0) -> Ejabberd:
        from broker.runtime.proc import wait_port

        (self.data_dir / "spool").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "ejabberd.yml"
        config.write_text(EJABBERD_CONFIG.format(port=self.port))
        env = {**os.environ, "EJABBERD_CONFIG_PATH": str(config), "ERL_LIBS": self.libs() or "",
               "EJABBERD_LOG_PATH": str(self.data_dir / "ejabberd.log"),
               "ERL_CRASH_DUMP": str(self.data_dir / "erl_crash.dump")}
        with (self.data_dir / "erl.log").open("ab") as out:
            self.proc = subprocess.Popen(
                ["erl", "+K", "true", "-noinput", "-noshell", "-mnesia", "dir", f'"{self.data_dir / "spool"}"',
                 "-s", "ejabberd"], cwd=self.data_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        if not wait_port("127.0.0.1", self.port, timeout_s):
            self.stop()
            raise RuntimeError(f"ejabberd did not listen on 127.0.0.1:{self.port}; see {self.data_dir}")
        return self

    def stop(self) -> None:
        from broker.runtime.proc import terminate

        terminate(self.proc, 20)


def mqtt_cli(broker_url: str) -> list[str]:
    """mosquitto_pub / mosquitto_sub arguments for a broker URL (host, port and any user name)."""
    address = BrokerAddress.parse(broker_url)
    login = ["-u", address.username, "-P", address.password or ""] if address.username else []
    return ["-h", address.host, "-p", str(address.port), *login]


class NotifySocket:
    """What systemd would listen on for sd_notify: a datagram socket whose messages we keep."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            self.messages.append(self.sock.recv(4096).decode())

    def has(self, field: str, count: int = 1) -> bool:
        return sum(field in m.split("\n") for m in list(self.messages)) >= count
