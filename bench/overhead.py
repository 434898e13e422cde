"""Benchmark 1: what the mesh costs over calling the model directly.

The same prompt, model and thread count through three paths, interleaved round
by round so that the machine's noise hits all three alike, each path in a process
of its own as a user would run it:

* mesh: a device publishes to mosquitto; coordinator; agent; chunks back to the device
  (`fogmesh up --agents 1`'s daemons, started as separate processes);
* direct: llama-cpp-python's ``create_completion(stream=True)`` in a process of its own
  (``python -m bench.overhead --direct``), driven over a pipe;
* server: llama-cpp-python's OpenAI-compatible HTTP server, streaming (SSE).

Each round runs with the agent's default sampling and again greedy (temperature 0).
TTFT is from the request to the first token the client sees; decode tokens/s is
(tokens - 1) / (last token - first token) as the client sees them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from agents.model import default_model_path
from bench.harness import site, summary, write
from broker.ops.site import SiteSpec
from broker.runtime.client import DeviceClient
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port, wait_port

PROMPT = "The gateway collects readings from every sensor on the floor and"
# The agent's sampling defaults (agents/settings.py), so the three paths do the same work.
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1}
MODES = {"default": SAMPLING, "greedy": {**SAMPLING, "temperature": 0.0}}
Figures = tuple[float, float, int]


def serve_direct(threads: int) -> int:
    """``--direct``: llama-cpp-python alone in this process, one request per line on stdin."""
    import llama_cpp

    llm = llama_cpp.Llama(str(default_model_path()), n_ctx=2048, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    print("ready", flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        start = time.perf_counter()
        stamps = []
        for _chunk in llm.create_completion(PROMPT, max_tokens=req["max_tokens"], stream=True, **req["sampling"]):
            stamps.append(time.perf_counter())
        print(json.dumps(_figures(start, stamps)), flush=True)
    return 0


class Direct:
    """The direct path's process."""

    def __init__(self, threads: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.overhead", "--direct", "--threads", str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout and self.proc.stdout.readline().strip() == "ready", "the direct process did not start"

    def __call__(self, max_tokens: int, sampling: dict[str, float]) -> Figures:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"max_tokens": max_tokens, "sampling": sampling}) + "\n")
        self.proc.stdin.flush()
        ttft, tps, tokens = json.loads(self.proc.stdout.readline())
        return ttft, tps, tokens

    def close(self) -> None:
        self.proc.communicate(timeout=30)  # closes its stdin (it exits) and its stdout


def server(port: int, max_tokens: int, sampling: dict[str, float]) -> Figures:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "stream": True, **sampling})
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    stamps = []
    for line in resp:
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0].get("text"):
            stamps.append(time.perf_counter())
    conn.close()
    return _figures(start, stamps)


def mesh(client: DeviceClient, job: str, max_tokens: int, sampling: dict[str, float]) -> Figures:
    client.send({"id": job, "prompt": PROMPT, "max_tokens": max_tokens, **sampling})
    final = client.wait_final(job, 120)
    assert final and final["status"] == "done", final
    arrivals = client.arrivals[job]
    ttft = arrivals[0] - client.sent_at[job]
    tokens = final["usage"]["completion_tokens"]
    # the last token reached the device with the last chunk, just before the final message
    decode_s = arrivals[-2] - arrivals[0] if len(arrivals) > 2 else float("nan")
    return ttft, (tokens - 1) / decode_s if decode_s > 0 else float("nan"), tokens


def _figures(start: float, stamps: list[float]) -> Figures:
    if len(stamps) < 2:
        return float("nan"), float("nan"), len(stamps)
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)  # the direct path's own process
    args = ap.parse_args(argv)
    if args.direct:
        return serve_direct(args.threads)

    path = default_model_path()
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--n_threads",
                            str(args.threads), "--n_ctx", "2048", "--port", str(port), "--host", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: dict[str, dict[str, list[Figures]]] = {m: {"mesh": [], "direct": [], "server": []} for m in MODES}
    direct: Direct | None = None
    try:
        assert wait_port("127.0.0.1", port, 60), "llama_cpp.server did not start"
        direct = Direct(args.threads)
        with site(SiteSpec(site="bench", agents=1, slots=1, threads=args.threads)) as s:
            client = DeviceClient(BrokerAddress.parse(s.url), "bench", "bench-dev")
            paths: dict[str, Callable[[str, int, dict[str, float]], Figures]] = {
                "mesh": lambda job, n, sampling: mesh(client, job, n, sampling),
                "direct": lambda _job, n, sampling: direct(n, sampling),
                "server": lambda _job, n, sampling: server(port, n, sampling),
            }
            for warm in range(2):
                for run in paths.values():
                    run(f"warm{warm}", 16, SAMPLING)
            for r in range(args.rounds):
                for mode, sampling in MODES.items():
                    for name, run in paths.items():
                        rows[mode][name].append(run(f"{mode}{r}", args.max_tokens, sampling))
                    print(f"round {r} {mode}: " + "  ".join(
                        f"{k} ttft {v[-1][0] * 1000:.1f} ms {v[-1][1]:.1f} tok/s" for k, v in rows[mode].items()),
                        flush=True)
            client.close()
    finally:
        if direct is not None:
            direct.close()
        srv.terminate()
        srv.wait()
    out: dict[str, Any] = {"rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads}
    for mode, paths_rows in rows.items():
        res: dict[str, Any] = {}
        for path_name, vals in paths_rows.items():
            res[path_name] = {"ttft_ms": summary([v[0] * 1000 for v in vals]),
                              "decode_tps": summary([v[1] for v in vals]),
                              "tokens": summary([float(v[2]) for v in vals])}
        # per round, then the median: each ratio compares runs made seconds apart
        ratios = [m[1] / d[1] for m, d in zip(paths_rows["mesh"], paths_rows["direct"], strict=True)]
        res["mesh_over_direct_tps"] = statistics.median(ratios)
        res["mesh_over_direct_tps_rounds"] = ratios
        res["mesh_over_server_tps"] = res["mesh"]["decode_tps"]["p50"] / res["server"]["decode_tps"]["p50"]
        res["mesh_added_ttft_ms"] = res["mesh"]["ttft_ms"]["p50"] - res["direct"]["ttft_ms"]["p50"]
        res["server_added_ttft_ms"] = res["server"]["ttft_ms"]["p50"] - res["direct"]["ttft_ms"]["p50"]
        out[mode] = res
    out.update(out["default"])  # the figures earlier reports read, at the agent's default sampling
    path_out = write(f"overhead-threads{args.threads}", out)
    for mode in MODES:
        print(f"{mode}: mesh/direct decode ratio {out[mode]['mesh_over_direct_tps']:.3f}; added TTFT "
              f"{out[mode]['mesh_added_ttft_ms']:.2f} ms (server: {out[mode]['server_added_ttft_ms']:.2f} ms)")
    print(f"-> {path_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
