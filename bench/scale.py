"""Benchmark 3: coordinator scale, against broker-native shared-subscription dispatch.

10, 100 and 1,000 simulated agents (each a real MQTT client with its own
connection and Last Will, packed into a few processes) advertise a status every
5 s and answer each assignment at once; jobs come from 10,000 device ids. We
measure assignments/s sustained end to end (device publish to final message),
the scheduler's decision time with that many agents, and the coordinator's
resident memory. The baseline is MQTT 5 shared-subscription dispatch
(``$share/...``): no coordinator, no capacity awareness, no ledger.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import secrets
import sys
import threading
import time
from collections import Counter
from typing import Any

import orjson
import psutil

from bench.harness import broker, summary, write
from broker.coordinator.scheduler import AgentView, JobSpec, decide
from broker.runtime.mqtt import BrokerAddress, Message, Session
from schemas import encode
from schemas.messages import AgentEvent, Usage
from schemas.status import AgentStatus, ModelInfo
from schemas.topics import Topics

PER_PROCESS = 250
SITE = "bench"


def _sim_agents(url: str, names: list[str], mode: str, ready: Any, stop: Any, counts: Any) -> None:
    """Run simulated agents: ``fogmesh`` answers assignments; ``share`` answers a shared subscription."""
    address = BrokerAddress.parse(url)
    topics = Topics(SITE)
    served: Counter[str] = Counter()
    sessions: list[Session] = []
    epoch = time.time_ns() // 1_000_000
    seqs = dict.fromkeys(names, 0)

    def status(name: str) -> bytes:
        seqs[name] += 1
        return encode(AgentStatus(agent=name, epoch=epoch, seq=seqs[name], state="online", slots_total=4,
                                  slots_free=4, decode_tps=1000.0, ttft_ms=1.0, heartbeat_s=5.0,
                                  models=[ModelInfo(name="synthetic")]))

    def handler(name: str, own: list[Session]) -> Any:
        def on_message(msg: Message) -> None:
            session = own[0]  # this agent's own connection, set once it exists
            served[name] += 1
            if mode == "share":
                session.publish(f"fogmesh/{SITE}/shareresults/{name}", msg.payload, qos=1)
                return
            a = orjson.loads(msg.payload)
            for kind in ("accepted", "started"):
                session.publish(topics.events(name), encode(AgentEvent(key=a["key"], attempt=a["attempt"],
                                agent=name, epoch=epoch, kind=kind)), qos=1)  # type: ignore[arg-type]
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
        if mode == "fogmesh" and time.monotonic() - last >= 5.0:
            last = time.monotonic()
            for name, s in zip(names, sessions, strict=True):
                s.publish(topics.agent_status(name), status(name), qos=1, retain=True)
    for name, n in served.items():
        counts[name] = n
    for s in sessions:
        if mode == "fogmesh":
            s.publish(topics.agent_status(s.client_id.split("-")[1]), b"", qos=1, retain=True)
        s.stop()


def start_sims(url: str, n: int, mode: str) -> tuple[list[mp.Process], Any, Any]:
    names = [f"sim{i}" for i in range(n)]
    manager = mp.Manager()
    stop, counts = manager.Event(), manager.dict()
    procs, readies = [], []
    for start in range(0, n, PER_PROCESS):
        ready = manager.Event()
        p = mp.Process(target=_sim_agents, args=(url, names[start:start + PER_PROCESS], mode, ready, stop, counts),
                       daemon=True)
        p.start()
        procs.append(p)
        readies.append(ready)
    for r in readies:
        r.wait(300)
    return procs, stop, counts


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


def decision_times(n_agents: int, samples: int = 2000) -> dict[str, float]:
    rng = random.Random(1)
    views = [AgentView(agent=f"a{i}", models=frozenset({"m"}), slots=4, outstanding=rng.randint(0, 5),
                       outstanding_tokens=rng.randint(0, 400), decode_tps=rng.uniform(20, 60),
                       ttft_ms=rng.uniform(20, 200)) for i in range(n_agents)]
    out = []
    for i in range(samples):
        job = JobSpec(key=f"j{i}", max_tokens=64, model="m", deadline_at=time.time() + 5)
        t = time.perf_counter()
        decide(job, views, time.time(), "deadline")
        out.append((time.perf_counter() - t) * 1000)
    return summary(out)


def run_fogmesh(url: str, agents: int, jobs: int, devices: int, tmp: str) -> dict[str, Any]:
    import subprocess

    procs, stop, counts = start_sims(url, agents, "fogmesh")
    coord = subprocess.Popen([sys.executable, "-m", "broker.cli", "coordinator", "--broker", url, "--site", SITE,
                              "--ledger", f"{tmp}/ledger-{agents}.db", "--log-level", "warning"],
                             env={**__import__("os").environ, "FOGMESH_COORDINATOR_MAX_QUEUE": str(jobs * 2)})
    time.sleep(3.0)
    topics = Topics(SITE)
    prompt = orjson.dumps({"prompt": "x", "max_tokens": 1})

    def topic_for(i: int, device: str) -> tuple[str, bytes]:
        return topics.prompts(device), orjson.dumps({"id": f"j{i}", "prompt": "x", "max_tokens": 1})

    assert prompt
    elapsed = submit(url, jobs, devices, topic_for, f"fogmesh/{SITE}/results/#")
    rss = psutil.Process(coord.pid).memory_info().rss
    coord.terminate()
    coord.wait(30)
    stop.set()
    for p in procs:
        p.join(60)
    served = list(counts.values()) or [0]
    return {"agents": agents, "jobs": jobs, "elapsed_s": elapsed, "jobs_per_s": jobs / elapsed,
            "coordinator_rss_mb": rss / 1e6, "balance_max_over_mean": max(served) / (sum(served) / agents),
            "decision_ms": decision_times(agents)}


def run_shared(url: str, agents: int, jobs: int, devices: int) -> dict[str, Any]:
    procs, stop, counts = start_sims(url, agents, "share")

    def topic_for(i: int, device: str) -> tuple[str, bytes]:
        return f"fogmesh/{SITE}/sharejobs", orjson.dumps({"id": f"j{i}", "device": device})

    # shared subscription: each answer echoes its job, on the answering agent's topic
    elapsed = submit(url, jobs, devices, topic_for, f"fogmesh/{SITE}/shareresults/#", lambda msg: msg.payload)
    stop.set()
    for p in procs:
        p.join(60)
    served = list(counts.values()) or [0]
    return {"agents": agents, "jobs": jobs, "elapsed_s": elapsed, "jobs_per_s": jobs / elapsed,
            "balance_max_over_mean": max(served) / (sum(served) / agents)}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="10,100,1000")
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--devices", type=int, default=10_000)
    args = ap.parse_args(argv)
    rows = []
    with broker() as m, tempfile.TemporaryDirectory() as tmp:
        for n in (int(a) for a in args.agents.split(",")):
            fm = run_fogmesh(m.url, n, args.jobs, args.devices, tmp)
            sh = run_shared(m.url, n, args.jobs, args.devices)
            row = {"agents": n, "fogmesh": fm, "shared_subscription": sh,
                   "throughput_ratio": fm["jobs_per_s"] / sh["jobs_per_s"]}
            rows.append(row)
            print(f"{n:>5} agents: fogmesh {fm['jobs_per_s']:.0f} jobs/s (balance {fm['balance_max_over_mean']:.2f},"
                  f" RSS {fm['coordinator_rss_mb']:.0f} MB, decision p50 {fm['decision_ms']['p50']:.3f} ms"
                  f" p99 {fm['decision_ms']['p99']:.3f} ms); shared-sub {sh['jobs_per_s']:.0f} jobs/s"
                  f" (balance {sh['balance_max_over_mean']:.2f}); ratio {row['throughput_ratio']:.2f}", flush=True)
    path = write("scale", {"jobs": args.jobs, "devices": args.devices, "results": rows})
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
