"""What an operator watches: `fogmesh status --watch` and the web dashboard in a real browser."""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from broker.cli.console import render
from broker.ops.mosquitto import Mosquitto, render_config
from broker.runtime.proc import free_port
from tests.conftest import agent_args, wait_online
from tests.services import cli, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(not CHROMIUM and not os.environ.get("FOGMESH_REQUIRE_BROWSER"),
                                    reason="no chromium here (deploy/install-deps.sh --test installs it)")


def status_watch(broker_url: str, site: str) -> str:
    out = cli("status", "--watch", "--count", "1", "--broker", broker_url, "--site", site, timeout_s=30,
              env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def agent_line(text: str, agent: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(agent + " "))


def test_status_watch_shows_the_agents_and_one_going_offline(daemons, broker_url, site_id):
    daemons("coordinator")
    agents = {n: daemons("agent", *agent_args(n), name=n) for n in ("a1", "a2")}
    wait_online(broker_url, site_id, 2)
    first = status_watch(broker_url, site_id)
    assert "online" in agent_line(first, "a1") and "online" in agent_line(first, "a2")
    assert "2 agents" in first
    agents["a2"].kill()
    wait_for(lambda: "offline" in agent_line(status_watch(broker_url, site_id), "a2"), 20, every_s=0.5,
             what="a2 offline in status --watch")
    assert "online" in agent_line(status_watch(broker_url, site_id), "a1")


def test_an_agent_that_misses_its_heartbeats_shows_as_stale():
    now = time.time()
    snap = {"site": "s", "broker": "mqtt://x", "coordinator": None, "mesh": None, "bridge": None,
            "agents": {"hung": {"state": "online", "ts": now - 30, "heartbeat_s": 5.0},
                       "fine": {"state": "online", "ts": now - 1, "heartbeat_s": 5.0}}}
    console = Console(width=200, record=True)
    console.print(render(snap, now))
    text = console.export_text()
    assert "stale" in agent_line(text, "hung") and "online" in agent_line(text, "fine")


def dashboard_urls(web) -> list[str]:
    """The addresses `fogmesh dashboard` prints: the site's page, then every site's."""
    return wait_for(lambda: [line.strip() for line in web.log().splitlines() if "http://" in line][:2] or None,
                    10, what="the dashboard's URLs")


@contextlib.contextmanager
def browser_page():
    """A page in the distribution's headless Chromium; the test fails on any error the page raises."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "FOGMESH_REQUIRE_BROWSER is set but chromium is not installed"
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            yield page
        finally:
            browser.close()
    assert not errors, f"the page raised: {errors}"


def wait_text(page, selector: str, text: str, timeout_ms: int = 10_000) -> None:
    """Wait until the element's text is ``text`` (the page renders each message as it comes)."""
    page.wait_for_function("([sel, text]) => document.querySelector(sel)?.innerText.trim() === text",
                           arg=[selector, text], timeout=timeout_ms)


@needs_chromium
def test_the_site_page_shows_counters_charts_live_jobs_and_ages_out_an_offline_agent(daemons, broker_url, site_id,
                                                                                      mosquitto, device):
    fast = {"FOGMESH_AGENT_HEARTBEAT_S": "0.5"}  # tokens of a running job reported often
    daemons("coordinator")
    agent = daemons("agent", *agent_args("a1"), env=fast)
    web = daemons("dashboard", "--port", str(free_port()), "--ws", mosquitto.ws_url, "--forget-offline-after", "4")
    wait_online(broker_url, site_id, 1)
    url = dashboard_urls(web)[0]
    assert "offline_after=4" in url
    with browser_page() as page:
        page.goto(url)
        page.wait_for_selector('#agents tr[data-agent="a1"][data-state="online"]', timeout=15_000)
        assert page.inner_text("#conn").startswith("connected to ws://")
        assert "1 agent online" in page.inner_text("#mesh") and "online" in page.inner_text("#coordinator")
        key = f"{device.device_id}/watched"
        device.send({"id": "watched", "prompt": "Count from one to one thousand in words: one, two,",
                     "max_tokens": 80})
        page.wait_for_function(f"""() => {{ const row = document.querySelector('#jobs tr[data-job="{key}"]');
            return row && row.dataset.state === "generating"
                && +row.querySelector("[data-tokens]").dataset.tokens > 0 }}""", timeout=30_000)
        row = f'#jobs tr[data-job="{key}"]'
        assert page.inner_text(f"{row} td:nth-child(3)") == "a1"  # the agent that runs it
        assert page.inner_text(f"{row} td:nth-child(7)").endswith("/ 80")
        device.send({"id": "bad", "prompt": "x", "max_tokens": -1})
        assert device.final("bad")["status"] == "rejected"
        final = device.final("watched")
        assert final["status"] == "done"
        page.wait_for_selector(f'#finished tr[data-job="{key}"][data-status="done"]', timeout=10_000)
        ended = page.inner_text(f'#finished tr[data-job="{key}"]')
        assert final["served_by"]["node"] in ended and str(final["usage"]["completion_tokens"]) in ended
        assert "invalid_value" in page.inner_text(f'#finished tr[data-job="{device.device_id}/bad"]')
        page.wait_for_selector(f"#jobs tr[data-job=\"{key}\"]", state="detached", timeout=10_000)
        wait_text(page, '#totals tr[data-status="done"] td[data-tier="edge"]', "1")
        wait_text(page, '#totals tr[data-status="rejected"] td[data-tier="none"]', "1")
        assert page.inner_text('#totals tr[data-status="done"] td[data-tier="cloud"]') == "0"
        agent.kill()  # its Last Will says offline; the page hides it 4 s later (while the history comes)
        page.wait_for_selector('#agents tr[data-agent="a1"][data-state="offline"]', timeout=10_000)
        # the history comes every 10 s: the tokens of the done job show in the chart within one step
        page.wait_for_function("() => +document.getElementById('chart-tokens').dataset.peak > 0", timeout=15_000)
        for chart in ("throughput", "tokens"):
            points = page.get_attribute(f"#chart-{chart} path", "d")
            assert points.startswith("M") and points.count("L") >= 1, points
        assert float(page.get_attribute("#chart-throughput", "data-peak")) >= 1
        page.wait_for_selector('#agents tr[data-agent="a1"]', state="detached", timeout=10_000)
        assert page.inner_text("#agents-hidden").startswith("1 agent offline for more than 4.0 s hidden")
        page.click("#agents-toggle")
        page.wait_for_selector('#agents tr[data-agent="a1"][data-state="offline"]', timeout=5_000)


@needs_chromium
def test_the_fleet_page_lists_each_site_its_health_and_opens_a_site_with_its_cloud_job(daemons, broker_url, site_id,
                                                                                       mosquitto, device, tmp_path):
    from cloud_bridge.local import LOCAL_CREDENTIALS

    other = f"{site_id}b"
    daemons("coordinator")
    gone = daemons("coordinator", "--site", other, "--ledger", str(tmp_path / "other.db"), name="coordinator-b")
    # A bridge whose queue service does not answer: the site's one job goes to the cloud tier and
    # waits there in the outbox, offloaded, as long as this test needs.
    daemons("bridge", "--endpoint-url", f"http://127.0.0.1:{free_port()}", "--outbox", str(tmp_path / "outbox.db"),
            env={**LOCAL_CREDENTIALS, "FOGMESH_BRIDGE_STATUS_INTERVAL_S": "0.5"})
    web = daemons("dashboard", "--port", str(free_port()), "--ws", mosquitto.ws_url)
    fleet_url = dashboard_urls(web)[1]
    assert "view=fleet" in fleet_url
    with browser_page() as page:
        page.goto(fleet_url)
        for site in (site_id, other):
            page.wait_for_selector(f'#sites tr[data-site="{site}"][data-state="online"]', timeout=20_000)
        page.wait_for_function(f"""() => document.querySelector('#sites tr[data-site="{site_id}"]')
                                   .innerText.includes("UNREACHABLE")""", timeout=20_000)
        row = page.inner_text(f'#sites tr[data-site="{site_id}"]').split("\t")
        assert row[2:5] == ["0", "0", "no"], row  # agents online, queue, overloaded
        gone.kill()
        page.wait_for_selector(f'#sites tr[data-site="{other}"][data-state="offline"]', timeout=20_000)
        assert page.get_attribute(f'#sites tr[data-site="{site_id}"]', "data-state") == "online"

        page.evaluate("() => { window.sameDocument = true }")  # gone if the page reloads
        device.send({"id": "up", "prompt": "No agent here:", "max_tokens": 24})
        page.click(f'#sites tr[data-site="{site_id}"] a')
        job = f'#jobs tr[data-job="{device.device_id}/up"][data-state="offloaded"]'
        page.wait_for_selector(job, timeout=20_000)
        assert page.inner_text(f"{job} td:nth-child(3)") == "cloud"
        assert "fleet" not in page.url and f"site={site_id}" in page.url
        assert "cloud UNREACHABLE" in page.inner_text("#bridge")
        page.select_option("#site-picker", other)
        page.wait_for_function("() => document.getElementById('coordinator').innerText.startsWith('offline')",
                               timeout=10_000)
        assert f"site={other}" in page.url and page.inner_text("#bridge") == "none on this site"
        page.go_back()
        page.wait_for_selector(job, timeout=10_000)
        assert page.evaluate("() => window.sameDocument") is True


DYNSEC = next(iter(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")), None)


def _dynsec_client(user: str, password: str) -> dict[str, Any]:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {"username": user, "salt": base64.b64encode(salt).decode(), "iterations": 101,
            "password": base64.b64encode(digest).decode(), "roles": [{"rolename": user}]}


@contextlib.contextmanager
def one_site_broker(folder: Path, site: str, passwords: dict[str, str]) -> Iterator[tuple[str, Callable[..., None]]]:
    """A mosquitto with passwords whose dynamic-security plugin lets ``dash`` subscribe to one
    site's topics only: a subscription to every site's is refused with MQTT 5 reason code 0x87,
    as mosquitto's recommended plugin, EMQX and HiveMQ answer. ``writer`` publishes anything.
    Yields its WebSockets URL and a retained-publish function (as ``writer``)."""
    port, ws_port = free_port(), free_port()

    def role(name: str, acl: str, topic: str) -> dict[str, Any]:
        return {"rolename": name, "acls": [{"acltype": acl, "topic": topic, "allow": True}]}

    roles = [role("dash", "subscribePattern", f"fogmesh/{site}/#"), role("writer", "publishClientSend", "#")]
    (folder / "dynsec.json").write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [_dynsec_client(user, pw) for user, pw in passwords.items()], "roles": roles, "groups": []}))
    conf = render_config(port, folder, ws_port=ws_port).replace(
        "allow_anonymous true", f"allow_anonymous false\nplugin {DYNSEC}\nplugin_opt_config_file {folder}/dynsec.json")
    (folder / "mosquitto.conf").write_text(conf)
    broker = Mosquitto(port, folder, config=folder / "mosquitto.conf", ws_port=ws_port)
    broker.start()

    def publish(topic: str, payload: str | bytes) -> None:
        message = payload if isinstance(payload, str) else payload.decode()
        subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-r", "-h", "127.0.0.1", "-p", str(port),
                        "-u", "writer", "-P", passwords["writer"], "-t", topic, "-m", message],
                       check=True, timeout=10)
    try:
        yield f"ws://127.0.0.1:{ws_port}", publish
    finally:
        broker.stop()


@needs_chromium
@pytest.mark.skipif(not DYNSEC, reason="mosquitto's dynamic security plugin is not installed")
def test_a_dashboard_user_allowed_one_site_logs_in_without_a_password_in_the_url_and_sees_that_site(
        daemons, site_id, tmp_path):
    from schemas import encode
    from schemas.status import AgentStatus, CoordinatorStatus, JobView, MeshJobs

    secret = tmp_path / "dash.password"
    secret.write_text("s3cret-not-for-urls\n")
    now = time.time()
    with one_site_broker(tmp_path, site_id, {"dash": "s3cret-not-for-urls", "writer": "w"}) as (ws_url, publish):
        web = daemons("dashboard", "--port", str(free_port()), "--ws", ws_url, "--username", "dash",
                      "--password-file", str(secret))
        for site in (site_id, f"{site_id}x"):  # the second is on the broker, but not this user's to read
            publish(f"fogmesh/{site}/coordinator/status", encode(CoordinatorStatus(state="online", ts=now + 600)))
        publish(f"fogmesh/{site_id}/agents/fine/status", encode(AgentStatus(
            agent="fine", epoch=1, seq=1, state="online", slots_total=1, slots_free=1, ts=now, heartbeat_s=600)))
        publish(f"fogmesh/{site_id}/mesh/jobs", encode(MeshJobs(live=1, limit=200, ts=now, jobs=[
            JobView(key="dev/up", state="offloaded", node="cloud", created_at=now, max_tokens=24)])))
        # what a page may meet on a shared broker: not JSON, not an object, fields of the wrong type
        publish(f"fogmesh/{site_id}/agents/torn/status", "{not json")
        publish(f"fogmesh/{site_id}/agents/list/status", "[1, 2]")
        publish(f"fogmesh/{site_id}/agents/odd/status", '{"state": 5, "models": "x", "budget": 3, "ts": "noon"}')
        publish(f"fogmesh/{site_id}/mesh/status", '{"agents_online": "two", "recent": {"totals": {"done": 3}}}')
        url, fleet_url = dashboard_urls(web)
        assert "s3cret" not in web.log() and "password=" not in url + fleet_url
        with browser_page() as page:
            page.goto(fleet_url)
            page.wait_for_selector("#login:not([hidden])", timeout=10_000)
            page.fill("#password", "not-the-password")
            page.click("#login button")
            page.wait_for_selector("#login:not([hidden])", timeout=10_000)
            assert "refused dash" in page.inner_text("#login-error")
            page.fill("#password", "s3cret-not-for-urls")
            page.click("#login button")
            page.wait_for_selector('#conn[data-connected="true"]', timeout=15_000)
            page.wait_for_selector(f'#sites tr[data-site="{site_id}"][data-state="online"]', timeout=10_000)
            assert f"read site {site_id} only" in page.inner_text("#fleet-note")
            assert page.eval_on_selector_all("#sites tbody tr", "rows => rows.map(r => r.dataset.site)") == [site_id]
            page.click(f'#sites tr[data-site="{site_id}"] a')
            page.wait_for_selector('#jobs tr[data-job="dev/up"][data-state="offloaded"]', timeout=10_000)
            assert page.inner_text('#jobs tr[data-job="dev/up"] td:nth-child(3)') == "cloud"
            page.wait_for_selector('#agents tr[data-agent="fine"][data-state="online"]', timeout=10_000)
            assert page.get_attribute('#agents tr[data-agent="odd"]', "data-state") == "unknown"
            assert page.query_selector('#agents tr[data-agent="torn"]') is None
            assert "online" in page.inner_text("#coordinator")
            assert "s3cret" not in page.url
            page.reload()  # the tab remembers the password; the address still does not hold it
            page.wait_for_selector('#conn[data-connected="true"]', timeout=15_000)
            assert page.is_hidden("#login")


def test_the_site_publishes_its_live_jobs_with_tokens_and_what_it_did_lately(daemons, broker_url, site_id, device):
    from broker.runtime.mqtt import BrokerAddress
    from tests.services import Listener

    daemons("coordinator")
    daemons("agent", *agent_args("a1"), env={"FOGMESH_AGENT_HEARTBEAT_S": "0.5"})
    wait_online(broker_url, site_id, 1)
    watch = Listener(BrokerAddress.parse(broker_url), f"fogmesh/{site_id}/mesh/#")
    try:
        device.send({"id": "long", "prompt": "Count from one to one thousand in words: one, two,",
                     "max_tokens": 96})

        def generating() -> dict | None:
            views = [m for t, m in list(watch.messages) if t.endswith("/mesh/jobs")]
            return next((j for m in views for j in m["jobs"]
                         if j["key"] == f"{device.device_id}/long" and j["state"] == "generating" and j["tokens"]),
                        None)

        job = wait_for(generating, 30, every_s=0.2, what="the job generating, with tokens, in mesh/jobs")
        assert job["node"] == "a1" and job["started_at"] >= job["created_at"] > 0 and job["max_tokens"] == 96
        device.send({"id": "bad", "prompt": "x", "max_tokens": -1})
        assert device.final("bad")["status"] == "rejected"
        final = device.final("long")
        assert final["status"] == "done"

        def latest(suffix: str) -> dict:
            return [m for t, m in list(watch.messages) if t.endswith(suffix)][-1]

        wait_for(lambda: latest("/mesh/status")["recent"]["totals"].get("done"), 10, what="totals in mesh status")
        recent = latest("/mesh/status")["recent"]
        assert recent["totals"] == {"done": {"edge": 1}, "rejected": {"none": 1}}
        assert recent["finished"] == 2 and recent["done"] == 1 and recent["cloud_share"] == 0.0
        assert recent["latency_p50_ms"] == round(final["timings"]["total_ms"], 1)
        # one decision was made (the rejected job never reached the scheduler): its time, as taken
        assert 0 < recent["decision_p50_ms"] == recent["decision_p99_ms"] and recent["decision_wall_p99_ms"] > 0
        wait_for(lambda: len(latest("/mesh/jobs")["finished"]) == 2, 10, what="both jobs listed as finished")
        ended = {f["key"].split("/")[-1]: f for f in latest("/mesh/jobs")["finished"]}
        assert ended["long"]["tokens"] == final["usage"]["completion_tokens"] and ended["long"]["node"] == "a1"
        assert ended["bad"]["status"] == "rejected" and ended["bad"]["code"] == "invalid_value"
        assert latest("/mesh/jobs")["jobs"] == []
        history = wait_for(lambda: sum(s["done"] for s in latest("/mesh/history")["steps"]) and
                           latest("/mesh/history"), 15, what="the done job in the history")
        assert sum(s["tokens"] for s in history["steps"]) == final["usage"]["completion_tokens"]
        assert sum(s["rejected"] for s in history["steps"]) == 1
    finally:
        watch.close()


def test_status_all_sites_lists_every_site_with_a_stopped_one_unhealthy(daemons, broker_url, site_id, device,
                                                                       tmp_path):
    from broker.runtime.client import snapshot
    from broker.runtime.mqtt import BrokerAddress

    other = f"{site_id}-b"
    daemons("coordinator")
    daemons("agent", *agent_args("a1"))
    gone = daemons("coordinator", "--site", other, "--ledger", str(tmp_path / "other.db"), name="coordinator-b")
    wait_online(broker_url, site_id, 1)
    wait_for(lambda: (snapshot(BrokerAddress.parse(broker_url), other, 0.2)["coordinator"] or {}).get("state")
             == "online", 30, what=f"site {other}'s coordinator online")
    assert gone.stop() == 0
    device.send({"id": "counted", "prompt": "MQTT is", "max_tokens": 4})
    assert device.final("counted")["status"] == "done"

    def sites() -> dict[str, dict]:
        out = cli("status", "--all-sites", "--json", "--broker", broker_url, timeout_s=30)
        assert out.returncode == 0, out.stderr
        return {row["site"]: row for row in json.loads(out.stdout)}

    rows = wait_for(lambda: (s := sites())[site_id]["jobs"]["done"] == 1 and s, 15, every_s=0.5,
                    what="the done job in the coordinator's counters")
    assert rows[site_id] == {**rows[site_id], "healthy": True, "problems": [], "coordinator": "online",
                             "agents_online": 1, "agents_total": 1, "queue_depth": 0, "overloaded": False,
                             "cloud": None}
    assert rows[site_id]["jobs"]["accepted"] == 1
    assert not rows[other]["healthy"] and rows[other]["coordinator"] == "offline"
    assert "coordinator offline" in rows[other]["problems"] and rows[other]["agents_total"] == 0
    table = cli("status", "--all-sites", "--broker", broker_url, timeout_s=30, env={"COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "ok" in lines[site_id].split() and "1/1" in lines[site_id]
    assert "UNHEALTHY" in lines[other] and "offline" in lines[other]


def test_status_all_sites_on_a_broker_without_sites_says_which_broker_it_asked(tmp_path):
    from tests.conftest import private_broker

    with private_broker(tmp_path / "empty") as empty:
        out = cli("status", "--all-sites", "--broker", empty.url, timeout_s=30)
        assert out.returncode == 3
        assert f"no fogmesh site on {empty.url}" in out.stderr and "--broker" in out.stderr and "ACL" in out.stderr
        out = cli("status", "--all-sites", "--json", "--broker", empty.url, timeout_s=30)
        assert out.returncode == 3 and out.stdout == ""


def test_a_site_whose_coordinator_is_stale_or_missing_is_unhealthy():
    from broker.cli.console import site_health

    now = time.time()
    agent = {"state": "online", "ts": now, "heartbeat_s": 5.0}
    snap = {"site": "s", "broker": "mqtt://x", "mesh": {"queue_depth": 3, "overloaded": True}, "bridge": None,
            "agents": {"a": agent}, "coordinator": {"state": "online", "ts": now - 60, "counters": {"done": 7}}}
    stale = site_health(snap, now)
    assert not stale["healthy"] and stale["coordinator"] == "stale" and stale["jobs"]["done"] == 7
    assert stale["problems"] == ["coordinator stale", "overloaded"] and stale["queue_depth"] == 3
    missing = site_health({**snap, "coordinator": None, "mesh": None}, now)
    assert not missing["healthy"] and missing["problems"] == ["coordinator missing"]
    fresh = {"state": "online", "ts": now}
    unreachable = site_health({**snap, "coordinator": fresh, "mesh": None,
                               "bridge": {**fresh, "reachable": False}}, now)
    assert unreachable["problems"] == ["cloud unreachable"] and unreachable["cloud"] == "unreachable"


def test_forget_refuses_an_online_agent_and_clears_a_killed_ones_status_and_discovery(daemons, broker_url,
                                                                                     site_id):
    from broker.runtime.client import retained, snapshot
    from broker.runtime.mqtt import BrokerAddress
    from schemas.topics import Topics, ha_node_id

    address, t = BrokerAddress.parse(broker_url), Topics(site_id)
    discovery = f"homeassistant/+/{ha_node_id(site_id, 'a1')}/#"
    coordinator = daemons("coordinator")
    agent = daemons("agent", *agent_args("a1"), env={"FOGMESH_AGENT_HA_DISCOVERY": "true"})
    wait_online(broker_url, site_id, 1)
    wait_for(lambda: retained(address, discovery), 10, what="the agent's Home Assistant discovery")
    flags = ("--broker", broker_url, "--site", site_id)

    refused = cli("forget", "a1", *flags, timeout_s=30)
    assert refused.returncode == 2 and "is online" in refused.stderr and "--force" in refused.stderr
    assert retained(address, t.agent_status("a1")) and retained(address, discovery)
    unknown = cli("forget", "a9", *flags, timeout_s=30)
    assert unknown.returncode == 1 and "no agent 'a9'" in unknown.stderr and "a1" in unknown.stderr

    agent.kill()
    wait_for(lambda: snapshot(address, site_id, 0.2)["agents"]["a1"]["state"] == "offline", 20,
             what="a1's Last Will")
    out = cli("forget", "a1", *flags, timeout_s=30)
    assert out.returncode == 0, out.stderr
    assert "forgot agent 'a1'" in out.stdout
    # a fresh subscriber gets nothing: not the status, not a discovery config
    assert retained(address, t.agent_status("a1")) == [] and retained(address, discovery) == []
    status = cli("status", "--json", *flags, timeout_s=30)
    assert status.returncode == 0 and "a1" not in json.loads(status.stdout)["agents"]
    wait_for(lambda: "event=agent_forgotten agent=a1 was=offline" in coordinator.log(), 10,
             what="the coordinator dropping a1 from its registry")


# What any client of the broker may leave retained on a status topic: wrong types, a list, negative
# numbers, rich markup and terminal escape sequences where a host name should be.
HOSTILE = {"state": "[/oops]", "ts": "yesterday", "heartbeat_s": "x", "host": "\x1b]0;pwned\x07\x1b[2J[/]",
           "pid": [1], "decode_tps": "fast", "ttft_ms": None, "models": [1, None, {"name": "[/m]"}], "jobs": 5,
           "budget": [1], "slots_free": -3, "queue_depth": {"a": 1}, "counters": "x", "policy": {"a": 1}}


def hostile_snapshot(now: float) -> dict[str, Any]:
    return {"site": "evil", "broker": "mqtt://x",
            "coordinator": {**HOSTILE, "state": "online", "ts": now},
            "mesh": {"agents_online": 1, "predicted_wait_ms": "soon", "queue_depth": "9", "overloaded": "yes",
                     "slots_free": [], "recent": [1]},
            "bridge": {**HOSTILE, "reachable": "yes", "oldest_age_s": "old"},
            "agents": {"bad": HOSTILE, "[red]x": {"state": "online", "ts": now, "host": "[/]"}}}


def test_status_shows_a_site_whose_statuses_are_malformed_without_markup_or_escape_sequences():
    now = time.time()
    console = Console(width=300, record=True)
    console.print(render(hostile_snapshot(now), now))
    text = console.export_text()
    assert "\x1b" not in text and "pwned" in text  # the text is shown, the escape sequences are not
    assert "[red]x " in text and "[/oops]" in text  # shown as sent, not taken as markup
    assert "predicted wait 0 ms" in text


def test_all_sites_lists_every_site_when_one_has_malformed_statuses():
    from broker.cli.console import site_health, sites_table

    now = time.time()
    good = {"site": "good", "broker": "mqtt://x", "bridge": None, "mesh": {"queue_depth": 2},
            "coordinator": {"state": "online", "ts": now, "counters": {"done": 4}},
            "agents": {"a": {"state": "online", "ts": now}}}
    rows = [site_health(hostile_snapshot(now), now), site_health(good, now)]
    assert json.loads(json.dumps(rows))  # --json
    console = Console(width=300, record=True)
    console.print(sites_table(rows, "mqtt://x"))
    text = console.export_text()
    assert "\x1b" not in text and "[/oops]" in text
    assert rows[1]["healthy"] and rows[1]["jobs"]["done"] == 4
    assert rows[0]["queue_depth"] == 0 and rows[0]["jobs"]["done"] == 0 and rows[0]["cloud"] == "bridge [/oops]"


def test_forget_clears_an_agent_whose_status_is_malformed_or_whose_id_is_odd(broker_url, site_id):
    """What the operator wants gone most: a status some broken or hostile client left. `status` shows
    it; `forget` clears it rather than tripping over it, whatever its id (one topic level)."""
    from broker.runtime.client import retained
    from broker.runtime.mqtt import BrokerAddress

    address, flags = BrokerAddress.parse(broker_url), ("--broker", broker_url, "--site", site_id)

    def publish(agent: str, payload: str, topic: str = "") -> str:
        topic = topic or f"fogmesh/{site_id}/agents/{agent}/status"
        subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-r", "-h", address.host, "-p",
                        str(address.port), "-t", topic, "-m", payload], check=True, timeout=10)
        return topic

    now = time.time()
    topics = {"bad": publish("bad", json.dumps(HOSTILE)), "torn": publish("torn", "{not json"),
              "[red]x": publish("[red]x", json.dumps({"state": "offline", "ts": now}))}
    publish("", json.dumps({"state": "online", "ts": now}), f"fogmesh/{site_id}/coordinator/status")
    shown = cli("status", "--all-sites", *flags[:2], timeout_s=30, env={"COLUMNS": "250"})
    assert shown.returncode == 0, shown.stderr
    assert site_id in shown.stdout and "\x1b" not in shown.stdout
    one = cli("status", *flags, timeout_s=30, env={"COLUMNS": "250"})
    assert "Traceback" not in one.stderr and "[red]x" in one.stdout and "\x1b" not in one.stdout
    for agent, topic in topics.items():
        out = cli("forget", agent, *flags, timeout_s=30)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout + out.stderr
        assert retained(address, topic) == []
    for bad in ("+", "#", "", "a/b"):
        out = cli("forget", bad, *flags, "--force", timeout_s=30)
        assert out.returncode == 1 and "one topic level" in out.stderr, (bad, out.stderr)


def test_clearing_topics_on_a_broker_that_stops_answering_gives_up_at_the_first(tmp_path, monkeypatch):
    """A broker that accepted the connection and then hangs (SIGSTOP): forget used to wait out every
    topic in turn (35 s for an agent's seven) and blame the ACL for each."""
    import signal

    from broker.runtime import mqtt
    from broker.runtime.client import clear_retained
    from tests.conftest import private_broker

    with private_broker(tmp_path / "stalled") as broker:
        assert broker.proc is not None
        start = mqtt.Session.start

        def start_then_stall(self: mqtt.Session, *args: Any, **kwargs: Any) -> None:
            start(self, *args, **kwargs)
            os.kill(broker.proc.pid, signal.SIGSTOP)

        monkeypatch.setattr(mqtt.Session, "start", start_then_stall)
        began = time.monotonic()
        try:
            failed = clear_retained(mqtt.BrokerAddress.parse(broker.url), ["t/a", "t/b", "t/c"], timeout_s=1.0)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
    assert time.monotonic() - began < 4
    assert failed["t/a"].startswith("no acknowledgement") and failed["t/c"].startswith("not tried")


def test_reading_the_fleet_waits_while_retained_statuses_still_come():
    """A broker with thousands of sites takes seconds to send their retained statuses: after a fixed
    half second, status --all-sites listed 2,500-3,000 of 3,000 sites, a different count each run."""
    import threading

    from broker.runtime.client import Fleet
    from broker.runtime.mqtt import Message

    fleet = Fleet.__new__(Fleet)
    fleet.site, fleet.broker, fleet._lock, fleet._sites = None, "mqtt://x", threading.Lock(), {}
    fleet._heard = time.monotonic()

    def trickle() -> None:  # one site every 0.1 s for 1.5 s
        for i in range(15):
            fleet._on_message(Message(topic=f"fogmesh/s{i}/coordinator/status", payload=b'{"state": "online"}',
                                      qos=1, retain=True))
            time.sleep(0.1)

    sender = threading.Thread(target=trickle)
    sender.start()
    fleet.settle(0.3)
    sender.join()
    assert len(fleet.snapshots()) == 15


@needs_chromium
def test_the_site_page_shows_a_bounded_number_of_jobs_and_steps_whatever_a_publisher_sends(daemons, broker_url,
                                                                                          site_id, mosquitto):
    """The coordinator shows 200 live jobs, 20 finished and 90 history steps; any client allowed to
    write mesh/jobs can send more. The page rebuilds its tables every second: with 5,000 job rows it
    kept the browser's main thread busy (a script call took 2 s to return)."""
    now = time.time()
    address = mosquitto.url.split("//")[1].split(":")
    jobs = {"live": 5000, "limit": 5000, "ts": now, "jobs": [{"key": f"d/{i}", "state": "queued"} for i in range(5000)],
            "finished": [{"key": f"d/f{i}", "status": "done"} for i in range(1000)]}
    history = {"step_s": 10, "ts": now, "steps": [{"ts": now - 10 * (3000 - i), "done": 1} for i in range(3000)]}
    for topic, body in (("mesh/jobs", jobs), ("mesh/history", history)):
        subprocess.run(["mosquitto_pub", "-V", "mqttv5", "-q", "1", "-r", "-h", address[0], "-p", address[1], "-t",
                        f"fogmesh/{site_id}/{topic}", "-s"], input=json.dumps(body).encode(), check=True, timeout=10)
    web = daemons("dashboard", "--port", str(free_port()), "--ws", mosquitto.ws_url)
    with browser_page() as page:
        page.goto(dashboard_urls(web)[0])
        page.wait_for_function("() => document.getElementById('jobs-note').innerText.startsWith('5000 live')",
                               timeout=20_000)
        assert "the oldest 200 shown" in page.inner_text("#jobs-note")
        assert page.evaluate("() => document.querySelectorAll('#jobs tbody tr').length") == 200
        assert page.evaluate("() => document.querySelectorAll('#finished tbody tr').length") <= 50
        page.wait_for_function("() => document.getElementById('peak-throughput').innerText.startsWith('peak')")
        points = page.get_attribute("#chart-throughput path", "d")
        assert 1 <= points.count("L") < 400, points.count("L")


def test_status_watch_of_a_site_that_is_not_there_says_so(daemons, broker_url, site_id):
    """A typo in --site: plain status names the sites there; --watch drew an empty site until Ctrl-C."""
    from broker.runtime.client import snapshot
    from broker.runtime.mqtt import BrokerAddress

    daemons("coordinator")
    wait_for(lambda: snapshot(BrokerAddress.parse(broker_url), site_id, 0.2)["coordinator"], 30,
             what="the coordinator's status")
    out = cli("status", "--watch", "--count", "1", "--broker", broker_url, "--site", site_id + "x", timeout_s=30)
    assert out.returncode == 1 and f"no site '{site_id}x'" in out.stderr and site_id in out.stderr, out.stderr
