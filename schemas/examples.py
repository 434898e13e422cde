"""An example of every message, for the AsyncAPI document: typed, so each one is valid by construction.

The prompt and the cancel are also assembled from the examples their fields declare (``_field`` in
``schemas/request.py``), so the examples a device author reads in the JSON Schemas and in the
AsyncAPI document are the same values.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from schemas.messages import (
    AgentEvent,
    Assignment,
    Cancel,
    ChatMessage,
    Chunk,
    CloudRequest,
    CloudResult,
    Control,
    DeadLetter,
    ErrorInfo,
    ExplainedJob,
    ExplainReply,
    ExplainRequest,
    Final,
    JsonSchemaFormat,
    Prompt,
    ResponseFormat,
    ServedBy,
    Usage,
)
from schemas.status import (
    AgentStatus,
    BridgeStatus,
    Budget,
    CoordinatorStatus,
    FinishedJob,
    HistoryStep,
    JobView,
    MeshHistory,
    MeshJobs,
    MeshStatus,
    ModelInfo,
    SiteWindow,
)

JOB = "reading-0042"
DEVICE = "sensor-7"
AGENT = "edge-01"
KEY = f"{DEVICE}/{JOB}"  # the coordinator's key of a job: its device and its id
TS = 1767225600.0  # 2026-01-01T00:00:00Z
ANSWER = " high for a pump of this size: check the bearings and the mounting."
VERDICT = JsonSchemaFormat(name="verdict", schema={
    "type": "object", "properties": {"level": {"enum": ["ok", "warn", "alarm"]}}, "required": ["level"]})
ASK = [ChatMessage(role="user", content="Server room at 31 C and rising: ok, warn or alarm?")]
USAGE = Usage(prompt_tokens=11, completion_tokens=17)


class Example(NamedTuple):
    name: str
    summary: str
    message: msgspec.Struct


def from_field_examples(kind: type[msgspec.Struct], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each field's first declared example, as one message."""
    body = msgspec.json.schema(kind)["$defs"][kind.__name__]
    found = {}
    for name, prop in body["properties"].items():
        # an optional field's examples sit in the branch of its anyOf that is not null
        declared = [p["examples"] for p in [prop, *prop.get("anyOf", [])] if "examples" in p]
        if declared and name not in leave_out:
            found[name] = declared[0][0]
    return found


def every_field_prompt() -> Prompt:
    return msgspec.convert(from_field_examples(Prompt, leave_out=("messages",)), Prompt, strict=True)


EXAMPLES: dict[str, list[Example]] = {
    # device-facing
    "prompt": [
        Example("completion", "A text to complete, with an id so that a prompt sent again runs once.",
                Prompt(id=JOB, prompt="The pump vibration is 7 mm/s, which means", max_tokens=32)),
        Example("chat-json", "A chat asking for JSON that follows a schema, answered the same way every time.",
                Prompt(id="check-0043", messages=ASK, max_tokens=60, temperature=0, seed=1, stream=False,
                       response_format=ResponseFormat(type="json_schema", json_schema=VERDICT))),
        Example("every-field", "Every field, each with the example it declares.", every_field_prompt()),
    ],
    "cancel": [Example("cancel", "Stop a job.", msgspec.convert(from_field_examples(Cancel), Cancel))],
    "chunk": [Example("chunk", "The first piece of a streamed answer.", Chunk(job=JOB, seq=0, text=" high for a"))],
    "final": [
        Example("done", "The whole answer, served by an agent.", Final(
            job=JOB, status="done", text=ANSWER, served_by=ServedBy(tier="edge", node=AGENT), usage=USAGE,
            timings={"agent_queue_ms": 0.4, "ttft_ms": 182.5, "decode_tps": 38.2, "generate_ms": 601.3,
                     "queue_ms": 3.1, "total_ms": 612.8, "predicted_ms": 640.0, "decided_ms": 0.3},
            cost={"edge": 0.000000112, "energy_j": 0.056})),
        Example("done-json", "An answer that followed the request's schema, parsed into json.", Final(
            job="check-0043", status="done", text='{"level": "warn"}', json={"level": "warn"},
            finish_reason="stop", served_by=ServedBy(tier="edge", node=AGENT),
            usage=Usage(prompt_tokens=24, completion_tokens=6))),
        Example("rejected", "A prompt fogmesh could not run as asked: the code says why.", Final(
            job="check-0044", status="rejected",
            error=ErrorInfo(code="empty_prompt", message="prompt is empty or only whitespace"))),
        Example("expired", "No answer within deadline_ms.", Final(
            job="check-0045", status="expired",
            error=ErrorInfo(code="deadline", message="the job's deadline passed before it finished"))),
    ],
    # retained statuses
    "agent-status": [Example("online", "An agent with one model and two slots, one of them busy.", AgentStatus(
        agent=AGENT, epoch=1767225000123, seq=42, state="online", host="edge-01.local", pid=812,
        models=[ModelInfo(name="gemma-3-270m", quant="Q4_K_M", n_ctx=2048, file_bytes=253_114_432,
                          chat_template="gemma")],
        slots_total=2, slots_free=1, queue_depth=0, jobs=[KEY], decode_tps=38.2, ttft_ms=182.5,
        mem_free_bytes=1_850_000_000, budget=Budget(window_s=60.0, tokens=20_000, used=1_234),
        energy_j_per_token=2.0, price_per_kwh=0.2, heartbeat_s=5.0, version="0.1.0", ts=TS))],
    "coordinator-status": [Example("online", "The coordinator's heartbeat, with its counters.", CoordinatorStatus(
        state="online", host="gateway.local", pid=640, policy="deadline", version="0.1.0",
        counters={"accepted": 120, "assigned": 118, "done": 112, "rejected": 2, "expired": 1}, ts=TS))],
    "mesh-status": [Example("site", "The site at a glance, and what it did in the last minute.", MeshStatus(
        agents_online=2, slots_total=4, slots_free=3, queue_depth=0, running=1, predicted_wait_ms=0.0,
        recent=SiteWindow(window_s=60.0, finished=14, done=13, cloud_share=0.0769, latency_p50_ms=640.5,
                          ttft_p50_ms=181.0, totals={"done": {"edge": 110, "cloud": 2}, "rejected": {"none": 2}},
                          cloud_spend=0.0042), ts=TS))],
    "mesh-jobs": [Example("jobs", "One job generating on an agent, one waiting; the last to end.", MeshJobs(
        live=2, limit=200, ts=TS,
        jobs=[JobView(key=KEY, state="generating", node=AGENT, created_at=TS - 0.4, started_at=TS - 0.2,
                      tokens=9, max_tokens=32, priority=5),
              JobView(key="sensor-9/reading-0107", state="queued", created_at=TS - 0.1, max_tokens=64, priority=5)],
        finished=[FinishedJob(key="sensor-7/reading-0041", status="done", tier="edge", node=AGENT, total_ms=612.8,
                              tokens=17, ended_at=TS - 5),
                  FinishedJob(key="sensor-9/reading-0106", status="rejected", code="empty_prompt", ended_at=TS - 9)]))],
    "mesh-history": [Example("history", "Two 10-second steps.", MeshHistory(step_s=10.0, ts=TS, steps=[
        HistoryStep(ts=TS - 20, done=3, tokens=51, latency_p50_ms=630.0, ttft_p50_ms=180.0),
        HistoryStep(ts=TS - 10, done=2, rejected=1, cloud=1, tokens=40, cloud_spend=0.0021, latency_p50_ms=910.0,
                    ttft_p50_ms=350.0)]))],
    "bridge-status": [Example("online", "The cloud bridge, the cloud reachable, its outbox empty.", BridgeStatus(
        state="online", reachable=True, latency_s=1.0, decode_tps=50.0, price_in_per_1k=0.00015,
        price_out_per_1k=0.0006, models=["gemma-3-270m"], host="gateway.local", pid=655, ts=TS))],
    # internal
    "assignment": [Example("assign", "Run this job, first attempt.", Assignment(
        key=KEY, device=DEVICE, job=JOB, attempt=1, result_topic=f"fogmesh/site/results/{DEVICE}/{JOB}",
        prompt="The pump vibration is 7 mm/s, which means", max_tokens=32, deadline_at=TS + 5,
        assigned_at=TS))],
    "control": [Example("cancel", "Stop the first attempt of a job.", Control(cancel=KEY, attempt=1))],
    "agent-event": [Example("done", "An attempt's answer.", AgentEvent(
        key=KEY, attempt=1, agent=AGENT, epoch=1767225000123, kind="done", text=ANSWER, usage=USAGE,
        timings={"ttft_ms": 182.5, "decode_tps": 38.2, "generate_ms": 601.3}, finish_reason="length"))],
    "cloud-request": [Example("offload", "A job the edge cannot take in time, for the cloud.", CloudRequest(
        key=KEY, site="site", device=DEVICE, job=JOB, attempt=2, prompt="The pump vibration is 7 mm/s, which means",
        max_tokens=32, deadline_at=TS + 30, created_at=TS))],
    "cloud-result": [Example("done", "The cloud worker's answer.", CloudResult(
        key=KEY, attempt=2, kind="done", node="cloud-worker-1", text=ANSWER, usage=USAGE))],
    "dead-letter": [Example("given-up", "A job given up after its attempts.", DeadLetter(
        key=KEY, device=DEVICE, job=JOB, attempts=3, ts=TS, agents=[AGENT, "edge-02"],
        error=ErrorInfo(code="agent_lost", message="agent edge-02 went offline; the job's agent was lost 3 times, "
                                                   "so it is not tried again")))],
    "explain-request": [Example("explain", "Why did this job go where it went?", ExplainRequest(job=JOB))],
    "explain-reply": [Example("explained", "A job, where it is and what happened to it.", ExplainReply(
        job=JOB, policy="deadline", jobs=[ExplainedJob(
            key=KEY, state="done", agent=AGENT, tier="edge", attempt=1, priority=5,
            history=[{"ts": TS, "state": "queued", "detail": None},
                     {"ts": TS + 0.003, "state": "assigned",
                      "detail": {"policy": "deadline", "agent": AGENT, "predicted_ms": 640.0}},
                     {"ts": TS + 0.61, "state": "done", "detail": None}])]))],
}
