"""``fogmesh probe``: which models are feasible on this device, measured.

For each GGUF: load time, resident memory, prefill and decode tokens/s and TTFT at a
few prompt sizes, the KV cache per token (from the file's own metadata), and so the
largest context that fits in the memory available now; plus the figures an agent on
this device would advertise (its calibration run). The research's first result,
repeated on the device itself rather than taken from a table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.agent import CALIBRATION_PROMPT
from agents.backends.base import Backend
from agents.backends.gpu import gpu_devices
from agents.backends.llama import LlamaBackend
from agents.backends.sampling import Sampling
from agents.calibration import concurrent_rate
from agents.engines import slot_factory
from agents.errors import AgentError
from agents.settings import AgentSettings
from agents.status import mem_free_bytes, proc_kib
from schemas.messages import Request

FILLER = "Sensor 12 on line four reports a pressure of 3.2 bar and a temperature of 41 degrees. "
RESERVE_BYTES = 256 * 2**20  # left to the OS and the agent's own Python


def rss_bytes() -> int:
    return proc_kib("/proc/self/status", "VmRSS")


def cpu_busy(sample_s: float = 0.5) -> float:
    """The share of this machine's CPU time spent busy over ``sample_s`` (Linux /proc/stat; 0 elsewhere)."""
    def times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle
    try:
        total0, idle0 = times()
        time.sleep(sample_s)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def mem_total_bytes() -> int:
    return proc_kib("/proc/meminfo", "MemTotal")


@dataclass
class ContextRun:
    prompt_tokens: int
    ttft_ms: float
    prefill_tps: float
    decode_tps: float


@dataclass
class ModelReport:
    name: str
    path: str
    file_bytes: int
    load_s: float = 0.0
    rss_bytes: int = 0
    kv_bytes_per_token: int = 0
    n_ctx_train: int = 0
    max_context: int = 0  # the largest context that fits in the memory available now
    fits: bool = False
    runs: list[ContextRun] = field(default_factory=list)
    advertises: dict[str, Any] = field(default_factory=dict)
    device: str = ""  # where its layers ran: "CPU" or the GPU
    gpu_layers: int = 0
    layers: int = 0
    # The same calibration with every layer on the CPU, when layers were offloaded (else empty).
    without_offload: dict[str, float] = field(default_factory=dict)
    error: str = ""


@dataclass
class DeviceReport:
    host: str
    cores: int
    threads: int
    mem_total_bytes: int
    mem_available_bytes: int
    gpus: list[str] = field(default_factory=list)  # empty: llama-cpp-python has no GPU backend, offload unavailable
    models: list[ModelReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kv_bytes_per_token(metadata: dict[str, str]) -> tuple[int, int]:
    """(KV cache bytes per token at f16, the training context) from a GGUF's metadata."""
    arch = metadata.get("general.architecture", "llama")

    def num(key: str, default: int = 0) -> int:
        try:
            return int(metadata.get(f"{arch}.{key}", default))
        except ValueError:
            return default

    layers, heads = num("block_count"), num("attention.head_count", 1)
    kv_heads = num("attention.head_count_kv", heads)
    head_dim = num("attention.key_length") or num("embedding_length") // max(heads, 1)
    value_dim = num("attention.value_length") or head_dim
    return layers * kv_heads * (head_dim + value_dim) * 2, num("context_length")


def _prompt_of(backend: LlamaBackend, tokens: int) -> str:
    """A prompt of about ``tokens`` tokens (BOS included)."""
    text = FILLER * (tokens // 8 + 1)
    ids = backend._llm.tokenize(text.encode(), add_bos=False)[: max(1, tokens - 1)]
    return backend._llm.detokenize(ids).decode("utf-8", "replace")


def _calibration(backend: LlamaBackend) -> dict[str, float]:
    gen = backend.generate(Request(prompt=CALIBRATION_PROMPT, max_tokens=16), lambda _t: None, lambda: False)
    return {"decode_tps": round(gen.decode_tps, 2), "ttft_ms": round(gen.ttft_s * 1000, 2)}


def _busy_rate(name: str, path: Path, threads: int, slots: int, batching: bool) -> float | None:
    """One job's decode rate with ``slots`` jobs generating at once, the slots made as an agent
    makes them (one batched context, or a context per slot with a share of the threads)."""
    settings = AgentSettings(models=[f"{name}={path}"], n_ctx=256, threads=threads, slots=slots, batching=batching)
    make = slot_factory(settings)
    backends: list[Backend] = []
    try:
        for _ in range(slots):
            backends.append(make()[name])
        return concurrent_rate(backends, CALIBRATION_PROMPT, settings.calibrate_tokens)
    finally:
        for b in backends:
            b.close()


def probe_model(name: str, path: Path, threads: int, prompt_sizes: tuple[int, ...], decode_tokens: int,
                step: Callable[[str], None] = lambda _s: None, slots: int = 1, batching: bool = True) -> ModelReport:
    report = ModelReport(name=name, path=str(path), file_bytes=path.stat().st_size)
    step(f"{name}: loading")
    before = rss_bytes()
    t0 = time.perf_counter()
    largest = max(prompt_sizes) + decode_tokens + 16
    backend = LlamaBackend(path, name, n_ctx=largest, threads=threads, sampling=Sampling(temperature=0.0))
    report.load_s = time.perf_counter() - t0
    report.rss_bytes = max(0, rss_bytes() - before)
    try:
        report.kv_bytes_per_token, report.n_ctx_train = kv_bytes_per_token(backend._llm.metadata)
        step(f"{name}: calibration, as an agent would advertise")
        report.advertises.update(_calibration(backend))
        info = backend.info
        report.device, report.gpu_layers, report.layers = info.device, info.gpu_layers, info.layers
        for size in prompt_sizes:
            step(f"{name}: prompt of {size} tokens")
            gen = backend.generate(Request(prompt=_prompt_of(backend, size), max_tokens=decode_tokens),
                                   lambda _t: None, lambda: False)
            report.runs.append(ContextRun(prompt_tokens=gen.prompt_tokens, ttft_ms=round(gen.ttft_s * 1000, 2),
                                          prefill_tps=round(gen.prompt_tokens / gen.ttft_s, 1) if gen.ttft_s else 0,
                                          decode_tps=round(gen.decode_tps, 2)))
        if len(report.runs) > 1:  # as the agent advertises it: the rate past the shortest prompt's, by length
            a = min(report.runs, key=lambda r: r.prompt_tokens)
            at = sorted((n, round(n / (b.ttft_ms - a.ttft_ms) * 1000, 1)) for b in report.runs
                        if b.ttft_ms > a.ttft_ms and (n := b.prompt_tokens - a.prompt_tokens) > 0)
            if at:
                report.advertises["prefill_tps"] = at[-1][1]
                report.advertises["prefill_tps_at"] = at
    finally:
        backend.close()
    if slots > 1:  # as the agent advertises it: decode_tps_at, one job's rate by slots busy
        step(f"{name}: calibration on {slots} slots at once")
        busy = _busy_rate(name, path, threads, slots, batching)
        if busy is not None:
            report.advertises["decode_tps_at"] = [report.advertises["decode_tps"], *[0.0] * (slots - 2),
                                                  round(busy, 2)]
        report.advertises["batched"] = batching
    if report.gpu_layers:
        step(f"{name}: calibration again with every layer on the CPU")
        cpu = LlamaBackend(path, name, n_ctx=largest, threads=threads, sampling=Sampling(temperature=0.0),
                           gpu_layers=0)
        try:
            report.without_offload = _calibration(cpu)
        finally:
            cpu.close()
    kv_now = report.kv_bytes_per_token * largest
    weights = max(0, report.rss_bytes - kv_now)
    room = mem_free_bytes() - weights - RESERVE_BYTES  # measured after the probe's own context is freed
    report.max_context = int(min(report.n_ctx_train or 10**9, room // max(report.kv_bytes_per_token, 1)))
    report.fits = report.max_context >= largest
    return report


def probe(models: list[tuple[str, Path]], threads: int = 0, prompt_sizes: tuple[int, ...] = (32, 256, 1024),
          decode_tokens: int = 32, step: Callable[[str], None] = lambda _s: None, slots: int = 1,
          batching: bool = True) -> DeviceReport:
    threads = threads or os.cpu_count() or 1
    device = DeviceReport(host=os.uname().nodename, cores=os.cpu_count() or 1, threads=threads,
                          mem_total_bytes=mem_total_bytes(), mem_available_bytes=mem_free_bytes(),
                          gpus=list(gpu_devices()))
    for name, path in models:
        try:
            device.models.append(probe_model(name, path, threads, prompt_sizes, decode_tokens, step, slots, batching))
        except (AgentError, OSError) as exc:  # a model that cannot load is a finding, not a crash
            device.models.append(ModelReport(name=name, path=str(path), file_bytes=path.stat().st_size,
                                             error=str(exc)))
    return device
