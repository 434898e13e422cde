"""Benchmark 3: coordinator scale, against broker-native shared-subscription dispatch.

10, 100 and 1,000 simulated agents (each a real MQTT client with its own
connection and Last Will, packed into a few processes: bench/sims.py) advertise
a status every 5 s and answer each assignment at once; jobs come from 10,000
device ids. We measure assignments/s sustained end to end (device publish to
final message), the scheduler's decision time with that many agents (as the
coordinator makes it, from its index, and by the full scan), and the
coordinator's resident memory. The baseline is MQTT 5 shared-subscription
dispatch (``$share/...``): no coordinator, no capacity awareness, no ledger.
Then the coordinator's memory with 100,000 jobs queued, and how soon it serves
again when killed and restarted with them (bench/backlog.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from typing import Any

import orjson
import psutil

from bench import pyspy
from bench.backlog import Watch, run_backlog
from bench.harness import broker, summary, write
from bench.sims import SITE, Sims, start_coordinator, submit
from broker.coordinator.index import AgentIndex
from broker.coordinator.scheduler import AgentView, JobSpec, decide
from schemas.topics import Topics


def decision_times(n_agents: int, samples: int = 2000) -> dict[str, dict[str, float]]:
    """The deadline policy's decision over ``n_agents`` in this process: from the index
    (``indexed``), what keeping the index in step costs after it (``upkeep``: the chosen agent's view
    made anew with its new load and put back, as dispatch does), and the full scan it replaced
    (``scan``), timed in a pass of its own: a 1,000-agent scan between two indexed decisions leaves
    the next one to start from cold caches, which no coordinator does."""
    rng = random.Random(1)
    views = [AgentView(agent=f"a{i}", models=frozenset({"m"}), slots=4, outstanding=rng.randint(0, 5),
                       outstanding_tokens=rng.randint(0, 400), decode_tps=rng.uniform(20, 60),
                       ttft_ms=rng.uniform(20, 200)) for i in range(n_agents)]
    index = AgentIndex()
    for v in views:
        index.put(v)
    indexed, upkeep, scan = [], [], []
    jobs = [JobSpec(key=f"j{i}", max_tokens=64, model="m", deadline_at=time.time() + 5) for i in range(samples)]
    for job in jobs:
        t = time.perf_counter()
        d = index.decide(job, time.time(), "deadline")
        indexed.append((time.perf_counter() - t) * 1000)
        if d.agent is not None:  # the job lands there; one ends on another agent, so the load stays level
            t = time.perf_counter()
            placed = index.get(d.agent)
            assert placed is not None
            index.put(dataclasses.replace(placed, outstanding=placed.outstanding + 1))
            upkeep.append((time.perf_counter() - t) * 1000)
        freed = views[rng.randrange(n_agents)].agent
        v = index.get(freed)
        assert v is not None
        index.put(dataclasses.replace(v, outstanding=max(0, v.outstanding - 1)))
    views = index.views()
    for job in jobs[: max(1, samples // 4)]:
        t = time.perf_counter()
        decide(job, views, time.time(), "deadline")
        scan.append((time.perf_counter() - t) * 1000)
    return {"indexed": summary(indexed), "upkeep": summary(upkeep), "scan": summary(scan)}


def run_fogmesh(url: str, agents: int, jobs: int, devices: int, tmp: str, profile: bool = False) -> dict[str, Any]:
    sims = Sims(url, agents, "fogmesh")
    coord = start_coordinator(url, f"{tmp}/ledger-{agents}.db", max_queue=jobs * 2)
    time.sleep(3.0)
    topics = Topics(SITE)

    def topic_for(i: int, device: str) -> tuple[str, bytes]:
        return topics.prompts(device), orjson.dumps({"id": f"j{i}", "prompt": "x", "max_tokens": 1})

    watch = Watch(url)
    recording = pyspy.record(coord.pid) if profile else None
    elapsed = submit(url, jobs, devices, topic_for, f"fogmesh/{SITE}/results/#")
    where = recording.stop() if recording else None
    ended = time.time()
    rss = psutil.Process(coord.pid).memory_info().rss
    # The coordinator's own decision times (its last 4,096), from a mesh status made after the run.
    watch.wait(lambda: watch.mesh.get("ts", 0) > ended + 1.5, 15.0)  # its last minute is made once a second
    recent = watch.mesh.get("recent") or {}
    watch.session.stop()
    coord.terminate()
    coord.wait(30)
    served = sims.stop() or [0]
    return {"agents": agents, "jobs": jobs, "elapsed_s": elapsed, "jobs_per_s": jobs / elapsed,
            "coordinator_rss_mb": rss / 1e6, "balance_max_over_mean": max(served) / (sum(served) / agents),
            "decision_ms": {**decision_times(agents),
                            "coordinator": {"p50": recent.get("decision_p50_ms"), "p99": recent.get("decision_p99_ms"),
                                            "wall_p99": recent.get("decision_wall_p99_ms")}},
            "profile": where}


def run_shared(url: str, agents: int, jobs: int, devices: int) -> dict[str, Any]:
    sims = Sims(url, agents, "share")

    def topic_for(i: int, device: str) -> tuple[str, bytes]:
        return f"fogmesh/{SITE}/sharejobs", orjson.dumps({"id": f"j{i}", "device": device})

    # shared subscription: each answer echoes its job, on the answering agent's topic
    elapsed = submit(url, jobs, devices, topic_for, f"fogmesh/{SITE}/shareresults/#", lambda msg: msg.payload)
    served = sims.stop() or [0]
    return {"agents": agents, "jobs": jobs, "elapsed_s": elapsed, "jobs_per_s": jobs / elapsed,
            "balance_max_over_mean": max(served) / (sum(served) / agents)}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", default="10,100,1000")
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--backlog", type=int, default=100_000, help="jobs queued for the memory and restart run (0: none)")
    ap.add_argument("--profile", default="100", help="agent counts whose coordinator py-spy profiles (none: '')")
    args = ap.parse_args(argv)
    rows = []
    held: dict[str, Any] | None = None
    with broker() as m, tempfile.TemporaryDirectory() as tmp:
        profiled = {int(a) for a in args.profile.split(",") if a}
        for n in (int(a) for a in args.agents.split(",")):
            fm = run_fogmesh(m.url, n, args.jobs, args.devices, tmp, profile=n in profiled)
            sh = run_shared(m.url, n, args.jobs, args.devices)
            row = {"agents": n, "fogmesh": fm, "shared_subscription": sh,
                   "throughput_ratio": fm["jobs_per_s"] / sh["jobs_per_s"]}
            rows.append(row)
            dm, dc = fm["decision_ms"]["indexed"], fm["decision_ms"]["coordinator"]
            print(f"{n:>5} agents: fogmesh {fm['jobs_per_s']:.0f} jobs/s (balance {fm['balance_max_over_mean']:.2f},"
                  f" RSS {fm['coordinator_rss_mb']:.0f} MB, decision p50 {dm['p50']:.3f} ms"
                  f" p99 {dm['p99']:.3f} ms alone; in the coordinator p50 {dc['p50']} ms, p99 {dc['p99']} ms,"
                  f" wall-clock p99 {dc['wall_p99']} ms);"
                  f" shared-sub {sh['jobs_per_s']:.0f} jobs/s"
                  f" (balance {sh['balance_max_over_mean']:.2f}); ratio {row['throughput_ratio']:.2f}", flush=True)
        if args.backlog:
            held = run_backlog(m.url, args.backlog, args.devices, tmp)
            print(f"{args.backlog} jobs queued: coordinator RSS {held['queued_rss_mb']:.0f} MB; killed and restarted:"
                  f" online after {held['online_s']:.2f} s, a new prompt answered after {held['answered_s']:.2f} s"
                  f" (RSS {held['restarted_rss_mb']:.0f} MB)", flush=True)
    path = write("scale", {"jobs": args.jobs, "devices": args.devices, "results": rows, "backlog": held})
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
