"""Fixtures: a real mosquitto on a free port, real daemons, each test on its own site."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import llama_cpp  # noqa: F401  before anything loads numpy: agents.backends.gpu.load_llama_cpp says why
import pytest

from broker.ops.mosquitto import Mosquitto
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port
from tests.services import Daemon, Device, Ejabberd, wait_for


@contextlib.contextmanager
def private_broker(data_dir: Path) -> Iterator[Mosquitto]:
    """A mosquitto with the development configuration on free ports (MQTT and WebSockets)."""
    broker = Mosquitto(free_port(), data_dir, ws_port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with private_broker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def ejabberd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ejabberd]:
    """A second broker, so that the site tests show fogmesh depends on MQTT 5, not on mosquitto.

    CI sets ``FOGMESH_REQUIRE_EJABBERD=1`` (``make test`` installs Debian's ejabberd): there a
    missing ejabberd fails the run instead of skipping these tests."""
    if Ejabberd.libs() is None:
        if os.environ.get("FOGMESH_REQUIRE_EJABBERD") == "1":
            pytest.fail("ejabberd is not installed (apt-get install ejabberd), and FOGMESH_REQUIRE_EJABBERD=1")
        pytest.skip("ejabberd is not installed (apt-get install ejabberd)")
    server = Ejabberd(free_port(), tmp_path_factory.mktemp("ejabberd")).start()
    yield server
    server.stop()


@pytest.fixture
def broker_url(request: pytest.FixtureRequest) -> str:
    """mosquitto's URL; ejabberd's in a test parametrised with ``any_broker``."""
    kind = getattr(request, "param", "mosquitto")
    return str(request.getfixturevalue(kind).url)


# Apply with @any_broker to run a test against mosquitto and against ejabberd's MQTT 5 broker.
any_broker = pytest.mark.parametrize("broker_url", ["mosquitto", "ejabberd"], indirect=True)


@pytest.fixture
def site_id() -> str:
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def daemons(tmp_path: Path, broker_url: str, site_id: str) -> Iterator[Callable[..., Daemon]]:
    """Start fogmesh daemons for this test's site; all are stopped (or killed) at the end."""
    started: list[Daemon] = []

    def start(kind: str, *extra: str, name: str | None = None, env: dict[str, str] | None = None,
              on_site: bool = True) -> Daemon:
        """``on_site=False`` for a daemon that never talks MQTT (the cloud worker)."""
        args = [kind, *(["--broker", broker_url, "--site", site_id] if on_site else []), *extra]
        if kind == "coordinator" and "--ledger" not in extra:
            args += ["--ledger", str(tmp_path / "ledger.db")]
        d = Daemon(name or kind, args, tmp_path, env).start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.alive():
            d.kill()


@pytest.fixture
def device(broker_url: str, site_id: str) -> Iterator[Device]:
    dev = Device(BrokerAddress.parse(broker_url), site_id)
    yield dev
    dev.close()


def agent_args(agent_id: str, threads: int = 1, slots: int = 1, *extra: str) -> list[str]:
    return ["--agent-id", agent_id, "--threads", str(threads), "--slots", str(slots), *extra]


def wait_online(broker_url: str, site: str, agents: int, timeout_s: float = 60.0) -> None:
    from broker.runtime.client import snapshot

    def ready() -> bool:
        snap = snapshot(BrokerAddress.parse(broker_url), site, settle_s=0.2)
        online = [a for a in snap["agents"].values() if a.get("state") == "online"]
        mesh = snap["mesh"] or {}
        return len(online) >= agents and mesh.get("agents_online", 0) >= agents

    wait_for(ready, timeout_s, what=f"{agents} agents online")


def docker_answers() -> bool:
    """True where a Docker daemon answers, so testcontainers can start LocalStack."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://") or not os.path.exists(host[len("unix://"):]):
        return host.startswith("tcp://")  # a remote daemon: let testcontainers find out
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        try:
            s.connect(host[len("unix://"):])
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"200 OK" in s.recv(256)
        except OSError:
            return False


@pytest.fixture
def sqs_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real SQS-compatible server: LocalStack through testcontainers where Docker answers, else moto's server mode.

    Function-scoped: the cloud tests stop and restart it.
    """
    from cloud_bridge.local import LOCAL_CREDENTIALS, LocalSqs

    for key, value in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    if os.environ.get("FOGMESH_TEST_SQS") != "moto" and docker_answers():
        from testcontainers.localstack import LocalStackContainer

        image = os.environ.get("LOCALSTACK_IMAGE", "localstack/localstack:4.14.0")
        with LocalStackContainer(image).with_services("sqs", "s3") as stack:
            yield stack.get_url()
        return
    server = LocalSqs(free_port(), tmp_path / "moto")
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real chat model file: a copy of the bundled GGUF with Gemma's template written into its metadata
    (``tokenizer.chat_template``), as a model published with its own template has it."""
    import subprocess
    import sys

    from agents.chat import GEMMA
    from agents.model import default_model_path

    folder = tmp_path_factory.mktemp("chat-model")
    template = folder / "gemma.jinja"
    template.write_text(GEMMA)
    out = folder / "gemma-3-270m-chat.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", "--chat-template-file",
                    str(template), str(default_model_path()), str(out)],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out
