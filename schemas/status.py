"""The retained status messages that fleet dashboards, Home Assistant and ``fogmesh status`` read:
each agent's, the coordinator's, the bridge's, and the site's (``mesh/status``, ``mesh/jobs``,
``mesh/history``). Generated into ``schemas/json/`` with the other messages."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.messages import AgentState, CoordinatorState, NonNegative, Positive, Status, _Message


class ModelInfo(_Message, frozen=True):
    name: str
    quant: str = ""
    n_ctx: NonNegative = 0
    file_bytes: NonNegative = 0
    # How the agent renders chat messages for this model: gguf (the model's own template), gemma or
    # chatml (fogmesh's), file (a configured Jinja file); empty: it cannot, and takes no chat requests.
    chat_template: str = ""
    # Where its layers run: "CPU", or the GPU llama.cpp offloads to ("CUDA0 (NVIDIA ...)"); empty
    # from an agent older than GPU offload. gpu_layers of layers (llama.cpp's count: each block and
    # the output layer) are on that GPU.
    device: str = ""
    gpu_layers: NonNegative = 0
    layers: NonNegative = 0

    @property
    def chat(self) -> bool:
        return bool(self.chat_template)


class Budget(_Message, frozen=True):
    """A sliding-window token budget: at most ``tokens`` generated per ``window_s``."""

    window_s: float
    tokens: NonNegative
    used: NonNegative = 0


class AgentStatus(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/agents/<agent_id>/status``; the Last Will is the same with state offline."""

    agent: str
    epoch: NonNegative
    seq: NonNegative
    state: AgentState
    host: str = ""
    pid: NonNegative = 0
    models: list[ModelInfo] = []
    slots_total: NonNegative = 0
    slots_free: NonNegative = 0
    queue_depth: NonNegative = 0
    jobs: list[str] = []
    progress: dict[str, NonNegative] = {}  # job key -> tokens generated so far, for the running ones
    decode_tps: float = 0.0
    ttft_ms: float = 0.0
    # Prompt tokens/s past the calibration prompt's (so TTFT grows by prompt tokens / prefill_tps);
    # 0: not measured.
    prefill_tps: float = 0.0
    # The prefill rate by prompt length: [prompt tokens past the calibration prompt's, tokens/s
    # measured at that length], the shortest first. A long prompt reads slower per token (each
    # token attends to every one before it): Gemma 3 270M on one core, ~340 tokens/s past 100
    # tokens and ~290 past 1,000. Empty from an agent older than it: prefill_tps at every length.
    prefill_tps_at: Annotated[list[tuple[Positive, Annotated[float, msgspec.Meta(gt=0)]]],
                              msgspec.Meta(max_length=16)] = []
    # One job's decode tokens/s while i + 1 slots decode at once (index: concurrency - 1); 0: not measured.
    decode_tps_at: list[float] = []
    # Its slots share one batch (continuous batching): while a job's prompt is evaluated, the
    # others' tokens wait for each piece of it.
    batched: bool = False
    mem_free_bytes: NonNegative = 0
    budget: Budget | None = None
    energy_j_per_token: float = 0.0
    price_per_kwh: float = 0.0
    heartbeat_s: float = 5.0
    version: str = ""
    ts: float = 0.0


class CoordinatorStatus(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/coordinator/status``."""

    state: CoordinatorState
    host: str = ""
    pid: NonNegative = 0
    policy: str = ""
    version: str = ""
    counters: dict[str, int] = {}
    ts: float = 0.0


class SiteWindow(_Message, frozen=True):
    """What the site did lately, in the mesh status: the last ``window_s`` and totals since start."""

    window_s: float
    finished: NonNegative = 0  # jobs that ended in the window, any status (jobs per minute for 60 s)
    done: NonNegative = 0
    cloud_share: float = 0.0  # of the done jobs in the window, the share the cloud served (0-1)
    latency_p50_ms: float = 0.0  # median, accepted to final, done jobs in the window
    ttft_p50_ms: float = 0.0
    # The scheduler's decisions, over the coordinator's last 4,096: the processor time each took
    # (what choosing costs per job, apart from MQTT and the ledger), and the wall-clock p99, which
    # adds the waits for the interpreter while the coordinator's MQTT thread held it.
    decision_p50_ms: float = 0.0
    decision_p99_ms: float = 0.0
    decision_wall_p99_ms: float = 0.0
    totals: dict[str, dict[str, int]] = {}  # final status -> tier ("edge", "cloud", "none") -> jobs
    cloud_spend: float = 0.0  # since the coordinator started, in the currency of the bridge's prices


class MeshStatus(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/mesh/status``: the site at a glance."""

    agents_online: NonNegative
    slots_total: NonNegative
    slots_free: NonNegative
    queue_depth: NonNegative
    running: NonNegative
    predicted_wait_ms: float = 0.0
    overloaded: bool = False
    recent: SiteWindow | None = None
    ts: float = 0.0


JobPhase = Literal["queued", "assigned", "generating", "offloaded"]


class JobView(_Message, frozen=True):
    """One live job as operators see it."""

    key: str  # <device>/<job id>
    state: JobPhase
    node: str = ""  # the agent, or "cloud"
    created_at: float = 0.0  # unix seconds: accepted
    started_at: float = 0.0  # unix seconds: generation started (0: not yet)
    tokens: NonNegative = 0  # generated so far, as the agent last reported
    max_tokens: NonNegative = 0
    priority: NonNegative = 0


class FinishedJob(_Message, frozen=True):
    """One of the last jobs to end."""

    key: str
    status: Status
    tier: str = "none"
    node: str = ""
    total_ms: float = 0.0
    tokens: NonNegative = 0
    code: str = ""  # the error code of a job that did not end done
    ended_at: float = 0.0


class MeshJobs(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/mesh/jobs``: the live jobs (oldest first, at most ``limit``) and
    the last jobs to end, newest first."""

    live: NonNegative  # all live jobs, also those past the limit
    limit: NonNegative
    jobs: list[JobView] = []
    finished: list[FinishedJob] = []
    ts: float = 0.0


class HistoryStep(_Message, frozen=True):
    ts: float  # the step's start, unix seconds
    done: NonNegative = 0
    rejected: NonNegative = 0
    expired: NonNegative = 0
    error: NonNegative = 0
    cancelled: NonNegative = 0
    cloud: NonNegative = 0  # done jobs the cloud served
    tokens: NonNegative = 0
    cloud_spend: float = 0.0
    latency_p50_ms: float = 0.0
    ttft_p50_ms: float = 0.0


class MeshHistory(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/mesh/history``: the last 15 minutes, oldest step first."""

    step_s: float
    steps: list[HistoryStep] = []
    ts: float = 0.0


class BridgeStatus(_Message, frozen=True):
    """Retained on ``fogmesh/<site>/bridge/status``."""

    state: Literal["online", "offline"]
    reachable: bool = False
    outbox_depth: NonNegative = 0
    oldest_age_s: float = 0.0
    dlq_depth: NonNegative = 0
    # The cloud tier as the scheduler sees it (configured on the bridge).
    latency_s: float = 1.0
    decode_tps: float = 50.0
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    models: list[str] = []  # the model names the cloud tier answers to (bridge.cloud_models)
    workers: NonNegative = 0  # jobs the cloud runs at once (bridge.cloud_workers); 0: not limited
    in_flight: NonNegative = 0  # jobs sent to the queue whose answer has not come back
    host: str = ""
    pid: NonNegative = 0
    ts: float = 0.0


STATUS_MESSAGES: dict[str, type[Any]] = {
    "agent-status": AgentStatus,
    "coordinator-status": CoordinatorStatus,
    "mesh-status": MeshStatus,
    "mesh-jobs": MeshJobs,
    "mesh-history": MeshHistory,
    "bridge-status": BridgeStatus,
}
