"""The OpenAI-compatible gateway, as an application sees it: the official ``openai`` client against
the front door of a real site (`fogmesh up`: mosquitto, the coordinator, an agent with the real
model, the gateway), plain HTTP where the client hides what matters (headers, a dropped
connection), and the gateway alone against a broker that goes away."""

from __future__ import annotations

import http.client
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import openai
import orjson
import pytest

from broker.gateway.api import Sent
from broker.gateway.errors import Diverged
from broker.ops.security import acl_rules
from broker.runtime.client import snapshot
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port
from schemas.messages import Chunk, Final
from schemas.topics import Topics
from tests.conftest import agent_args, private_broker, wait_online
from tests.services import FOGMESH, ROOT, Daemon, Listener, NotifySocket, cli, wait_for

KEY = f"sk-fogmesh-test-{secrets.token_hex(8)}"


@dataclass
class FrontDoor:
    """A site started by `fogmesh up` with its gateway; what its banner said."""

    proc: subprocess.Popen[bytes]
    log: Path
    base_url: str
    broker: str
    site: str
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=120)
        self.clients.append(client)
        return client

    def address(self) -> tuple[str, int]:
        found = re.match(r"http://([^:/]+):(\d+)", self.base_url)
        assert found is not None, self.base_url
        return found[1], int(found[2])

    def http(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(*self.address(), timeout=60)

    def results(self) -> Listener:
        """Every message on the gateway's result topics (its device id is `gateway`)."""
        return Listener(BrokerAddress.parse(self.broker), Topics(self.site).results("gateway"), settle_s=0.2)

    def model(self) -> str:
        return agents_model(self.broker, self.site)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoor]:
    tmp = tmp_path_factory.mktemp("gateway-site")
    keys = tmp / "gateway.keys"
    keys.write_text(f"# the test's key\n{KEY}\n")
    config = tmp / "fogmesh.toml"
    config.write_text(f'[gateway]\napi_keys_file = "{keys}"\nanswer_timeout_s = 120.0\n')
    name, port = f"gw{secrets.token_hex(3)}", free_port()
    log = tmp / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*FOGMESH, "up", "--agents", "1", "--site", name, "--port", str(free_port()),
                                 "--http-port", str(port), "--config", str(config)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "FOGMESH_STATE_DIR": str(tmp / "state")})
    try:
        banner = wait_for(lambda: re.search(r"OpenAI API\s+(\S+)", log.read_text()) if proc.poll() is None else
                          pytest.fail(log.read_text()[-3000:]), 150, what="fogmesh up's banner")
        broker = re.search(r"broker\s+(mqtt://\S+)", log.read_text())
        assert broker is not None
        yield FrontDoor(proc, log, banner[1], broker[1], name)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(90)


@pytest.fixture(autouse=True)
def close_clients(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "site" in request.fixturenames:
        door = request.getfixturevalue("site")
        while door.clients:
            door.clients.pop().close()


# ---------------------------------------------------------------------- an application's view


@pytest.mark.slow
def test_fogmesh_up_prints_its_front_door_and_models_lists_the_agents_model(site):
    assert site.base_url.endswith(f":{site.base_url.rsplit(':', 1)[1]}") and site.base_url.endswith("/v1")
    models = site.client().models.list()
    assert [m.id for m in models.data] == [site.model()]
    assert models.data[0].model_extra["fogmesh"] == {"tier": "edge", "agents": ["agent-1"], "chat": True}
    health = site.http()
    health.request("GET", "/health")
    answer = health.getresponse()
    assert answer.status == 200
    assert orjson.loads(answer.read()) == {"status": "ok", "broker": "connected", "site": site.site,
                                           "coordinator": "online", "agents_online": 1}
    health.close()


@pytest.mark.slow
def test_a_streamed_chat_completion_comes_in_pieces_that_add_up_to_the_jobs_final_answer(site):
    results = site.results()
    try:
        stream = site.client().chat.completions.create(
            model=site.model(), messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
            max_tokens=40, stream=True, stream_options={"include_usage": True}, temperature=0)
        chunks = list(stream)
        job = chunks[0].id
        final = wait_for(lambda: next((body for topic, body in results.messages
                                       if topic.endswith(f"/{job}") and body.get("final")), None), 10,
                         what="the job's final on MQTT")
    finally:
        results.close()
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert job.startswith("chatcmpl-") and {c.id for c in chunks} == {job}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(pieces) > 1, "the answer came in one piece: nothing was streamed"
    assert "".join(pieces) == final["text"] and final["status"] == "done"
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason == final["finish_reason"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == final["usage"]["completion_tokens"] > 0


VERDICT = {"type": "object", "additionalProperties": False, "required": ["level", "reason"],
           "properties": {"level": {"enum": ["ok", "warn", "alarm"]},
                          "reason": {"type": "string", "minLength": 1, "maxLength": 40}}}


@pytest.mark.slow
def test_a_chat_completion_with_a_json_schema_answers_json_that_follows_it(site):
    answer = site.client().chat.completions.create(
        model=site.model(), max_tokens=120,
        messages=[{"role": "system", "content": "You rate server room readings."},
                  {"role": "user", "content": "The server room is at 31 degrees. Rate it."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True}})
    choice = answer.choices[0]
    verdict = orjson.loads(choice.message.content or "")
    jsonschema.validate(verdict, VERDICT)
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.model_extra["fogmesh"]["served_by"] == {"tier": "edge", "node": "agent-1"}


@pytest.mark.slow
def test_a_completion_takes_fogmesh_fields_and_ignores_harmless_openai_ones(site):
    answer = site.client().completions.create(
        model=site.model(), prompt="MQTT is a protocol that", max_tokens=8, user="someone", n=1,
        frequency_penalty=0, presence_penalty=0, extra_body={"deadline_ms": 60_000, "priority": 7,
                                                             "privacy": "edge-only"})
    choice = answer.choices[0]
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-") and choice.text.strip()
    assert answer.usage is not None and answer.usage.completion_tokens <= 8
    assert choice.finish_reason in ("stop", "length")
    assert choice.finish_reason == "stop" or answer.usage.completion_tokens == 8
    # one log line per request: its job, how it ended, how long it took
    line = wait_for(lambda: re.search(rf"event=request .*job={answer.id} http=200 status=done ms=[\d.]+",
                                      site.log.read_text()), 5, what="the request's log line")
    assert "path=/v1/completions" in line[0]


@pytest.mark.slow
def test_a_wrong_or_missing_key_gets_401_in_openais_error_shape(site):
    with pytest.raises(openai.AuthenticationError) as caught:
        site.client(api_key="sk-not-the-key").models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    conn = site.http()
    conn.request("POST", "/v1/chat/completions", orjson.dumps({"model": "m", "messages": []}),
                 {"Content-Type": "application/json"})
    answer = conn.getresponse()
    error = orjson.loads(answer.read())["error"]
    conn.close()
    assert answer.status == 401 and answer.getheader("WWW-Authenticate") == "Bearer"
    assert error["code"] == "missing_api_key" and error["type"] == "authentication_error" and "param" in error


@pytest.mark.slow
def test_bad_requests_get_400_with_fogmeshs_code_from_the_gateway_or_the_coordinator(site):
    client, model = site.client(), site.model()
    ask = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**ask, temperature=2.5)
    assert (caught.value.code, caught.value.param) == ("invalid_temperature", "temperature")
    for stream in (False, True):  # the coordinator's rejection, relayed before any event of a stream
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**{**ask, "model": "no-such-model"}, stream=stream)
        assert caught.value.code == "unknown_model" and model in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:  # an OpenAI field that would change the answer
        client.chat.completions.create(**ask, n=2)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "n")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**ask, max_tokens=100_000)
    assert (caught.value.code, caught.value.param) == ("max_tokens_too_large", "max_tokens")


@pytest.mark.slow
def test_malformed_and_oversized_bodies_are_refused_without_a_job(site):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body, status, code in ((b'{"model": "m", "messages": [', 400, "not_json"), (b"[1]", 400, "not_object"),
                               (b'{"messages": [{"role": "user", "content": "' + b"x" * 1_100_000 + b'"}]}', 413,
                                "too_large")):
        conn = site.http()
        conn.request("POST", "/v1/chat/completions", body, auth)
        answer = conn.getresponse()
        assert (answer.status, orjson.loads(answer.read())["error"]["code"]) == (status, code)
        conn.close()
    # a client that leaves halfway through its body: no job, no crash, one line saying so
    with socket.create_connection(site.address()) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        time.sleep(0.3)
    wait_for(lambda: re.search(r"event=request method=POST path=/v1/completions job=cmpl-\w+ http=499 "
                               r"status=client_gone", site.log.read_text()), 5, what="the abandoned request's line")
    assert "Exception in ASGI application" not in site.log.read_text()


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_cancels_its_job(site):
    results = site.results()
    try:
        body = orjson.dumps({"model": site.model(), "stream": True, "max_tokens": 600,
                             "messages": [{"role": "user", "content": "Write a very long story about a lighthouse."}]})
        sock = socket.create_connection(site.address(), timeout=60)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        received = b""
        while b'"content":"' not in received.replace(b'"content":""', b""):  # one piece of the answer
            received += sock.recv(65536)
            assert received, "the gateway closed the stream"
        job = re.search(rb'"id":"(chatcmpl-\w+)"', received)
        assert received.startswith(b"HTTP/1.1 200") and job is not None
        sock.close()
        closed = time.monotonic()
        final = wait_for(lambda: next((body for topic, body in results.messages
                                       if topic.endswith(f"/{job[1].decode()}") and body.get("final")), None), 15,
                         what="the job's final after the client left")
    finally:
        results.close()
    assert final["status"] == "cancelled" and final["finish_reason"] == "cancelled"
    assert time.monotonic() - closed < 5
    explained = cli("explain", "--broker", site.broker, "--site", site.site, job[1].decode())
    assert "cancelled" in explained.stdout, explained.stdout + explained.stderr


@pytest.mark.slow
@pytest.mark.fault
def test_a_stream_whose_agent_dies_goes_on_from_where_it_was_without_repeating_itself(daemons, broker_url, site_id,
                                                                                       tmp_path):
    daemons("coordinator")
    agents = {name: daemons("agent", *agent_args(name), name=name) for name in ("a1", "a2")}
    port = free_port()
    gateway = daemons("gateway", "--port", str(port))
    wait_online(broker_url, site_id, 2)
    wait_for(lambda: "gateway_online" in gateway.log(), 30, what="the gateway up")
    results = Listener(BrokerAddress.parse(broker_url), Topics(site_id).results("gateway"), settle_s=0.2)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    try:
        # greedy and seeded: the agent that takes the job over writes the same answer again
        stream = client.completions.create(model=agents_model(broker_url, site_id), stream=True, max_tokens=160,
                                           temperature=0, seed=7,
                                           prompt="Count from one to one thousand in words: one, two, three, four,")
        pieces: list[str] = []
        for event in stream:
            pieces.append(event.choices[0].text)
            if len(pieces) == 3:
                first = wait_for(lambda: next((n for n, d in agents.items() if "job_accepted job=" in d.log()), None))
                agents[first].kill()
        job = event.id
        final = wait_for(lambda: next((body for topic, body in results.messages
                                       if topic.endswith(f"/{job}") and body.get("final")), None), 10,
                         what="the job's final on MQTT")
        restarted = [body for topic, body in results.messages if topic.endswith(f"/{job}") and body.get("attempt") == 2]
    finally:
        results.close()
        client.close()
    assert final["status"] == "done" and final["served_by"]["node"] != first
    assert restarted, "the job never restarted on the other agent: nothing was tested"
    assert "".join(pieces) == final["text"]
    assert event.choices[0].finish_reason == final["finish_reason"]


def agents_model(broker_url: str, site: str) -> str:
    snap = snapshot(BrokerAddress.parse(broker_url), site)
    return str(next(iter(snap["agents"].values()))["models"][0]["name"])


# ---------------------------------------------------------------------- the gateway alone


def test_without_keys_the_gateway_will_not_listen_beyond_loopback():
    out = cli("gateway", "--broker", "mqtt://127.0.0.1:1", "--bind", "0.0.0.0", "--port", "0")
    assert out.returncode == 1 and "api_keys_file" in out.stderr and "bind 127.0.0.1" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_broker_that_is_down_at_start_is_named(tmp_path):
    out = cli("gateway", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--port", "0")
    assert out.returncode == 1 and "nothing listens on 127.0.0.1" in out.stderr and "Traceback" not in out.stderr


def test_a_broker_lost_mid_request_answers_503_and_health_says_so(tmp_path, site_id):
    port = free_port()
    with private_broker(tmp_path / "mosquitto") as broker:
        gateway = Daemon("gateway", ["gateway", "--broker", broker.url, "--site", site_id, "--port", str(port)],
                         tmp_path, {"FOGMESH_GATEWAY_BROKER_GRACE_S": "1"}).start()
        try:
            wait_for(lambda: "gateway_online" in gateway.log() or not gateway.alive(), 30, what="the gateway up")
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
            prompts = Listener(BrokerAddress.parse(broker.url), Topics(site_id).prompts("gateway"))
            # no coordinator: the prompt waits in the broker, and the request with it
            waiting = subprocess.Popen([sys.executable, "-c", (
                "import openai, sys\n"
                f"c = openai.OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='none', max_retries=0)\n"
                "try:\n c.completions.create(model='m', prompt='hello')\n"
                "except openai.APIStatusError as e:\n print(e.status_code, e.code)\n")],
                cwd=ROOT, stdout=subprocess.PIPE, text=True)
            wait_for(lambda: prompts.messages, 30, what="the request's prompt at the broker")
            prompts.close()
            broker.stop()
            assert waiting.communicate(timeout=30)[0].split() == ["503", "broker_unavailable"]
            with pytest.raises(openai.InternalServerError) as caught:
                client.completions.create(model="m", prompt="hello")
            assert caught.value.status_code == 503 and caught.value.code == "broker_unavailable"
            health = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            health.request("GET", "/health")
            answer = health.getresponse()
            assert answer.status == 503 and orjson.loads(answer.read())["broker"] == "disconnected"
            health.close()
            client.close()
        finally:
            assert gateway.stop() == 0, gateway.log()[-2000:]
    assert re.search(r"event=gateway_stopped requests=2 .*unavailable=2", gateway.log()), gateway.log()[-2000:]


def test_a_request_past_answer_timeout_gets_504_and_its_job_is_cancelled(tmp_path, site_id):
    port = free_port()
    with private_broker(tmp_path / "mosquitto") as broker:
        gateway = Daemon("gateway", ["gateway", "--broker", broker.url, "--site", site_id, "--port", str(port)],
                         tmp_path, {"FOGMESH_GATEWAY_ANSWER_TIMEOUT_S": "1.5"}).start()
        wait_for(lambda: "gateway_online" in gateway.log() or not gateway.alive(), 30, what="the gateway up")
        cancels = Listener(BrokerAddress.parse(broker.url), Topics(site_id).cancel("gateway"))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        try:
            with pytest.raises(openai.APIStatusError) as caught:  # no coordinator: nobody answers
                client.completions.create(model="m", prompt="hello")
            assert caught.value.status_code == 504 and caught.value.code == "timeout"
            job = re.search(r"job=(cmpl-\w+) http=504 status=timeout", gateway.log())
            assert job is not None, gateway.log()[-2000:]
            assert wait_for(lambda: cancels.messages, 5, what="the job's cancel") == [
                (Topics(site_id).cancel("gateway"), {"id": job[1]})]
        finally:
            cancels.close()
            client.close()
            assert gateway.stop() == 0, gateway.log()[-2000:]


def test_the_gateway_tells_systemd_ready_alive_and_stopping(tmp_path, site_id):
    notify = NotifySocket(tmp_path / "gateway.notify")
    with private_broker(tmp_path / "mosquitto") as broker:
        gateway = Daemon("gateway", ["gateway", "--broker", broker.url, "--site", site_id, "--port", "0"], tmp_path,
                         {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}).start()
        wait_for(lambda: notify.has("READY=1"), 30, what="READY=1 from the gateway")
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert f"MAINPID={gateway.pid}" in ready and re.search(r"STATUS=gateway of site \S+ on http://127.0.0.1:\d+/v1",
                                                               ready), ready
        wait_for(lambda: notify.has("WATCHDOG=1", 2), 10, what="watchdog pings")
        assert gateway.stop() == 0 and notify.has("STOPPING=1"), gateway.log()[-2000:]


def test_config_check_names_a_gateway_open_to_the_network_without_keys(tmp_path):
    cfg = tmp_path / "fogmesh.toml"
    cfg.write_text('[gateway]\nbind = "0.0.0.0"\n')
    out = cli("config", "check", str(cfg))
    assert out.returncode == 1 and f"{cfg}:line 2: gateway.bind:" in out.stderr and "api_keys_file" in out.stderr
    cfg.write_text(f'[gateway]\nbind = "0.0.0.0"\napi_keys_file = "{tmp_path / "missing.keys"}"\n')
    out = cli("config", "check", str(cfg))
    assert out.returncode == 1 and "gateway.api_keys_file" in out.stderr and "No such file" in out.stderr


# ---------------------------------------------------------------------- the parts


def test_the_gateway_role_asks_only_as_itself_and_reads_the_statuses():
    t = Topics("s")
    rules = acl_rules(t, "gw-1", "gateway")
    assert [topic for access, topic in rules if access == "write"] == ["fogmesh/s/prompts/gw-1",
                                                                       "fogmesh/s/cancel/gw-1"]
    assert {topic for access, topic in rules if access == "read"} == {
        "fogmesh/s/results/gw-1/#", t.agent_status(), t.coordinator_status, t.bridge_status, t.mesh_status,
        t.mesh_history}  # not mesh/jobs: every live job's device and job id is for operators


def chunk(seq: int, text: str, attempt: int = 1) -> Chunk:
    return Chunk(job="j", seq=seq, text=text, attempt=attempt)


def test_a_restarted_answer_sends_only_what_extends_the_text_already_sent():
    sent = Sent()
    assert [sent.chunk(chunk(0, "The pump ")), sent.chunk(chunk(1, "is ")), sent.chunk(chunk(1, "is "))] == [
        "The pump ", "is ", ""]  # the last: a QoS 1 duplicate
    # another agent took the job over: its answer starts again from the beginning
    assert [sent.chunk(chunk(0, "The pu", 2)), sent.chunk(chunk(1, "mp is ", 2)), sent.chunk(chunk(2, "fine.", 2))
            ] == ["", "", "fine."]
    assert sent.chunk(chunk(3, "late", 1)) == ""  # the earlier attempt is over
    assert sent.final(Final(job="j", status="done", text="The pump is fine. Really.")) == " Really."
    assert sent.text == "The pump is fine. Really."


def test_a_restarted_answer_that_differs_from_what_was_sent_is_an_error_not_a_mixture():
    sent = Sent()
    sent.chunk(chunk(0, "The pump is fine"))
    with pytest.raises(Diverged):
        sent.chunk(chunk(0, "The valve", 2))
    shorter = Sent()
    shorter.chunk(chunk(0, "The pump is fine"))
    with pytest.raises(Diverged):
        shorter.final(Final(job="j", status="done", text="The pump"))

