"""Benchmark 2: dispatch latency, from a device's publish to the agent starting the job, and
from the agent's last token to the device's final message, at 1, 10 and 100 jobs/s.

Real mosquitto and coordinator processes; the agents run in this process with a
synthetic backend (2,000 tokens/s) so that the model's own time does not hide the
mesh's, and so their clock is the device's clock.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable

from agents.agent import Agent
from agents.backends.base import Generation
from agents.backends.synthetic import SyntheticBackend
from agents.settings import AgentSettings
from bench.harness import site, summary, write
from broker.ops.site import SiteSpec
from broker.runtime.client import DeviceClient
from broker.runtime.mqtt import BrokerAddress
from schemas.messages import Request


class Probe(SyntheticBackend):
    """Records when each job's generation starts and when its last token is out."""

    def __init__(self, marks: dict[str, dict[str, float]]) -> None:
        super().__init__(tokens_per_s=2000, ttft_s=0.0005)
        self.marks = marks

    def generate(self, request: Request, on_text: Callable[[str], None], cancelled: Callable[[], bool]) -> Generation:
        mark = self.marks.setdefault(request.prompt or "", {})
        mark["start"] = time.monotonic()
        gen = super().generate(request, on_text, cancelled)
        mark["last"] = time.monotonic()
        return gen


def start_agents(url: str, site_id: str, n: int, slots: int, marks: dict[str, dict[str, float]]) -> list[Agent]:
    agents = []
    for i in range(n):
        settings = AgentSettings(broker=url, site=site_id, agent_id=f"syn-{i}", slots=slots, heartbeat_s=2.0)
        agent = Agent(settings, lambda: {"synthetic": Probe(marks)})
        threading.Thread(target=agent.run, daemon=True).start()
        agents.append(agent)
    return agents


def run_rate(client: DeviceClient, marks: dict[str, dict[str, float]], rate: float, n: int,
             tag: str) -> dict[str, object]:
    gap = 1.0 / rate
    t0 = time.monotonic()
    jobs = []
    for i in range(n):
        due = t0 + i * gap
        time.sleep(max(0.0, due - time.monotonic()))
        job = f"{tag}-{i}"
        client.send({"id": job, "prompt": job, "max_tokens": 4})
        jobs.append(job)
    for job in jobs:
        assert client.wait_final(job, 60), f"no answer for {job}"
    dispatch = [(marks[j]["start"] - client.sent_at[j]) * 1000 for j in jobs]
    finish = [(client.arrivals[j][-1] - marks[j]["last"]) * 1000 for j in jobs]
    return {"rate": rate, "jobs": n, "dispatch_ms": summary(dispatch), "finish_ms": summary(finish),
            "elapsed_s": time.monotonic() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1,10,100")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each rate runs")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--slots", type=int, default=4)
    args = ap.parse_args(argv)
    marks: dict[str, dict[str, float]] = {}
    results = []
    with site(SiteSpec(site="bench", agents=0)) as s:
        agents = start_agents(s.url, "bench", args.agents, args.slots, marks)
        time.sleep(2.0)
        client = DeviceClient(BrokerAddress.parse(s.url), "bench", "bench-dev")
        run_rate(client, marks, 20, 20, "warm")
        for rate in (float(r) for r in args.rates.split(",")):
            n = max(10, int(rate * args.seconds))
            res = run_rate(client, marks, rate, n, f"r{rate:g}")
            results.append(res)
            d, f = res["dispatch_ms"], res["finish_ms"]
            print(f"{rate:>6g} jobs/s: dispatch p50 {d['p50']:.2f} ms p99 {d['p99']:.2f} ms; "  # type: ignore[index]
                  f"finish p50 {f['p50']:.2f} ms p99 {f['p99']:.2f} ms", flush=True)  # type: ignore[index]
        client.close()
        for a in agents:
            a.request_stop()
        time.sleep(0.5)
    path = write("dispatch", {"agents": args.agents, "slots": args.slots, "results": results})
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
