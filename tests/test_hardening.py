"""The site tried from the outside: a broker that goes away while the coordinator answers, a
coordinator frozen with SIGSTOP, a daemon of `fogmesh up` that dies, Response Topics, the
WebSockets listener. Each test writes its row of docs/reliability.md (``make reliability``)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from broker.ops.mosquitto import AUTOSAVE_S
from broker.runtime.mqtt import BrokerAddress
from schemas.topics import Topics
from tests.conftest import agent_args, wait_online
from tests.services import FOGMESH, ROOT, Device, Listener, TcpProxy, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.fault]


def accepted(ledger: Path, n: int) -> bool:
    """``n`` jobs are in the coordinator's ledger (it reads the ledger as a second process would)."""
    if not ledger.exists():
        return False
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT count(*) FROM jobs WHERE state != 'rejected'").fetchone()[0] >= n


def ended(ledger: Path, n: int) -> bool:
    """``n`` jobs have their final written in the coordinator's ledger."""
    with sqlite3.connect(ledger) as db:
        return db.execute("SELECT count(*) FROM jobs WHERE final IS NOT NULL").fetchone()[0] >= n


def jobs_behind_a_proxy(daemons, broker_url, device, tmp_path, prefix: str,
                        deadline_ms: int) -> tuple[TcpProxy, Any, list[str]]:
    """A coordinator that reaches the broker through a proxy, and six jobs it accepted that no agent
    will take (so each ends ``expired`` at its deadline)."""
    proxy = TcpProxy(int(broker_url.rsplit(":", 1)[1]))
    coord = daemons("coordinator", "--broker", proxy.url)
    wait_for(lambda: "coordinator_online" in coord.log(), 30, what="the coordinator online")
    ids = [device.send({"id": f"{prefix}{i}", "prompt": "Nobody is here to answer:", "deadline_ms": deadline_ms})
           for i in range(6)]
    wait_for(lambda: accepted(tmp_path / "ledger.db", 6), 10, what="six jobs accepted")
    return proxy, coord, ids


def expired_once(device, coord, ids: list[str], fault: str, action: str) -> None:
    finals = {job: device.final(job, timeout_s=30) for job in ids}
    time.sleep(1.5)  # room for a second copy to arrive
    assert coord.alive(), coord.log()[-3000:]
    assert {f["status"] for f in finals.values()} == {"expired"}
    row = device.tally(fault, action, ids)
    # On a failure, what tells a second final the coordinator made (its total_ms differs) from one
    # copy the transport delivered twice (identical), and what the coordinator logged for each job.
    twice = {job: device.finals[job] for job in ids if len(device.finals.get(job, [])) > 1}
    said = [line for line in coord.log().splitlines() if any(job in line for job in twice) or "mqtt_" in line]
    assert row["lost"] == 0 and row["twice"] == 0, (row, twice, said[-40:])


def test_finals_due_while_the_broker_is_unreachable_are_sent_when_it_is_back(daemons, broker_url, site_id, device,
                                                                             tmp_path):
    # Their 3 s deadlines pass while the coordinator is cut off from the broker, so it expires
    # them and publishes six finals into a dead connection.
    proxy, coord, ids = jobs_behind_a_proxy(daemons, broker_url, device, tmp_path, "cut", 3000)
    try:
        proxy.cut()
        time.sleep(6)
        assert coord.alive(), coord.log()[-3000:]
        proxy.restore()
        expired_once(device, coord, ids, "broker unreachable while finals are due",
                     "coordinator cut off from the broker for 6 s while six 3 s deadlines passed")
    finally:
        proxy.close()


def test_finals_whose_acknowledgement_was_lost_in_a_cut_reach_the_device_once(daemons, broker_url, site_id,
                                                                               device, tmp_path):
    # The broker takes the six finals, but its acknowledgements die with the connection: the
    # coordinator sends them again on reconnect, and the device must not see two.
    proxy, coord, ids = jobs_behind_a_proxy(daemons, broker_url, device, tmp_path, "held", 2000)
    try:
        proxy.hold_replies()
        wait_for(lambda: ended(tmp_path / "ledger.db", 6), 15, what="six finals written")
        time.sleep(1)  # and sent: they reach the broker, which answers into the void
        proxy.cut()
        time.sleep(2)
        proxy.restore()
        wait_for(lambda: "mqtt_connected" in coord.log().split("mqtt_lost", 1)[-1], 30,
                 what="the coordinator back on the broker")
        expired_once(device, coord, ids, "broker's acknowledgements lost in a cut",
                     "six finals reach the broker, its acknowledgements are dropped, the link is cut for 2 s")
    finally:
        proxy.close()


def test_a_coordinator_frozen_with_sigstop_answers_everything_when_it_wakes(daemons, broker_url, site_id, device):
    coord = daemons("coordinator", env={"FOGMESH_COORDINATOR_KEEPALIVE_S": "2"})
    wait_for(lambda: "coordinator_online" in coord.log(), 30, what="the coordinator online")
    ids = [device.send({"id": f"frozen{i}", "prompt": "Wait for me:", "deadline_ms": 2000}) for i in range(4)]
    time.sleep(0.5)
    coord.signal(signal.SIGSTOP)
    try:
        ids += [device.send({"id": f"frozen{i}", "prompt": "Sent while it sleeps:", "deadline_ms": 2000})
                for i in range(4, 8)]
        time.sleep(8)  # the broker gives up on it after 1.5 x keepalive; every deadline passes
    finally:
        coord.signal(signal.SIGCONT)
    finals = {job: device.final(job, timeout_s=30) for job in ids}
    time.sleep(1)
    assert coord.alive(), coord.log()[-3000:]
    assert {f["status"] for f in finals.values()} == {"expired"}
    row = device.tally("coordinator frozen (SIGSTOP)", "SIGSTOP for 8 s (keepalive 2 s) with 8 jobs due, "
                       "then SIGCONT", ids)
    assert row["lost"] == 0 and row["twice"] == 0


def test_a_response_topic_under_the_devices_results_gets_the_stream_and_outside_it_is_refused(
        daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    t = Topics(site_id)
    mine = t.results(device.device_id, "replies/r1")
    replies = Listener(BrokerAddress.parse(broker_url), mine, "elsewhere/#")
    try:
        job = device.send({"id": "r1", "prompt": "MQTT is", "max_tokens": 12}, response_topic=mine,
                          correlation=b"c-42")
        bad = device.send({"id": "r2", "prompt": "MQTT is"}, response_topic="elsewhere/replies")
        assert device.final(job)["status"] == "done"
        final = device.final(bad)
        assert final["status"] == "rejected" and final["error"]["code"] == "bad_response_topic"
        assert t.results(device.device_id, "") in final["error"]["message"]
        got = replies.topics(0.5)
        assert got and set(got) == {mine}  # the stream and the final, and nothing outside fogmesh's tree
        assert replies.messages[-1][1]["final"] and replies.messages[-1][1]["text"] == device.finals[job][0]["text"]
    finally:
        replies.close()


def test_the_websockets_listener_binds_loopback_only(mosquitto):
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                 and c.laddr.port in (mosquitto.port, mosquitto.ws_port)]
    assert {c.laddr.port for c in listening} == {mosquitto.port, mosquitto.ws_port}
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening


def test_finals_are_marked_delivered_within_milliseconds_of_the_puback(daemons, broker_url, site_id, device,
                                                                        tmp_path):
    """The window in which a killed coordinator re-sends a final on restart: from the broker's
    acknowledgement to the ledger's record of it (measured here from the device's side)."""
    coord = daemons("coordinator")
    ledger = tmp_path / "ledger.db"
    wait_for(lambda: "coordinator_online" in coord.log(), 30, what="the coordinator online")
    db = sqlite3.connect(ledger)
    windows = []
    try:
        for i in range(20):
            job = device.send({"id": f"w{i}", "prompt": ""})  # rejected at once: a final without an agent
            device.final(job)
            got_at = device.arrivals[job][-1]
            wait_for(lambda j=job: db.execute("SELECT delivered FROM jobs WHERE key = ?",
                                              [f"{device.device_id}/{j}"]).fetchone() == (1,), 5, every_s=0.0005,
                     what="the final's delivery in the ledger")
            windows.append((time.monotonic() - got_at) * 1000)
    finally:
        db.close()
    median = statistics.median(windows)
    out = os.environ.get("FOGMESH_RELIABILITY_OUT")
    if out:
        with open(out, "ab") as fh:
            fh.write(orjson.dumps({"window_ms": {"median": round(median, 2), "max": round(max(windows), 2),
                                                 "n": len(windows)}}) + b"\n")
    # a loop pass, not a poll interval: the PUBACK wakes the loop (it was one loop, up to 100 ms)
    assert median < 50, windows


def up(tmp_path: Path, output: list[str], *extra: str) -> tuple[subprocess.Popen[str], dict[str, int], str]:
    """``fogmesh up`` as a user runs it, in a terminal's process group of its own (so that a test can
    send Ctrl-C to the group, as a terminal does); its output goes on into ``output``. Returns the
    process, the pids its banner printed and its broker URL."""
    env = {**os.environ, "FOGMESH_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*FOGMESH, "up", "--site", f"up{os.getpid()}", "--agents", "2", *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        output.append(line)
        if line.strip().startswith("try:"):
            break
    stream = proc.stdout

    def drain() -> None:
        with stream:
            output.extend(stream)

    threading.Thread(target=drain, daemon=True).start()
    banner = "".join(output)
    pids = {m[0]: int(m[1]) for m in re.findall(r"^\s+(\S+)\s+pid (\d+)", banner, re.M)}
    pids["mosquitto"] = int(re.search(r"mosquitto pid (\d+)", banner)[1])  # type: ignore[index]
    url = re.search(r"broker\s+(mqtt://\S+)", banner)[1]  # type: ignore[index]
    return proc, pids, url


def test_fogmesh_up_restarts_a_dead_daemon_and_its_broker_and_ctrl_c_stops_in_order(tmp_path):
    output: list[str] = []
    proc, pids, url = up(tmp_path, output)
    device = None
    try:
        site = f"up{os.getpid()}"
        device = Device(BrokerAddress.parse(url), site, "sensor-up", persistent=True)
        os.kill(pids["agent-1"], signal.SIGKILL)
        ids = [device.send({"id": f"u{i}", "prompt": f"Reading {i}:", "max_tokens": 8}) for i in range(6)]
        assert all(device.final(j, timeout_s=90)["status"] == "done" for j in ids)
        wait_online(url, site, 2, timeout_s=60)  # agent-1 is back
        # mosquitto saves its sessions every AUTOSAVE_S: killed sooner, it comes back with a final
        # it delivered since still owed to the device, and redelivers it (at least once, as
        # docs/reliability.md says). This test is about fogmesh up bringing it back.
        time.sleep(AUTOSAVE_S + 1)
        os.kill(pids["mosquitto"], signal.SIGKILL)
        time.sleep(1)
        ids += [device.send({"id": "after-broker", "prompt": "Back:", "max_tokens": 8}, wait=False)]
        assert device.final("after-broker", timeout_s=90)["status"] == "done"
        assert proc.poll() is None, "fogmesh up exited when one of its processes died"
        children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        assert pids["agent-1"] not in children and pids["coordinator"] in children
        row = device.tally("fogmesh up: a process dies", "agent SIGKILLed, then the site's mosquitto SIGKILLed; "
                           "both restarted by fogmesh up", ids)
        assert row["lost"] == 0 and row["twice"] == 0, ({j: device.finals.get(j) for j in ids}, "".join(output)[-4000:])
        # Ctrl-C reaches only `fogmesh up` (its children run in sessions of their own), which drains
        # the agents first and stops the broker last
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(output)[-3000:]
        time.sleep(0.5)
        log = "".join(output)
        assert not [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert log.index("process_died name=agent-1") < log.index("process_restarted name=agent-1")
        assert "process_restarted name=mosquitto" in log
        # the agents drained and stopped before the coordinator, and the broker outlived both
        assert log.rindex("agent_stopped") < log.index("coordinator_stopped") < log.index("site_stopped")
        assert "process_killed" not in log
    finally:
        if device:
            device.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.2)  # the drain thread sees the end of the output and closes it


def test_a_flood_of_maximum_size_prompts_leaves_memory_and_the_ledger_bounded(daemons, broker_url, site_id,
                                                                               device, tmp_path):
    # No agent: every accepted prompt waits until its deadline. Finished jobs are forgotten after ~2 s.
    coord = daemons("coordinator", env={"FOGMESH_COORDINATOR_LEDGER_RETENTION_H": "0.0005"})
    wait_for(lambda: "coordinator_online" in coord.log(), 30, what="the coordinator online")
    rss_before = psutil.Process(coord.pid).memory_info().rss / 2**20
    filler = "x" * (65536 - 200)  # as large as the site accepts (max_prompt_bytes 64 KiB)
    ids = [device.send({"id": f"big{i}", "prompt": filler, "deadline_ms": 3000}, wait=False) for i in range(5000)]
    rss_peak = rss_before

    def answered() -> bool:
        nonlocal rss_peak
        rss_peak = max(rss_peak, psutil.Process(coord.pid).memory_info().rss / 2**20)
        return all(j in device.finals for j in ids)

    wait_for(answered, 240, every_s=0.1, what="a final for every prompt")
    statuses = {}
    for j in ids:
        final = device.finals[j][0]
        key = final["status"] + (f"/{final['error']['code']}" if final["status"] == "rejected" else "")
        statuses[key] = statuses.get(key, 0) + 1
    db = sqlite3.connect(tmp_path / "ledger.db")
    try:
        wait_for(lambda: db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0, 60, every_s=1,
                 what="the ledger's retention to forget the flood")
    finally:
        db.close()
    row = device.tally("flood of maximum-size prompts", f"5,000 prompts of 64 KiB, no agent: "
                       f"{statuses}; coordinator RSS {rss_before:.0f} -> {rss_peak:.0f} MB; ledger emptied "
                       "by its retention", ids)
    assert row["lost"] == 0 and row["twice"] == 0
    assert set(statuses) <= {"expired", "rejected/overloaded"} and statuses.get("rejected/overloaded")
    assert coord.alive()
    # the coordinator's memory bound, as docs/benchmarks.md states it for 100,000 queued jobs: 200 MB
    # (its inbox holds what paho has read ahead of it, up to 64 KiB a prompt here)
    assert rss_peak < 200, f"coordinator RSS {rss_before:.0f} -> {rss_peak:.0f} MB"
