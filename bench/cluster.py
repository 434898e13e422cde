"""Benchmark 4: the research's edge-cluster experiment, re-run on real agents with the real model.

Two agents made heterogeneous by slots (one slot; two slots sharing one core),
each under a sliding-window token budget and with its own power draw; a cloud
tier behind a real SQS-compatible server (moto) whose worker stands in for a
remote large model with a configured WAN + first-token delay, decode rate and
API price. The same arrival trace (steady or bursty) is run under each policy,
and against cloud-only (a site with no agents). Prompts mix short readings with
~1,000-token logs (every fourth job). Reported per run: mean and p95 latency,
deadline hit rate, jobs accepted and then expired, jobs refused, tokens sent to
the cloud, cost per response, the research's utility and PCR
(``broker/planning/merit.py``), the median prediction error per tier (the
decision's predicted completion against the job's accepted-to-final time), and
load balance (max / mean jobs per agent).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench.harness import broker, pct, write
from broker.planning.merit import Quality, pcr, relative_error, utility
from broker.runtime.client import DeviceClient, snapshot
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port
from cloud_bridge.local import LocalSqs, local_env

POLICIES = ("random", "weighted", "load-aware", "deadline")
CLOUD = {"FOGMESH_BRIDGE_CLOUD_LATENCY_S": "0.8", "FOGMESH_BRIDGE_CLOUD_TPS": "80",
         "FOGMESH_BRIDGE_PRICE_IN_PER_1K": "0.0005", "FOGMESH_BRIDGE_PRICE_OUT_PER_1K": "0.0015",
         "FOGMESH_BRIDGE_WAIT_S": "1", "FOGMESH_BRIDGE_STATUS_INTERVAL_S": "1"}
PROMPTS = ["The pump on line {i} reports a pressure of", "Maintenance note {i}: the conveyor belt",
           "Sensor {i} in the cold room shows", "Summarise log {i}:\n" + "\n".join(
               f"10:{m:02d}:{m * 7 % 60:02d} pump-3 pressure={2 + m / 100:.2f} bar temp={40 + m % 9} C status=ok"
               for m in range(40)) + "\nSummary:"]  # the last: a log of ~1,000 tokens


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "broker.cli", *args], stdout=out, stderr=out, env=env)


def placements(ledger: Path, device: str, rows: list[dict[str, Any]]) -> None:
    """Each row's last placement as the coordinator decided it, from the run's ledger: its
    prediction in parts (wait, first token, decode of the tokens assumed), so that a prediction
    far off can be traced to the figure it came from."""
    with contextlib.closing(sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)) as db:
        for row in rows:
            key = f"{device}/{row['job']}"
            found = db.execute("SELECT detail FROM transitions WHERE key = ? AND state IN ('assigned', 'offloaded') "
                               "AND detail IS NOT NULL ORDER BY id DESC LIMIT 1", (key,)).fetchone()
            if found:
                d = orjson.loads(found[0])
                row["decision"] = {k: d.get(k) for k in ("target", "agent", "reason", "predicted_ms", "decided_ms",
                                                         "parts")}


def trace(pattern: str, jobs: int, seconds: float) -> list[float]:
    """Arrival offsets: evenly spaced (steady) or in bursts of 8 (bursty), same count and span."""
    if pattern == "steady":
        return [i * seconds / jobs for i in range(jobs)]
    bursts = max(1, jobs // 8)
    return [(i // 8) * seconds / bursts + (i % 8) * 0.01 for i in range(jobs)]


def run_trace(url: str, site: str, offsets: list[float], max_tokens: int, deadline_ms: int,
              tag: str) -> list[dict[str, Any]]:
    client = DeviceClient(BrokerAddress.parse(url), site, f"dev-{tag}")  # a device per run: job ids repeat
    t0 = time.monotonic()
    ids = []
    for i, off in enumerate(offsets):
        time.sleep(max(0.0, t0 + off - time.monotonic()))
        job = f"j{i}"
        client.send({"id": job, "prompt": PROMPTS[i % len(PROMPTS)].format(i=i), "max_tokens": max_tokens,
                     "deadline_ms": deadline_ms})
        ids.append(job)
    rows = []
    for i, job in enumerate(ids):
        final = client.wait_final(job, deadline_ms / 1000 + 30) or {"status": "lost"}
        arrived = client.arrivals.get(job, [float("nan")])[-1]
        rows.append({"job": job, "offset_s": offsets[i], "status": final["status"],
                     "latency_ms": (arrived - client.sent_at[job]) * 1000,
                     "tier": (final.get("served_by") or {}).get("tier"),
                     "node": (final.get("served_by") or {}).get("node"),
                     "tokens": (final.get("usage") or {}).get("completion_tokens", 0),
                     "prompt_tokens": (final.get("usage") or {}).get("prompt_tokens", 0),
                     "cost": sum((final.get("cost") or {}).get(k, 0.0) for k in ("edge", "cloud")),
                     "timings": final.get("timings") or {}})
    client.close()
    return rows


def metrics(rows: list[dict[str, Any]], deadline_ms: int, agents: list[str]) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done"]
    lat = [r["latency_ms"] for r in done] or [float("nan")]
    cloud_tokens = sum(r["tokens"] for r in done if r["tier"] == "cloud")
    all_tokens = sum(r["tokens"] for r in done) or 1
    per_agent = [sum(1 for r in done if r["node"] == a) for a in agents]
    mean_load = statistics.fmean(per_agent) if per_agent else 0
    return {
        "jobs": len(rows), "done": len(done),
        "latency_mean_ms": statistics.fmean(lat), "latency_p95_ms": pct(lat, 95),
        "deadline_hit_rate": sum(1 for r in done if r["latency_ms"] <= deadline_ms) / len(rows),
        "cloud_token_share": cloud_tokens / all_tokens,
        "cost_per_response": statistics.fmean([r["cost"] for r in done]) if done else float("nan"),
        "expired": sum(1 for r in rows if r["status"] == "expired"),
        "rejected": sum(1 for r in rows if r["status"] == "rejected"), "cloud_tokens": cloud_tokens,
        **merit(rows, deadline_ms),
        "edge_jobs": per_agent, "load_balance": (max(per_agent) / mean_load) if mean_load else float("nan"),
    }


def merit(rows: list[dict[str, Any]], deadline_ms: int) -> dict[str, Any]:
    """Utility, CPR and PCR over every job (an unanswered job has U = 0), and the median relative
    error of the predicted completion per tier, over the jobs answered."""
    u, cpr, ratio = pcr((utility(r["tier"] if r["status"] == "done" else None, r["latency_ms"] / 1000,
                                 deadline_ms / 1000, Quality()), r["cost"] if r["status"] == "done" else 0.0)
                        for r in rows)
    errors: dict[str, list[float]] = {"edge": [], "cloud": []}
    for r in rows:
        t = r["timings"]
        if r["status"] == "done" and r["tier"] in errors and t.get("predicted_ms") and t.get("total_ms"):
            # the prediction counts from its decision, which a job held in the queue met late
            errors[r["tier"]].append(relative_error(t["predicted_ms"], t["total_ms"] - t.get("decided_ms", 0.0)))
    return {"utility": u, "cpr_all": cpr, "pcr": ratio,
            "prediction_error": {k: statistics.median(v) if v else float("nan") for k, v in errors.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--deadline-ms", type=int, default=5000)
    ap.add_argument("--patterns", default="steady,bursty")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--budget-tokens", type=int, default=480)
    ap.add_argument("--budget-window-s", type=float, default=20.0)
    ap.add_argument("--cloud-workers", type=int, default=4)
    ap.add_argument("--workdir", help="keep the daemons' logs and ledgers here (default: a temporary folder)")
    args = ap.parse_args(argv)

    env = {**local_env(), **CLOUD, "FOGMESH_BRIDGE_CLOUD_WORKERS": str(args.cloud_workers)}
    results: dict[str, Any] = {"config": vars(args), "runs": []}
    with broker() as m, tempfile.TemporaryDirectory(prefix="fogmesh-cluster-") as tmpdir:
        tmp = Path(args.workdir or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        sqs = LocalSqs(free_port(), tmp)
        sqs.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            agent_env = {**env, "FOGMESH_AGENT_BUDGET_WINDOW_S": str(args.budget_window_s),
                         "FOGMESH_AGENT_PRICE_PER_KWH": "0.30"}
            common = ["--broker", m.url, "--site", "cluster"]
            for name, slots, watts in (("edge-1slot", 1, 7.0), ("edge-2slot", 2, 10.0)):
                procs.append(spawn(["agent", *common, "--agent-id", name, "--threads", "1", "--slots", str(slots),
                                    "--budget-tokens", str(args.budget_tokens)], tmp / f"{name}.log",
                                   {**agent_env, "FOGMESH_AGENT_POWER_W": str(watts)}))
            for site in ("cluster", "cluster-cloud"):
                procs.append(spawn(["bridge", "--broker", m.url, "--site", site, "--endpoint-url", sqs.url,
                                    "--outbox", str(tmp / f"outbox-{site}.db")], tmp / f"bridge-{site}.log", env))
            for w in range(args.cloud_workers):  # the cloud scales out behind its queue
                procs.append(spawn(["cloud-worker", "--endpoint-url", sqs.url, "--backend", "synthetic",
                                    "--worker-id", f"cloud-{w}"], tmp / f"worker-{w}.log", env))
            cloud_only = spawn(["coordinator", "--broker", m.url, "--site", "cluster-cloud", "--ledger",
                                str(tmp / "ledger-cloud.db")], tmp / "coordinator-cloud.log", env)
            procs.append(cloud_only)
            time.sleep(8)
            agents = ["edge-1slot", "edge-2slot"]
            for pattern in args.patterns.split(","):
                offsets = trace(pattern, args.jobs, args.seconds)
                for policy in [*args.policies.split(","), "cloud-only"]:
                    coord = None
                    site = "cluster-cloud" if policy == "cloud-only" else "cluster"
                    if policy != "cloud-only":
                        coord = spawn(["coordinator", *common, "--policy", policy, "--ledger",
                                       str(tmp / f"ledger-{pattern}-{policy}.db")], tmp / f"coord-{policy}.log", env)
                    _wait_ready(m.url, site, 0 if policy == "cloud-only" else 2)
                    time.sleep(args.budget_window_s)  # let the agents' budget windows empty between runs
                    rows = run_trace(m.url, site, offsets, args.max_tokens, args.deadline_ms, f"{pattern}-{policy}")
                    if coord:
                        placements(tmp / f"ledger-{pattern}-{policy}.db", f"dev-{pattern}-{policy}", rows)
                    res = {"pattern": pattern, "policy": policy, **metrics(rows, args.deadline_ms, agents),
                           "rows": rows}
                    results["runs"].append(res)
                    print(f"{pattern:<7} {policy:<10} mean {res['latency_mean_ms']:7.0f} ms  p95 "
                          f"{res['latency_p95_ms']:7.0f} ms  hit {res['deadline_hit_rate']:.2f}  cloud tokens "
                          f"{res['cloud_tokens']}  expired {res['expired']}  refused {res['rejected']}  CPR "
                          f"{res['cost_per_response']:.2e}  PCR {res['pcr']:.3g}  prediction error edge "
                          f"{res['prediction_error']['edge']:.2f} cloud {res['prediction_error']['cloud']:.2f}  "
                          f"balance {res['load_balance']:.2f}", flush=True)
                    if coord:
                        coord.terminate()
                        coord.wait(30)
            results["agents"] = {a: snapshot(BrokerAddress.parse(m.url), "cluster")["agents"].get(a) for a in agents}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            sqs.stop()
    path = write("cluster", results)
    print(f"-> {path}")
    return 0


def _wait_ready(url: str, site: str, agents: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = snapshot(BrokerAddress.parse(url), site, settle_s=0.3)
        online = [a for a in snap["agents"].values() if a.get("state") == "online"]
        if ((snap["coordinator"] or {}).get("state") == "online" and (snap["bridge"] or {}).get("reachable")
                and len(online) >= agents and (snap["mesh"] or {}).get("agents_online", 0) >= agents):
            return
        time.sleep(0.5)
    raise RuntimeError(f"site {site} not ready")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
