"""Settings of the bridge (``[bridge]``) and the cloud worker (``[cloud-worker]``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Literal

from broker.runtime.settings import Connection, DaemonSettings, state_dir


@dataclass
class CloudSettings:
    """What the bridge and the worker share: where the queues are and what they are called."""

    endpoint_url: str = ""  # empty: AWS itself (boto3's standard chain decides region and credentials)
    region: str = ""
    queue_prefix: str = "fogmesh"
    fifo: bool = False  # FIFO queues, one message group per device
    bucket: str = ""  # S3 bucket for claim checks (payloads over max_message_bytes)
    max_message_bytes: int = 262_144
    max_receives: int = 3  # deliveries before a message moves to the dead-letter queue
    visibility_s: int = 60
    wait_s: int = 20  # long polling

    def request_queue(self) -> str:
        return f"{self.queue_prefix}-requests"

    def result_queue(self, site: str) -> str:
        return f"{self.queue_prefix}-results-{site}"


@dataclass
class BridgeSettings(Connection, CloudSettings):
    outbox: str = ""  # default: <state dir>/<site>/outbox.db
    outbox_max_jobs: int = 10_000  # offline_ok jobs held while the cloud is unreachable
    outbox_max_age_s: float = 3600.0  # ... and for how long, at most
    send_timeout_s: float = 10.0  # a job that is not offline_ok and cannot be sent by then fails
    result_visibility_s: int = 30  # a result not handed over in time is received again after this
    status_interval_s: float = 5.0
    cloud_latency_s: float = 1.0  # what the scheduler assumes of the cloud tier
    cloud_tps: float = 60.0
    cloud_workers: int = 0  # jobs the cloud runs at once, for the scheduler's queue wait; 0: it scales out
    price_in_per_1k: float = 0.00015
    price_out_per_1k: float = 0.0006
    # The model names the cloud worker answers to, told in the bridge's status (the gateway's /v1/models lists them).
    cloud_models: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.outbox:
            self.outbox = str(state_dir() / self.site / "outbox.db")


@dataclass
class WorkerSettings(DaemonSettings, CloudSettings):
    worker_id: str = field(default_factory=lambda: f"cloud-{socket.gethostname().split('.')[0]}")
    # "local": a GGUF through llama-cpp-python; "openai": an OpenAI-compatible server;
    # "synthetic": a stand-in with a set first-token delay and rate, for experiments on one machine
    backend: str = "local"
    model: str = ""  # local: GGUF path (empty: the bundled model); openai: the model name
    openai_url: str = "http://127.0.0.1:8000"
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the API key, never the key itself
    openai_chat_only: bool = False  # send plain prompts to /v1/chat/completions too (hosted chat-only models)
    # How the server takes a JSON Schema: "openai" (response_format json_schema: OpenAI, vLLM, llama.cpp's
    # server) or "llama-cpp-python" (its server takes {"type": "json_object", "schema": ...} only)
    openai_schema_style: Literal["openai", "llama-cpp-python"] = "openai"
    chat_format: str = "auto"  # local: how the model renders chat messages (see agent.chat_formats)
    threads: int = 0
    n_ctx: int = 4096
    synthetic_ttft_s: float = 0.8
    synthetic_tps: float = 80.0
