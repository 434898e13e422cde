"""Simulated agents for bench/scale.py: real MQTT clients (their own connection and Last Will, a
retained status every 5 s), packed a few hundred to a process, that answer at once.

Modes: ``fogmesh`` answers each assignment with started (a free slot starts it at once, and its
started says accepted too, as a real agent's does) and done; ``hold`` starts each job and never
ends it (its status lists the jobs it holds, as a real agent's does), so that jobs queue behind
it; ``share`` answers a shared subscription instead of the coordinator (the baseline).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson

from broker.runtime.mqtt import BrokerAddress, Message, Session
from schemas import encode
from schemas.messages import AgentEvent, Usage
from schemas.status import AgentStatus, ModelInfo
from schemas.topics import Topics

PER_PROCESS = 250
SITE = "bench"


def _sim_agents(url: str, names: list[str], mode: str, ready: Any, stop: Any, counts: Any) -> None:
    address = BrokerAddress.parse(url)
    topics = Topics(SITE)
    served: Counter[str] = Counter()
    held: dict[str, list[str]] = {name: [] for name in names}
    sessions: list[Session] = []
    epoch = time.time_ns() // 1_000_000
    seqs = dict.fromkeys(names, 0)

    def status(name: str) -> bytes:
        seqs[name] += 1
        return encode(AgentStatus(agent=name, epoch=epoch, seq=seqs[name], state="online", slots_total=4,
                                  slots_free=4, decode_tps=1000.0, ttft_ms=1.0, heartbeat_s=5.0,
                                  jobs=list(held[name]), models=[ModelInfo(name="synthetic")]))

    def handler(name: str, own: list[Session]) -> Any:
        def on_message(msg: Message) -> None:
            session = own[0]  # this agent's own connection, set once it exists
            served[name] += 1
            if mode == "share":
                session.publish(f"fogmesh/{SITE}/shareresults/{name}", msg.payload, qos=1)
                return
            a = orjson.loads(msg.payload)
            if mode == "hold":
                held[name].append(a["key"])
            session.publish(topics.events(name), encode(AgentEvent(key=a["key"], attempt=a["attempt"],
                            agent=name, epoch=epoch, kind="started")), qos=1)
            if mode == "fogmesh":
                done = AgentEvent(key=a["key"], attempt=a["attempt"], agent=name, epoch=epoch, kind="done",
                                  text="ok", usage=Usage(prompt_tokens=1, completion_tokens=1))
                session.publish(topics.events(name), encode(done), qos=1)
        return on_message

    for name in names:
        own: list[Session] = []
        session = Session(address, f"sim-{name}-{secrets.token_hex(2)}", handler(name, own), persistent=False,
                          keepalive_s=30)
        own.append(session)
        session.start(30)
        if mode == "share":
            session.subscribe(f"$share/bench/fogmesh/{SITE}/sharejobs", qos=1)
        else:
            session.subscribe(topics.assign(name), qos=1)
            session.publish(topics.agent_status(name), status(name), qos=1, retain=True)
        sessions.append(session)
    ready.set()
    last = time.monotonic()
    while not stop.is_set():
        time.sleep(0.2)
        if mode != "share" and time.monotonic() - last >= 5.0:
            last = time.monotonic()
            for name, s in zip(names, sessions, strict=True):
                s.publish(topics.agent_status(name), status(name), qos=1, retain=True)
    for name, n in served.items():
        counts[name] = n
    for name, s in zip(names, sessions, strict=True):
        if mode != "share":
            s.publish(topics.agent_status(name), b"", qos=1, retain=True)
        s.stop()


class Sims:
    """Simulated agents in processes of their own; ``stop()`` ends them and returns what each served."""

    def __init__(self, url: str, n: int, mode: str, prefix: str = "sim") -> None:
        names = [f"{prefix}{i}" for i in range(n)]
        self._manager = mp.Manager()
        self._stop, self._counts = self._manager.Event(), self._manager.dict()
        self._procs, readies = [], []
        for start in range(0, n, PER_PROCESS):
            ready = self._manager.Event()
            p = mp.Process(target=_sim_agents, daemon=True,
                           args=(url, names[start:start + PER_PROCESS], mode, ready, self._stop, self._counts))
            p.start()
            self._procs.append(p)
            readies.append(ready)
        for r in readies:
            r.wait(300)

    def stop(self) -> list[int]:
        self._stop.set()
        for p in self._procs:
            p.join(60)
        served = list(self._counts.values())
        self._manager.shutdown()
        return served


def final_topic(msg: Message) -> str | None:
    """fogmesh: one final message per job, on the job's own result topic."""
    return msg.topic if b'"final":true' in msg.payload else None


def submit(url: str, jobs: int, devices: int, topic_for: Any, result_filter: str,
           result_key: Any = final_topic) -> float:
    """Publish ``jobs`` prompts from ``devices`` device ids; return seconds until every result arrived."""
    got = threading.Semaphore(0)
    seen: set[Any] = set()

    def on_result(msg: Message) -> None:
        key = result_key(msg)
        if key is not None and key not in seen:
            seen.add(key)
            got.release()

    collector = Session(BrokerAddress.parse(url), f"bench-collect-{secrets.token_hex(3)}", on_result, persistent=False)
    collector.start()
    collector.subscribe(result_filter, qos=1)
    publisher = Session(BrokerAddress.parse(url), f"bench-pub-{secrets.token_hex(3)}", lambda m: None,
                        persistent=False)
    publisher.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    for i in range(jobs):
        topic, body = topic_for(i, f"dev{i % devices}")
        publisher.publish(topic, body, qos=1)
    for _ in range(jobs):
        if not got.acquire(timeout=300):
            break
    elapsed = time.monotonic() - t0
    publisher.stop()
    collector.stop()
    return elapsed


def start_coordinator(url: str, ledger: str, **settings: Any) -> subprocess.Popen[bytes]:
    """The real coordinator, in a process of its own; ``settings`` as FOGMESH_COORDINATOR_* variables."""
    env = {**os.environ, **{f"FOGMESH_COORDINATOR_{k.upper()}": str(v) for k, v in settings.items()}}
    return subprocess.Popen([sys.executable, "-m", "broker.cli", "coordinator", "--broker", url, "--site", SITE,
                             "--ledger", ledger, "--log-level", "warning"], env=env)
