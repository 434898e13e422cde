"""Every message fogmesh sends or accepts, declared once (the retained statuses in ``schemas/status.py``).

The JSON Schema files under ``schemas/json/`` are generated from these types
(``python -m schemas.generate``); a test fails when the committed copies drift.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

from schemas.request import (
    DEFAULT_MAX_TOKENS,
    ChatMessage,
    JsonSchemaFormat,
    Request,
    ResponseFormat,
    _field,
    request_of,
)
from schemas.topics import ID_PATTERN

__all__ = ["DEFAULT_MAX_TOKENS", "ChatMessage", "JsonSchemaFormat", "Request", "ResponseFormat", "request_of"]

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=9)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]

Status = Literal["done", "error", "rejected", "cancelled", "expired"]
FinishReason = Literal["stop", "length", "cancelled"]
FINAL_STATES: tuple[str, ...] = get_args(Status)  # a job in one of these has had its one final
Tier = Literal["edge", "cloud"]
Privacy = Literal["edge-only", "cloud-ok"]
AgentState = Literal["online", "draining", "offline"]
CoordinatorState = Literal["online", "offline"]

DEFAULT_PRIORITY = 5


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def _doc(description: str) -> msgspec.Meta:
    """A field's description, for the JSON Schemas and the AsyncAPI document."""
    return msgspec.Meta(description=description)


# ---------------------------------------------------------------- device-facing


class Prompt(Request, frozen=True):
    """What a device publishes to ``fogmesh/<site>/prompts/<device_id>``: ``prompt`` or ``messages`` is required."""

    id: Annotated[str, _field("The job id (default: one is made). Reusing an id returns the first answer.",
                              "reading-0042", pattern=ID_PATTERN)] | None = None
    stream: Annotated[bool, _field("Stream the answer in chunks before the final message.", True)] = True
    deadline_ms: Annotated[int, _field("Give up (status expired) if not answered within this many ms.", 5000,
                                       ge=1)] | None = None
    priority: Annotated[int, _field("0 (lowest) to 9 (highest).", 5, ge=0, le=9)] = DEFAULT_PRIORITY
    privacy: Annotated[Privacy, _field("edge-only keeps the job off the cloud.", "cloud-ok")] = "cloud-ok"
    offline_ok: Annotated[bool, _field("May wait in the bridge's outbox while the cloud is unreachable.",
                                       False)] = False


class Cancel(_Message, frozen=True):
    """What a device publishes to ``fogmesh/<site>/cancel/<device_id>``."""

    id: Annotated[str, _field("The id of the job to stop; its final message says cancelled.", "reading-0042",
                              pattern=ID_PATTERN)]


class Chunk(_Message, frozen=True):
    """A piece of a streamed answer on ``fogmesh/<site>/results/<device_id>/<job_id>``.

    ``seq`` counts from 0 within an attempt; a chunk with a higher ``attempt`` starts the answer
    again (the job was restarted on another agent or the cloud): drop what the earlier attempt sent.
    ``attempt`` is there for requests that use the later contract's fields, and on every restart."""

    job: Annotated[str, _doc("The job's id, as in the topic.")]
    seq: Annotated[NonNegative, _doc("The chunk's number within its attempt, from 0.")]
    text: Annotated[str, _doc("The next piece of the answer.")]
    final: Annotated[Literal[False], _doc("Always false: this is not the final message.")] = False
    attempt: Annotated[Positive | None, _doc(  # None: 1
        "Which attempt at the job sent it (absent: the first); a higher one starts the answer again.")] = None


class ServedBy(_Message, frozen=True):
    """Who answered."""

    tier: Annotated[Tier, _doc("edge (an agent of the site) or cloud (the cloud worker).")]
    node: Annotated[str, _doc("The agent's id, or the cloud worker's name.")]


class Usage(_Message, frozen=True):
    """Tokens read and written."""

    prompt_tokens: Annotated[NonNegative, _doc("Tokens of the prompt, as the model read them.")] = 0
    completion_tokens: Annotated[NonNegative, _doc("Tokens generated.")] = 0


class ErrorInfo(_Message, frozen=True):
    """Why a job did not end done."""

    code: Annotated[str, _doc("A stable code to act on (docs/reliability.md lists the rejection codes).")]
    message: Annotated[str, _doc("What happened, for a person.")]


class Final(_Message, frozen=True):
    """The one final message of a job on ``fogmesh/<site>/results/<device_id>/<job_id>``."""

    job: Annotated[str, _doc("The job's id, as in the topic.")]
    status: Annotated[Status, _doc("done (answered), or why not: rejected, error, cancelled, expired.")]
    final: Annotated[Literal[True], _doc("Always true: the job's last message.")] = True
    text: Annotated[str, _doc("The whole answer; it is authoritative over the chunks.")] = ""
    served_by: Annotated[ServedBy | None, _doc("Who answered (done jobs).")] = None
    usage: Annotated[Usage | None, _doc("Tokens read and generated (done jobs).")] = None
    timings: Annotated[dict[str, float] | None, _doc(
        "Milliseconds and rates: total_ms, queue_ms, ttft_ms, decode_tps, generate_ms, ...")] = None
    error: Annotated[ErrorInfo | None, _doc("Why the job did not end done.")] = None
    cost: Annotated[dict[str, float] | None, _doc(
        "What the answer cost: edge (energy x price per kWh, with energy_j) or cloud (the API's price).")] = None
    finish_reason: Annotated[FinishReason | None, _doc(  # done and cancelled jobs of extended requests
        "Why generation ended: stop (the model ended, or a stop string), length (max_tokens), cancelled.")] = None
    json: Annotated[Any, _doc(  # the parsed answer, when the request asked for JSON (response_format)
        "The answer parsed, when the request asked for JSON (response_format); validated against its schema.")] = None


# ---------------------------------------------------------------- internal


class Assignment(Request, frozen=True, kw_only=True):
    """Coordinator -> agent: run this job. ``attempt`` tells a reassignment from the original."""

    key: str
    device: str
    job: str
    attempt: Positive
    result_topic: str
    stream: bool = True
    response_topic: str | None = None
    correlation: str | None = None  # hex of the MQTT 5 Correlation Data
    deadline_at: float | None = None  # unix seconds
    assigned_at: float = 0.0


class Control(_Message, frozen=True):
    """Coordinator -> agent: stop a job."""

    cancel: str
    attempt: Positive


EventKind = Literal["accepted", "started", "done", "failed", "refused"]


class AgentEvent(_Message, frozen=True):
    """Agent -> coordinator: what became of an assignment."""

    key: str
    attempt: Positive
    agent: str
    epoch: NonNegative
    kind: EventKind
    text: str = ""
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    error: ErrorInfo | None = None
    finish_reason: FinishReason | None = None


# ---------------------------------------------------------------------- the cloud path


class CloudRequest(Request, frozen=True, kw_only=True):
    """Coordinator -> bridge (MQTT ``cloud/requests``) -> SQS request queue -> cloud worker."""

    key: str
    site: str
    device: str
    job: str
    attempt: int
    priority: int = 5
    deadline_at: float | None = None
    offline_ok: bool = False
    created_at: float = 0.0
    reply_queue: str = ""  # set by the bridge: the site's result queue URL


class CloudResult(_Message, frozen=True):
    """Cloud worker -> SQS result queue -> bridge -> coordinator (MQTT ``cloud/events``)."""

    key: str
    attempt: int
    kind: Literal["done", "failed", "expired", "accepted"]
    node: str = ""
    text: str = ""
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    error: ErrorInfo | None = None
    finish_reason: FinishReason | None = None


class ClaimCheck(_Message, frozen=True):
    """An SQS body that stands for a payload too large for SQS, stored in S3."""

    claim_bucket: str
    claim_key: str


# ---------------------------------------------------------------------- operators


class DeadLetter(_Message, frozen=True):
    """Coordinator -> operators (``deadletter/<device>/<job>``): a job given up after its attempts."""

    key: str
    device: str
    job: str
    attempts: NonNegative
    error: ErrorInfo
    ts: float
    agents: list[str] = []  # the agents it failed on


class ExplainRequest(_Message, frozen=True):
    """Operator -> coordinator (``coordinator/explain``, MQTT 5 request/response): why a job went where it went."""

    job: str = ""


class ExplainedJob(_Message, frozen=True):
    """One job matching an explain request: where it is, and every transition the ledger holds."""

    key: str
    state: str
    agent: str | None = None
    tier: str | None = None
    attempt: NonNegative = 0
    priority: int = 5
    live: bool = False
    history: list[dict[str, Any]] = []


class ExplainReply(_Message, frozen=True):
    """Coordinator -> the request's Response Topic (``coordinator/explain/reply/<token>``)."""

    job: str
    policy: str
    jobs: list[ExplainedJob] = []


DEVICE_MESSAGES: dict[str, type[Any]] = {
    "prompt": Prompt,
    "cancel": Cancel,
    "chunk": Chunk,
    "final": Final,
}
INTERNAL_MESSAGES: dict[str, type[Any]] = {
    "assignment": Assignment,
    "control": Control,
    "agent-event": AgentEvent,
    "cloud-request": CloudRequest,
    "cloud-result": CloudResult,
    "dead-letter": DeadLetter,
    "explain-request": ExplainRequest,
    "explain-reply": ExplainReply,
}
