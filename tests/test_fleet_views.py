"""What an operator watches: `fogmesh status --watch` and the web dashboard in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from rich.console import Console

from broker.cli.console import render
from broker.runtime.proc import free_port
from tests.conftest import agent_args, wait_online
from tests.services import cli, wait_for

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("FOGMESH_REQUIRE_BROWSER"),
                    reason="no chromium here (deploy/install-deps.sh --test installs it)")
def test_the_web_dashboard_lists_live_agents_and_jobs_and_one_going_offline(daemons, broker_url, site_id, mosquitto,
                                                                          device):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "FOGMESH_REQUIRE_BROWSER is set but chromium is not installed"
    daemons("coordinator")
    agents = {n: daemons("agent", *agent_args(n), name=n) for n in ("a1", "a2")}
    port = free_port()
    web = daemons("dashboard", "--port", str(port), "--ws", mosquitto.ws_url)
    wait_online(broker_url, site_id, 2)
    url = wait_for(lambda: next((line.strip() for line in web.log().splitlines() if "http://" in line), None),
                   10, what="the dashboard's URL")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            for name in agents:
                page.wait_for_selector(f'tr[data-agent="{name}"][data-state="online"]', timeout=15_000)
            assert page.inner_text("#conn").startswith("connected to ws://")
            assert "2 agents" in page.inner_text("#mesh")
            assert "online" in page.inner_text("#coordinator")
            device.send({"id": "watched", "prompt": "Count from one to one thousand in words: one, two,",
                         "max_tokens": 120})
            page.wait_for_selector(f'tr[data-job="{device.device_id}/watched"]', timeout=15_000)
            agents["a2"].kill()
            page.wait_for_selector('tr[data-agent="a2"][data-state="offline"]', timeout=20_000)
            assert page.get_attribute('tr[data-agent="a1"]', "data-state") == "online"
            assert device.final("watched")["status"] == "done"
        finally:
            browser.close()


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("FOGMESH_REQUIRE_BROWSER"),
                    reason="no chromium here (deploy/install-deps.sh --test installs it)")
def test_the_dashboard_asks_for_a_password_instead_of_taking_it_from_its_url(daemons, site_id, mosquitto, tmp_path):
    from playwright.sync_api import sync_playwright

    secret = tmp_path / "dash.password"
    secret.write_text("s3cret-not-for-urls\n")
    port = free_port()
    web = daemons("dashboard", "--port", str(port), "--ws", mosquitto.ws_url, "--username", "dash",
                  "--password-file", str(secret))
    url = wait_for(lambda: next((line.strip() for line in web.log().splitlines() if "http://" in line), None),
                   10, what="the dashboard's URL")
    assert "s3cret" not in web.log() and "password=" not in url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#login:not([hidden])", timeout=10_000)
            page.fill("#password", "s3cret-not-for-urls")
            page.click("#login button")
            page.wait_for_selector('#conn[data-connected="true"]', timeout=15_000)
            assert "s3cret" not in page.url
            page.reload()  # the tab remembers it; the address still does not hold it
            page.wait_for_selector('#conn[data-connected="true"]', timeout=15_000)
            assert page.is_hidden("#login")
        finally:
            browser.close()


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
