"""Benchmark 3, its backlog part: the coordinator holding 100,000 queued jobs, and restarted with them.

Ten simulated agents hold every job they get (start it and never finish it), so what the
devices send beyond their 50 places waits in the coordinator's queue and ledger. Once all of
it is queued we read the coordinator's resident memory; then kill it (SIGKILL, a crash) and
start it again with one more agent that answers, and time, from the start of the new process,
until it is online (its retained status, with its new pid) and until it has answered a prompt
sent as it started (priority 9; jobs age slowly in this run, so that it goes before the backlog).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import orjson
import psutil

from bench.sims import SITE, Sims, start_coordinator
from broker.runtime.mqtt import BrokerAddress, Message, Session
from schemas.topics import Topics

HOLDERS = 10


class Watch:
    """What the devices and dashboards see: the site's mesh status, the coordinator's, the probe's final."""

    def __init__(self, url: str) -> None:
        self.topics = Topics(SITE)
        self.held = 0  # queued + running, as the mesh status says
        self.mesh: dict[str, Any] = {}  # the latest mesh status
        self.online_pid = 0
        self.answered: dict[str, Any] | None = None
        self.changed = threading.Condition()
        self.session = Session(BrokerAddress.parse(url), f"bench-watch-{secrets.token_hex(3)}", self._on,
                               persistent=False)
        self.session.start()
        for topic in (self.topics.mesh_status, self.topics.coordinator_status, f"fogmesh/{SITE}/results/probe/#"):
            self.session.subscribe(topic, qos=1)

    def _on(self, msg: Message) -> None:
        body = orjson.loads(msg.payload) if msg.payload else {}
        with self.changed:
            if msg.topic == self.topics.mesh_status:
                self.mesh = body
                self.held = body.get("queue_depth", 0) + body.get("running", 0)
            elif msg.topic == self.topics.coordinator_status:
                self.online_pid = body.get("pid", 0) if body.get("state") == "online" else 0
            elif body.get("final"):
                self.answered = body
            self.changed.notify_all()

    def wait(self, what: Any, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(what, timeout_s)


def run_backlog(url: str, jobs: int, devices: int, tmp: str) -> dict[str, Any]:
    ledger = f"{tmp}/ledger-backlog.db"
    settings = {"max_queue": jobs * 2, "aging_s": 3600}
    holders = Sims(url, HOLDERS, "hold", prefix="hold")
    watch = Watch(url)
    coord = start_coordinator(url, ledger, **settings)
    assert watch.wait(lambda: watch.online_pid == coord.pid, 60), "the coordinator did not come online"
    publisher = Session(BrokerAddress.parse(url), f"bench-pub-{secrets.token_hex(3)}", lambda m: None,
                        persistent=False)
    publisher.start()
    topics = Topics(SITE)
    t0 = time.monotonic()
    for i in range(jobs):
        publisher.publish(topics.prompts(f"dev{i % devices}"),
                          orjson.dumps({"id": f"b{i}", "prompt": "x", "max_tokens": 1, "priority": 0}), qos=1)
    filled = watch.wait(lambda: watch.held >= jobs, 600)
    fill_s = time.monotonic() - t0
    time.sleep(1.0)  # a second of serving with the full queue: timers, statuses, heartbeats
    queued_rss = psutil.Process(coord.pid).memory_info().rss
    coord.kill()
    coord.wait(30)

    server = Sims(url, 1, "fogmesh", prefix="fast")
    t0 = time.monotonic()
    coord = start_coordinator(url, ledger, **settings)
    publisher.publish(topics.prompts("probe"), orjson.dumps({"id": "p1", "prompt": "x", "max_tokens": 1,
                                                             "priority": 9}), qos=1)
    online = watch.wait(lambda: watch.online_pid == coord.pid, 120)
    online_s = time.monotonic() - t0
    answered = watch.wait(lambda: watch.answered is not None, 120)
    answered_s = time.monotonic() - t0
    restarted_rss = psutil.Process(coord.pid).memory_info().rss
    coord.terminate()
    coord.wait(60)
    publisher.stop()
    watch.session.stop()
    server.stop()
    holders.stop()
    return {"jobs": jobs, "queued": watch.held if filled else None, "fill_s": fill_s,
            "queued_rss_mb": queued_rss / 1e6, "online_s": online_s if online else None,
            "answered_s": answered_s if answered else None,
            "answer": (watch.answered or {}).get("status"), "restarted_rss_mb": restarted_rss / 1e6}
