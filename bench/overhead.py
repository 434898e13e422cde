"""Benchmark 1: what the mesh costs over calling the model directly.

The same prompt, model and thread count through three paths, interleaved round
by round so that the machine's noise hits all three alike:

* mesh: a device publishes to mosquitto; coordinator; agent; chunks back to the device;
* direct: llama-cpp-python's ``create_completion(stream=True)`` in this process;
* server: llama-cpp-python's OpenAI-compatible HTTP server, streaming (SSE).

TTFT is from the request to the first token the client sees; decode tokens/s is
(tokens - 1) / (last token - first token) as the client sees them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from typing import Any

from agents.model import default_model_path
from bench.harness import site, summary, write
from broker.ops.site import SiteSpec
from broker.runtime.client import DeviceClient
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port, wait_port

PROMPT = "The gateway collects readings from every sensor on the floor and"
# The agent's sampling defaults (agents/settings.py), so the three paths do the same work.
SAMPLING = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1}


def direct(llm: Any, max_tokens: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    stamps = []
    for _chunk in llm.create_completion(PROMPT, max_tokens=max_tokens, stream=True, **SAMPLING):
        stamps.append(time.perf_counter())
    return _figures(start, stamps)


def server(port: int, max_tokens: int) -> tuple[float, float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "stream": True, **SAMPLING})
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    stamps = []
    for line in resp:
        if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0].get("text"):
            stamps.append(time.perf_counter())
    conn.close()
    return _figures(start, stamps)


def mesh(client: DeviceClient, job: str, max_tokens: int) -> tuple[float, float, int]:
    client.send({"id": job, "prompt": PROMPT, "max_tokens": max_tokens})
    final = client.wait_final(job, 120)
    assert final and final["status"] == "done", final
    arrivals = client.arrivals[job]
    ttft = arrivals[0] - client.sent_at[job]
    tokens = final["usage"]["completion_tokens"]
    # the last token reached the device with the last chunk, just before the final message
    decode_s = arrivals[-2] - arrivals[0] if len(arrivals) > 2 else float("nan")
    return ttft, (tokens - 1) / decode_s if decode_s > 0 else float("nan"), tokens


def _figures(start: float, stamps: list[float]) -> tuple[float, float, int]:
    if len(stamps) < 2:
        return float("nan"), float("nan"), len(stamps)
    return stamps[0] - start, (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import llama_cpp

    path = default_model_path()
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--n_threads",
                            str(args.threads), "--n_ctx", "2048", "--port", str(port), "--host", "127.0.0.1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: dict[str, list[tuple[float, float, int]]] = {"mesh": [], "direct": [], "server": []}
    try:
        assert wait_port("127.0.0.1", port, 60), "llama_cpp.server did not start"
        llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=args.threads, verbose=False)
        with site(SiteSpec(site="bench", agents=1, slots=1, threads=args.threads)) as s:
            client = DeviceClient(BrokerAddress.parse(s.url), "bench", "bench-dev")
            for warm in range(2):
                mesh(client, f"warm{warm}", 16), direct(llm, 16), server(port, 16)
            for r in range(args.rounds):
                rows["mesh"].append(mesh(client, f"r{r}", args.max_tokens))
                rows["direct"].append(direct(llm, args.max_tokens))
                rows["server"].append(server(port, args.max_tokens))
                print(f"round {r}: " + "  ".join(f"{k} ttft {v[-1][0] * 1000:.1f} ms {v[-1][1]:.1f} tok/s"
                                                  for k, v in rows.items()), flush=True)
            client.close()
    finally:
        srv.terminate()
        srv.wait()
    out: dict[str, Any] = {"rounds": args.rounds, "max_tokens": args.max_tokens, "threads": args.threads}
    for path_name, vals in rows.items():
        out[path_name] = {"ttft_ms": summary([v[0] * 1000 for v in vals]),
                          "decode_tps": summary([v[1] for v in vals]),
                          "tokens": summary([float(v[2]) for v in vals])}
    out["mesh_over_direct_tps"] = out["mesh"]["decode_tps"]["p50"] / out["direct"]["decode_tps"]["p50"]
    out["mesh_over_server_tps"] = out["mesh"]["decode_tps"]["p50"] / out["server"]["decode_tps"]["p50"]
    out["mesh_added_ttft_ms"] = out["mesh"]["ttft_ms"]["p50"] - out["direct"]["ttft_ms"]["p50"]
    out["server_added_ttft_ms"] = out["server"]["ttft_ms"]["p50"] - out["direct"]["ttft_ms"]["p50"]
    path_out = write(f"overhead-threads{args.threads}", out)
    print(f"mesh/direct decode ratio {out['mesh_over_direct_tps']:.3f}; added TTFT "
          f"{out['mesh_added_ttft_ms']:.2f} ms (server: {out['server_added_ttft_ms']:.2f} ms) -> {path_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
