"""A site broker from `fogmesh broker certs` + `fogmesh broker config`: TLS, passwords, an ACL by role."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from broker.ops.mosquitto import Mosquitto
from broker.ops.security import acl_rules, render_acl
from broker.runtime.errors import BrokerUnavailable
from broker.runtime.mqtt import BrokerAddress, Session
from broker.runtime.proc import free_port
from schemas.topics import Topics
from tests.services import ROOT, Daemon, Device, Listener, cli, wait_for

SITE = "secure"
USERS = {"coordinator": "coordinator", "agent-1": "agent", "bridge": "bridge", "sensor-1": "device",
         "ha": "homeassistant",
         "sensor-2": "device", "dash": "dashboard", "ops": "operator"}


class SecureSite:
    def __init__(self, out: Path, broker: Mosquitto) -> None:
        self.out = out
        self.broker = broker
        self.ca = str(out / "certs" / "ca.crt")

    def password_file(self, user: str) -> str:
        return str(self.out / "credentials" / f"{user}.password")

    def address(self, user: str | None, tls: bool = True, password: str | None = None) -> BrokerAddress:
        pw = password if password is not None else (Path(self.password_file(user)).read_text().strip()
                                                    if user else None)
        return BrokerAddress(host="127.0.0.1", port=self.broker.port, tls=tls, username=user, password=pw,
                             ca_file=self.ca if tls else None)

    def flags(self, user: str) -> list[str]:
        return ["--broker", self.broker.url, "--site", SITE, "--username", user,
                "--password-file", self.password_file(user), "--ca-file", self.ca]

    def pub(self, user: str, topic: str, payload: str, retain: bool = False) -> str:
        """mosquitto_pub as ``user``; its debug output (the PUBACK's reason code)."""
        cmd = ["mosquitto_pub", "-d", "-V", "mqttv5", "-q", "1", "-h", "127.0.0.1", "-p", str(self.broker.port),
               "--cafile", self.ca, "-u", user, "-P", Path(self.password_file(user)).read_text().strip(),
               "-t", topic, "-m", payload, *(["-r"] if retain else [])]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureSite]:
    out = tmp_path_factory.mktemp("broker")
    port, ws_port = free_port(), free_port()
    run = [str(ROOT / ".venv" / "bin" / "fogmesh") if (ROOT / ".venv" / "bin" / "fogmesh").exists() else "fogmesh"]
    subprocess.run([*run, "broker", "certs", "--out", str(out / "certs"), "--host", "localhost",
                    "--host", "127.0.0.1"], check=True, capture_output=True)
    users = [f"--user={name}={role}" for name, role in USERS.items()]
    subprocess.run([*run, "broker", "config", "--site", SITE, "--out", str(out), "--data-dir", str(out / "data"),
                    "--bind", "127.0.0.1", "--tls-port", str(port), "--ws-port", str(ws_port), *users],
                   check=True, capture_output=True)
    broker = Mosquitto(port, out / "data", config=out / "mosquitto.conf", ws_port=ws_port)
    broker.start()
    yield SecureSite(out, broker)
    broker.stop()


def test_every_role_gets_only_its_own_topics():
    t = Topics("s")
    device = acl_rules(t, "d1", "device")
    assert device == [("write", "fogmesh/s/prompts/d1"), ("write", "fogmesh/s/cancel/d1"),
                      ("read", "fogmesh/s/results/d1/#")]
    assert all(access == "read" for access, _ in acl_rules(t, "x", "dashboard"))
    assert not any("cloud" in topic for role in ("device", "agent", "dashboard", "operator")
                   for _, topic in acl_rules(t, "x", role))
    assert not any(topic.endswith("/assign") and access == "write" for role in ("device", "agent", "bridge")
                   for access, topic in acl_rules(t, "x", role))
    # each agent's Home Assistant discovery topics are its own, whatever its id looks like
    nodes = {topic.split("/")[2]  # homeassistant/<platform>/<node>/...
             for site, agent in (("a", "b_c"), ("a_b", "c"), ("a", "edge.1"), ("a", "edge_1"), ("a", "edge-1"))
             for access, topic in acl_rules(Topics(site), agent, "agent") if topic.startswith("homeassistant/")}
    assert len(nodes) == 5
    acl = render_acl("s", {"d1": "device", "gw": "coordinator"})
    assert "pattern" not in acl and "user d1\n" in acl and "user gw\n" in acl
    # an operator may clear agents' statuses (`fogmesh forget`) and the discovery of this site's agents only
    operator = acl_rules(t, "ops", "operator", agents=["edge-1"])
    assert ("write", "fogmesh/s/agents/+/status") in operator
    assert [topic for access, topic in operator if topic.startswith("homeassistant/")] == [
        "homeassistant/sensor/fogmesh_s_edge-1/+/config", "homeassistant/device/fogmesh_s_edge-1/config"]
    acl = render_acl("s", {"ops": "operator", "edge-1": "agent", "edge-2": "agent", "d1": "device"})
    assert "topic write homeassistant/device/fogmesh_s_edge-2/config" in acl.split("user ops\n")[1]
    assert not any(topic == "homeassistant/#" or topic.startswith("homeassistant/+")
                   for _, topic in operator)


def test_anonymous_plaintext_and_wrong_passwords_are_refused(secure):
    for address in (secure.address(None), secure.address("sensor-1", password="wrong"),
                    secure.address("sensor-1", tls=False)):
        session = Session(address, f"test-{secrets.token_hex(3)}", lambda m: None, persistent=False)
        with pytest.raises(BrokerUnavailable):
            session.start(timeout_s=3)
    # the right password over TLS connects
    ok = Session(secure.address("sensor-1"), "test-ok", lambda m: None, persistent=False)
    ok.start(timeout_s=5)
    ok.stop()


def test_a_device_reads_only_its_own_results(secure):
    t = Topics(SITE)
    snoop = Listener(secure.address("sensor-1"), f"{t.prefix}/results/#", t.results("sensor-2"), settle_s=0.2)
    owner = Listener(secure.address("sensor-2"), t.results("sensor-2"), settle_s=0.2)
    try:
        assert "RC:135" not in secure.pub("coordinator", f"{t.prefix}/results/sensor-2/j1", '{"final": true}')
        assert owner.topics() == [f"{t.prefix}/results/sensor-2/j1"]
        assert snoop.topics(0) == []
    finally:
        snoop.close()
        owner.close()


def test_a_device_cannot_assign_overwrite_status_or_use_another_devices_topics(secure):
    t = Topics(SITE)
    agent = Listener(secure.address("agent-1"), t.assign("agent-1"), settle_s=0.2)
    dash = Listener(secure.address("dash"), t.agent_status(), settle_s=0.2)
    coordinator = Listener(secure.address("coordinator"), t.prompts(), settle_s=0.2)
    try:
        assert "RC:135" in secure.pub("sensor-1", t.assign("agent-1"), '{"job": "x"}')
        assert "RC:135" in secure.pub("sensor-1", t.agent_status("agent-1"), '{"state": "online"}', retain=True)
        assert "RC:135" in secure.pub("sensor-1", t.prompts("sensor-2"), '{"prompt": "as someone else"}')
        assert "RC:135" in secure.pub("sensor-1", t.cloud_requests, "{}")
        assert "RC:135" in secure.pub("dash", t.prompts("dash"), '{"prompt": "a dashboard may only read"}')
        assert "RC:135" in secure.pub("agent-1", t.assign("agent-1"), "{}")
        assert "RC:135" not in secure.pub("sensor-1", t.prompts("sensor-1"), '{"prompt": "mine"}')
        assert agent.topics() == [] and dash.topics(0) == []
        assert coordinator.topics(0) == [t.prompts("sensor-1")]
    finally:
        for inbox in (agent, dash, coordinator):
            inbox.close()


def test_agents_bridges_and_dashboards_read_only_what_their_role_allows(secure):
    t = Topics(SITE)
    agent = Listener(secure.address("agent-1"), t.assign("+"), t.cloud_requests, t.prompts(), settle_s=0.2)
    dash = Listener(secure.address("dash"), f"{t.prefix}/#", settle_s=0.2)
    bridge = Listener(secure.address("bridge"), t.cloud_requests, t.prompts(), settle_s=0.2)
    try:
        assert "RC:135" not in secure.pub("coordinator", t.assign("agent-1"), '{"to": "agent-1"}')
        assert "RC:135" not in secure.pub("coordinator", t.assign("agent-2"), '{"to": "agent-2"}')
        assert "RC:135" not in secure.pub("coordinator", t.cloud_requests, "{}")
        assert "RC:135" not in secure.pub("sensor-1", t.prompts("sensor-1"), '{"prompt": "x"}')
        assert "RC:135" not in secure.pub("coordinator", t.mesh_status, '{"agents_online": 1}', retain=True)
        assert "RC:135" not in secure.pub("coordinator", f"{t.prefix}/results/sensor-1/j9", "{}")
        assert sorted(agent.topics()) == [t.assign("agent-1")]  # not agent-2's work, the cloud's or prompts
        assert bridge.topics(0) == [t.cloud_requests]
        assert dash.topics(0) == [t.mesh_status]  # statuses only: no prompts, results or assignments
        assert "RC:135" in secure.pub("bridge", t.prompts("sensor-1"), '{"prompt": "as a device"}')
    finally:
        for inbox in (agent, dash, bridge):
            inbox.close()


@pytest.mark.slow
def test_the_mesh_works_end_to_end_over_tls_with_credentials(secure, tmp_path):
    daemons = [Daemon("coordinator", ["coordinator", *secure.flags("coordinator"),
                                      "--ledger", str(tmp_path / "ledger.db")], tmp_path).start(),
               Daemon("agent-1", ["agent", *secure.flags("agent-1"), "--agent-id", "agent-1", "--threads", "2"],
                      tmp_path).start()]
    device = Device(secure.address("sensor-1"), SITE, "sensor-1")
    try:
        def online() -> bool:
            out = subprocess.run([str(ROOT / ".venv" / "bin" / "fogmesh"), "status", "--json", *secure.flags("dash")],
                                 capture_output=True, text=True, timeout=20)
            snap = orjson.loads(out.stdout) if out.returncode == 0 else {}
            return (snap.get("agents", {}).get("agent-1", {}).get("state") == "online"
                    and (snap.get("mesh") or {}).get("agents_online") == 1)

        wait_for(online, 60, every_s=0.5, what="agent-1 online, seen by the dashboard user")
        job = device.send({"id": "tls1", "prompt": "MQTT is a protocol that", "max_tokens": 16})
        final = device.final(job)
        assert final["status"] == "done" and final["served_by"] == {"tier": "edge", "node": "agent-1"}
        assert final["text"] and "".join(c["text"] for c in device.chunks[job]) == final["text"]
        # a Response Topic inside the mesh's tree would make the coordinator write where the device may not
        bad = device.send({"id": "rt1", "prompt": "x"}, response_topic=f"fogmesh/{SITE}/agents/agent-1/assign")
        assert device.final(bad)["error"]["code"] == "bad_response_topic"
        # Outside fogmesh/ the ACL denies the agent and the coordinator, and mosquitto disconnects a
        # client for a denied QoS 1 publish: such a prompt once kept the agent in a reconnect loop.
        watch = Listener(secure.address("dash"), Topics(SITE).agent_status("agent-1"), settle_s=0.2)
        outside = device.send({"id": "rt2", "prompt": "x", "max_tokens": 4}, response_topic="devices/sensor-1/in")
        assert device.final(outside)["error"]["code"] == "bad_response_topic"
        own = Topics(SITE).results("sensor-1", "replies/rt3")
        inside = device.send({"id": "rt3", "prompt": "MQTT is", "max_tokens": 4}, response_topic=own)
        assert device.final(inside)["status"] == "done"
        time.sleep(0.5)
        watch.close()
        assert all(m.get("state") == "online" for _, m in watch.messages), "the agent went offline"
        # `fogmesh ask` as the operator docs/deploy.md recommends works (as a device of its own name);
        # as a dashboard, whose role may not publish, it says so at once
        asked = cli("ask", "--max-tokens", "4", "Hello", *secure.flags("ops"), timeout_s=60)
        assert asked.returncode == 0 and "-- done" in asked.stdout, asked.stderr
        denied = cli("ask", "--max-tokens", "4", "Hello", *secure.flags("dash"), timeout_s=30)
        assert denied.returncode == 1 and "refused the prompt" in denied.stderr, denied.stderr
        explain = subprocess.run([str(ROOT / ".venv" / "bin" / "fogmesh"), "explain", "--json", job,
                                  *secure.flags("ops")], capture_output=True, text=True, timeout=20)
        assert explain.returncode == 0, explain.stderr
        assert orjson.loads(explain.stdout)["jobs"][0]["state"] == "done"
    finally:
        device.close()
        for d in daemons:
            assert d.stop() == 0, d.log()[-2000:]


def test_a_client_id_cannot_be_taken_over_by_another_user(secure):
    """A device connecting with a daemon's client id neither kicks the daemon off (firing its Last
    Will) nor resumes or destroys its session and the prompts queued in it."""
    t = Topics(SITE)
    inbox: list[str] = []
    marker = secrets.token_hex(4)

    def coordinator_session() -> Session:
        session = Session(secure.address("coordinator"), "fogmesh-coordinator-secure",
                          lambda m: inbox.append(m.payload.decode()))
        session.start(timeout_s=5)
        return session

    coordinator = coordinator_session()
    coordinator.subscribe(t.prompts(), qos=1)
    time.sleep(0.2)
    coordinator.stop()  # away (a restart): the broker keeps its session and queues its prompts
    for i in range(2):
        assert "RC:135" not in secure.pub("sensor-1", t.prompts("sensor-1"), f'{{"prompt": "{marker}-{i}"}}')
    agent = Session(secure.address("agent-1"), "fogmesh-agent-agent-1", lambda m: None,
                    will=(t.agent_status("agent-1"), b'{"state": "offline"}'))
    agent.start(timeout_s=5)
    watcher = Listener(secure.address("dash"), t.agent_status("agent-1"), settle_s=0.3)
    watcher.messages.clear()  # a retained status from an earlier test is not news
    try:
        for stolen in ("fogmesh-coordinator-secure", "coordinator", "fogmesh-agent-agent-1", "agent-1"):
            for clean in (True, False):
                impostor = Session(secure.address("sensor-2"), stolen, lambda m: None, persistent=not clean)
                impostor.start(timeout_s=5)
                time.sleep(0.2)
                impostor.stop()
        time.sleep(0.5)
        assert agent.connected and agent.reconnects == 0, "the agent was kicked off by another user"
        assert watcher.topics(0) == [], "the agent's Last Will fired"
        coordinator = coordinator_session()  # back: the prompts queued for it are there
        # the coordinator user's session may also hold what earlier tests left for it: look for these two
        queued = {f'{{"prompt": "{marker}-{i}"}}' for i in range(2)}
        wait_for(lambda: queued <= set(inbox), 5, what="the prompts queued in the coordinator's session")
    finally:
        watcher.close()
        agent.stop()
        coordinator.stop()


def test_the_websockets_listener_binds_only_the_configured_address(secure):
    listening = {(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in (secure.broker.port, secure.broker.ws_port)}
    assert listening == {("127.0.0.1", secure.broker.port), ("127.0.0.1", secure.broker.ws_port)}


def test_each_connection_mistake_gets_its_own_error_at_once(secure, tmp_path):
    from broker.ops.security import make_certs

    other = make_certs(tmp_path / "other-ca", ["127.0.0.1"])  # a CA the broker's certificate is not from
    cases = {
        "wrong user name or password": secure.address("sensor-1", password="wrong"),
        "wants a user name and password": secure.address(None),
        "is not trusted": BrokerAddress(host="127.0.0.1", port=secure.broker.port, tls=True, username="sensor-1",
                                        password="x", ca_file=str(other["ca"])),
        "speaks TLS: use mqtts://": secure.address("sensor-1", tls=False),
        "nothing listens on": BrokerAddress(host="127.0.0.1", port=free_port(), username="x", password="y"),
    }
    for expected, address in cases.items():
        session = Session(address, f"test-{secrets.token_hex(3)}", lambda m: None, persistent=False)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as err:
            session.start(timeout_s=10)
        assert expected in str(err.value), (expected, str(err.value))
        assert time.monotonic() - started < 5, f"{expected!r} took {time.monotonic() - started:.1f} s to say so"



def test_home_assistant_reads_discovery_configs_that_a_dashboard_cannot(secure):
    t = Topics(SITE)
    # an agent reads the per-sensor configs an older fogmesh left for it (to migrate them), and clears them
    legacy = t.ha_discovery("agent-1", "state")
    assert "RC:135" not in secure.pub("agent-1", legacy, '{"name": "State"}', retain=True)
    mine = Listener(secure.address("agent-1"), t.ha_discovery("agent-1"), settle_s=0.3)
    try:
        assert mine.topics() == [legacy]
    finally:
        mine.close()
    assert "RC:135" not in secure.pub("agent-1", legacy, "", retain=True)
    topic, site = t.ha_device_discovery("agent-1"), t.ha_site_discovery()
    assert "RC:135" not in secure.pub("agent-1", topic, '{"dev": {}}', retain=True)
    assert "RC:135" in secure.pub("agent-1", t.ha_device_discovery("agent-2"), "{}", retain=True)
    assert "RC:135" in secure.pub("agent-1", site, "{}", retain=True)
    assert "RC:135" not in secure.pub("coordinator", site, '{"dev": {}}', retain=True)
    ha = Listener(secure.address("ha"), "homeassistant/#", settle_s=0.3)
    dash = Listener(secure.address("dash"), "homeassistant/#", settle_s=0.3)
    try:
        assert sorted(ha.topics()) == sorted([topic, site]) and dash.topics(0) == []
        assert "RC:135" not in secure.pub("ha", "homeassistant/status", "online")
        assert "RC:135" in secure.pub("ha", t.prompts("ha"), '{"prompt": "x"}')
    finally:
        ha.close()
        dash.close()


def test_an_operator_forgets_a_retired_agent_and_a_dashboard_cannot(secure):
    t = Topics(SITE)
    discovery = t.ha_discovery("agent-1", "state")
    assert "RC:135" not in secure.pub("agent-1", t.agent_status("agent-1"), '{"state": "offline", "ts": 1}',
                                      retain=True)
    assert "RC:135" not in secure.pub("agent-1", discovery, '{"name": "state"}', retain=True)
    denied = cli("forget", "agent-1", *secure.flags("dash"), timeout_s=30)
    assert denied.returncode == 1 and f"refused to clear {t.agent_status('agent-1')}" in denied.stderr, denied.stderr
    done = cli("forget", "agent-1", *secure.flags("ops"), timeout_s=30)
    assert done.returncode == 0, done.stderr
    status = Listener(secure.address("dash"), t.agent_status("agent-1"), settle_s=0.3)
    ha = Listener(secure.address("ha"), "homeassistant/#", settle_s=0.3)
    try:
        assert status.topics(0) == [] and discovery not in ha.topics(0)
    finally:
        status.close()
        ha.close()


def test_an_operator_forgets_an_agent_the_acl_no_longer_lists(secure):
    """Retiring an agent the safe way removes its user first; the ACL then no longer lets the
    operator clear its Home Assistant topics. The broker refuses those (and mosquitto closes the
    connection on each): forget still clears the status, and says which topics are left and why."""
    t = Topics(SITE)
    assert "RC:135" not in secure.pub("ops", t.agent_status("agent-gone"), '{"state": "offline", "ts": 1}',
                                      retain=True)
    started = time.monotonic()
    out = cli("forget", "agent-gone", *secure.flags("ops"), timeout_s=60)
    assert time.monotonic() - started < 30
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cleared {t.agent_status('agent-gone')}" in out.stdout
    assert t.ha_device_discovery("agent-gone") in out.stderr and "fogmesh broker config" in out.stderr
    assert f"refused to clear {t.agent_status('agent-gone')}" not in out.stderr
    status = Listener(secure.address("dash"), t.agent_status("agent-gone"), settle_s=0.3)
    try:
        assert status.topics(0) == []
    finally:
        status.close()
