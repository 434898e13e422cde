"""Benchmark: how fast JSON-Schema-constrained decoding is, beside free decoding, on the bundled model.

Three ways to decode the same request, interleaved round by round so that the machine's noise
hits all three alike, all in this process with the same thread count:

* free: fogmesh's llama.cpp backend, no response_format;
* fogmesh: the same backend with a json_schema response_format (the drawn token is checked against
  the grammar, the whole vocabulary filtered only when it is rejected);
* llama-cpp-python: ``Llama.generate`` with the same grammar in its sampler chain (applied to the
  whole vocabulary at every step), the way llama-cpp-python's server and ``create_completion`` do it.

Decode tokens/s is (tokens - 1) / (generation time - time to first token). Every constrained
answer is validated against the schema; the run fails if one is not valid.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jsonschema
import llama_cpp  # noqa: F401  loaded before numpy, as agents.backends.gpu.load_llama_cpp says why
import orjson

from agents.backends.llama import LlamaBackend
from agents.backends.sampling import Sampling
from agents.model import default_model_path
from bench.harness import summary, write
from schemas import output
from schemas.messages import ChatMessage, JsonSchemaFormat, Request, ResponseFormat

SCHEMA = {
    "type": "object",
    "properties": {
        "site": {"type": "string", "maxLength": 24},
        "readings": {"type": "array", "minItems": 3, "maxItems": 3, "items": {
            "type": "object",
            "properties": {"sensor": {"type": "string", "maxLength": 16}, "celsius": {"type": "number"},
                           "level": {"enum": ["ok", "warn", "alarm"]}},
            "required": ["sensor", "celsius", "level"]}},
    },
    "required": ["site", "readings"],
}
MESSAGES = [ChatMessage(role="user", content="List three temperature sensors of the plant with their readings and "
                                             "a level (ok, warn or alarm), as JSON.")]
SAMPLING = Sampling()  # the agent's defaults: temperature 0.7, top-k 40, top-p 0.95, min-p 0.05


def figures(start: float, first: float, end: float, tokens: int) -> dict[str, float]:
    decode_s = end - first
    return {"tokens": tokens, "ttft_ms": (first - start) * 1000,
            "decode_tps": (tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0}


def fogmesh(backend: LlamaBackend, request: Request) -> tuple[dict[str, float], str]:
    stamps: list[float] = []
    start = time.perf_counter()
    gen = backend.generate(request, lambda _t: stamps.append(time.perf_counter()), lambda: False)
    end = time.perf_counter()
    first = start + gen.ttft_s
    return figures(start, first, end, gen.completion_tokens), gen.text


def chain(backend: LlamaBackend, request: Request, gbnf: str) -> tuple[dict[str, float], str]:
    """llama-cpp-python's own way: the grammar inside the sampler chain."""
    from llama_cpp import LlamaGrammar

    llm = backend._llm
    tokens = backend.tokens(request)
    grammar = LlamaGrammar.from_string(gbnf, verbose=False)
    s = SAMPLING
    out: list[int] = []
    start = time.perf_counter()
    first = 0.0
    llm.reset()
    for token in llm.generate(tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temp=s.temperature,
                              repeat_penalty=s.repeat_penalty, grammar=grammar, reset=True):
        if not out:
            first = time.perf_counter()
        if backend._is_end(token) or len(out) >= request.max_tokens:
            break
        out.append(token)
    end = time.perf_counter()
    return figures(start, first, end, len(out)), llm.detokenize(out).decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    backend = LlamaBackend(default_model_path(), "bench", 2048, args.threads, SAMPLING)
    fmt = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="plant", schema=SCHEMA))
    free = Request(messages=MESSAGES, max_tokens=args.max_tokens)
    constrained = Request(messages=MESSAGES, max_tokens=args.max_tokens, response_format=fmt)
    gbnf = output.grammar(fmt)
    assert gbnf is not None
    runs: dict[str, list[dict[str, float]]] = {"free": [], "fogmesh": [], "llama-cpp-python": []}
    invalid: list[str] = []
    backend.generate(free, lambda _t: None, lambda: False)  # warm up
    for _ in range(args.rounds):
        runs["free"].append(fogmesh(backend, free)[0])
        for name, (figs, text) in (("fogmesh", fogmesh(backend, constrained)),
                                   ("llama-cpp-python", chain(backend, constrained, gbnf))):
            runs[name].append(figs)
            try:
                jsonschema.validate(orjson.loads(text), SCHEMA)
            except (orjson.JSONDecodeError, jsonschema.ValidationError) as exc:
                if figs["tokens"] < args.max_tokens:  # a cut-off answer is incomplete, not invalid
                    invalid.append(f"{name}: {str(exc)[:120]}: {text[:200]!r}")
    backend.close()
    out: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "max_tokens": args.max_tokens,
                           "schema": SCHEMA}
    for name, rows in runs.items():
        out[name] = {key: summary([r[key] for r in rows]) for key in ("decode_tps", "ttft_ms", "tokens")}
    free_tps = out["free"]["decode_tps"]["p50"]
    out["ratio_fogmesh"] = out["fogmesh"]["decode_tps"]["p50"] / free_tps
    out["ratio_llama_cpp_python"] = out["llama-cpp-python"]["decode_tps"]["p50"] / free_tps
    out["invalid"] = invalid
    path = write("structured", out)
    print(f"decode tokens/s (median of {args.rounds}): free {free_tps:.1f}, "
          f"fogmesh constrained {out['fogmesh']['decode_tps']['p50']:.1f} ({out['ratio_fogmesh']:.2f}x), "
          f"llama-cpp-python constrained {out['llama-cpp-python']['decode_tps']['p50']:.1f} "
          f"({out['ratio_llama_cpp_python']:.2f}x); invalid answers: {len(invalid)} -> {path}")
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
