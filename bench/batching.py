"""Benchmark: continuous batching, beside separate contexts and a bare batched llama.cpp loop.

For 1, 4 and 8 concurrent jobs, the same prompts, token limit, thread count and sampling (the
agent's defaults) on three sides, interleaved round by round so the machine's noise hits all alike:

* batched: a fogmesh agent with 8 slots sharing one llama.cpp context (the default), the jobs
  sent by a device over mosquitto through a coordinator;
* separate: today's way before batching, an agent with one slot per job, each slot its own context
  and a share of the cores (``--no-batching``), through the same path;
* bare: one llama.cpp context in this process decoding the same sequences in one batch per step
  with the same sampler chain, nothing else: what batching on this machine can reach.

Aggregate tokens/s is every job's completion tokens over the time from the first prompt sent
(the first prefill for the bare loop) to the last final answer; per-job decode tokens/s is each
job's own (tokens - 1) / (generation - TTFT), as the agent reports it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp  # noqa: F401  loaded before numpy, as agents.backends.gpu.load_llama_cpp says why

from agents.backends.llama import LlamaBackend
from agents.backends.sampling import Sampler, Sampling
from agents.model import default_model_path
from bench.harness import broker, summary, write
from broker.runtime.client import DeviceClient, snapshot
from broker.runtime.mqtt import BrokerAddress

PROMPTS = [
    "Write a long report about the sensors on the factory floor, one paragraph per machine:",
    "The gateway collects readings from every sensor on the floor and",
    "Explain to a new technician how the cooling system of the server room works:",
    "A day in the life of a greenhouse irrigation controller begins when",
    "List the steps to calibrate a humidity sensor, with the reason for each:",
    "The history of industrial automation, from the first programmable controllers to",
    "Describe what happens when a wind turbine's vibration sensor reports a fault:",
    "Count from one to one thousand in words: one, two, three, four, five, six,",
]
SAMPLING = Sampling()  # the agent's defaults: temperature 0.7, top-k 40, top-p 0.95, min-p 0.05, penalty 1.1
SIDES = ("batched", "separate", "bare")


class Agent:
    """A site of one coordinator and one agent on the shared broker, as processes."""

    def __init__(self, url: str, site: str, slots: int, threads: int, batching: bool, tmp: Path,
                 gpu_layers: int | None = None, stream: bool = True) -> None:
        self.url, self.site, self.stream = url, site, stream
        self.client: DeviceClient | None = None
        cli = [sys.executable, "-m", "broker.cli"]
        common = ["--broker", url, "--site", site]
        log = self.log = (tmp / f"{site}.log").open("w")
        self.procs = [
            subprocess.Popen([*cli, "coordinator", *common, "--ledger", str(tmp / f"{site}.db")],
                             stdout=log, stderr=subprocess.STDOUT),
            subprocess.Popen([*cli, "agent", *common, "--agent-id", f"{site}-agent", "--slots", str(slots),
                              "--threads", str(threads), *([] if batching else ["--no-batching"]),
                              *([] if gpu_layers is None else [f"--gpu-layers={gpu_layers}"])],
                             stdout=log, stderr=subprocess.STDOUT),
        ]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            mesh = snapshot(BrokerAddress.parse(url), site, settle_s=0.2)["mesh"] or {}
            if mesh.get("agents_online", 0) >= 1:
                break
            if any(p.poll() is not None for p in self.procs):
                break  # a daemon exited: waiting on would only hide why
            time.sleep(0.5)
        else:
            self.close()
            raise RuntimeError(f"the {site} agent did not come online within 180 s")
        if any(p.poll() is not None for p in self.procs):
            self.close()
            raise RuntimeError(f"a daemon of the {site} site exited: {(tmp / f'{site}.log').read_text()[-2000:]}")
        self.client = DeviceClient(BrokerAddress.parse(url), site, f"{site}-dev")
        self.n = 0

    def run(self, prompts: list[str], max_tokens: int) -> dict[str, Any]:
        assert self.client
        jobs = []
        start = time.monotonic()
        for prompt in prompts:
            self.n += 1
            jobs.append(self.client.send({"id": f"j{self.n}", "prompt": prompt, "max_tokens": max_tokens,
                                          "stream": self.stream}))
        finals = [self.client.wait_final(job, 600) for job in jobs]
        assert all(f and f["status"] == "done" for f in finals), finals
        end = max(self.client.arrivals[job][-1] for job in jobs)
        tokens = sum(f["usage"]["completion_tokens"] for f in finals if f)
        return {"tokens": tokens, "seconds": end - start, "tps": tokens / (end - start),
                "job_tps": statistics.fmean(f["timings"]["decode_tps"] for f in finals if f)}

    def close(self) -> None:
        if self.client:
            self.client.close()
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            p.wait(timeout=60)
        self.log.close()


class Bare:
    """One context, ``slots`` sequences, one llama_decode per step for all of them."""

    def __init__(self, threads: int, slots: int, n_ctx: int = 2048, gpu_layers: int | None = None) -> None:
        from llama_cpp import _internals

        self.backend = LlamaBackend(default_model_path(), "bare", n_ctx, threads, gpu_layers=gpu_layers,
                                    own_ctx=False)
        lib = self.lib = self.backend._lib
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_seq_max = n_ctx * slots, slots
        params.n_batch = params.n_ubatch = 1024
        params.n_threads = params.n_threads_batch = threads
        self.ctx = _internals.LlamaContext(model=self.backend._llm._model, params=params, verbose=False)
        self.batch = lib.llama_batch_init(1024, 0, 1)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(entries)
        assert self.lib.llama_decode(self.ctx.ctx, b) == 0

    def run(self, prompts: list[str], max_tokens: int) -> dict[str, Any]:
        lib, backend = self.lib, self.backend
        from schemas.messages import Request

        lib.llama_memory_clear(lib.llama_get_memory(self.ctx.ctx), True)
        start = time.perf_counter()
        tokens = [backend.tokens(Request(prompt=p)) for p in prompts]
        samplers = [Sampler(lib, self.ctx.ctx, backend._vocab, backend._candidates, SAMPLING) for _ in prompts]
        entries, index = [], {}
        for seq, toks in enumerate(tokens):
            entries += [(t, pos, seq, pos == len(toks) - 1) for pos, t in enumerate(toks)]
            index[seq] = len(entries) - 1
        self._decode(entries)
        pos = {seq: len(toks) for seq, toks in enumerate(tokens)}
        counts = dict.fromkeys(range(len(prompts)), 0)
        while index:
            step = []
            for seq, i in index.items():
                samplers[seq].index = i
                token = samplers[seq].sample()
                if backend._is_end(token):
                    continue
                counts[seq] += 1
                if counts[seq] >= max_tokens:
                    continue
                step.append((token, pos[seq], seq, True))
                pos[seq] += 1
            index = {seq: i for i, (_t, _p, seq, _l) in enumerate(step)}
            if step:
                self._decode(step)
        seconds = time.perf_counter() - start
        for s in samplers:
            s.close()
        total = sum(counts.values())
        return {"tokens": total, "seconds": seconds, "tps": total / seconds, "job_tps": None}

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.ctx.close()
        self.backend.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--gpu-layers", type=int, default=None,
                    help="layers to offload on every side (-1: all; default: the agent's, all on a GPU build)")
    ap.add_argument("--out", default="batching", help="results file name under bench/results/")
    ap.add_argument("--no-stream", action="store_true",
                    help="jobs ask for no stream (what the chunks' traffic costs a 2-core machine)")
    args = ap.parse_args(argv)
    slots = max(args.jobs)
    results: dict[str, Any] = {"rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads,
                               "stream": not args.no_stream, "slots": slots, "sampling": SAMPLING.__dict__, "runs": []}
    with tempfile.TemporaryDirectory(prefix="fogmesh-bench-") as tmp, broker() as mosquitto:
        url = str(mosquitto.url)
        batched = Agent(url, "batched", slots, args.threads, True, Path(tmp), args.gpu_layers, not args.no_stream)
        bare = Bare(args.threads, slots, gpu_layers=args.gpu_layers)
        info = bare.backend.info
        results["device"] = {"device": info.device, "gpu_layers": info.gpu_layers, "layers": info.layers}
        print(f"device {info.device}, {info.gpu_layers} of {info.layers} layers offloaded")
        try:
            for jobs in args.jobs:
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(jobs)]
                separate = Agent(url, f"separate{jobs}", jobs, args.threads, False, Path(tmp), args.gpu_layers,
                                 not args.no_stream)
                sides: dict[str, Agent | Bare] = {"batched": batched, "separate": separate, "bare": bare}
                rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
                try:
                    for side in SIDES:  # warm-up
                        sides[side].run(prompts, 8)
                    for _ in range(args.rounds):
                        for side in SIDES:
                            rows[side].append(sides[side].run(prompts, args.max_tokens))
                finally:
                    separate.close()
                run: dict[str, Any] = {"jobs": jobs}
                for side in SIDES:
                    run[side] = {"tps": summary([r["tps"] for r in rows[side]]),
                                 "tokens": summary([r["tokens"] for r in rows[side]])}
                    if side != "bare":
                        run[side]["job_tps"] = summary([r["job_tps"] for r in rows[side]])
                run["batched_over_separate"] = run["batched"]["tps"]["p50"] / run["separate"]["tps"]["p50"]
                run["batched_over_bare"] = run["batched"]["tps"]["p50"] / run["bare"]["tps"]["p50"]
                results["runs"].append(run)
                print(f"{jobs} jobs: batched {run['batched']['tps']['p50']:.1f} tok/s, separate "
                      f"{run['separate']['tps']['p50']:.1f}, bare {run['bare']['tps']['p50']:.1f} "
                      f"({run['batched_over_separate']:.2f}x separate, {run['batched_over_bare']:.2f}x bare)")
        finally:
            bare.close()
            batched.close()
    write(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
