"""``fogmesh explain``: why a job went where it went, from the decisions the ledger keeps."""

from __future__ import annotations

import logging
from typing import Any

from broker.coordinator.context import Core
from broker.coordinator.scheduler import Decision
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message
from schemas import DecodeError, decode, encode
from schemas.messages import ExplainedJob, ExplainReply, ExplainRequest

log = logging.getLogger("fogmesh.coordinator")
EXPLAIN_CANDIDATES = 8  # candidates kept per decision; the rest are counted by reason


def explained(d: Decision, created_at: float, now: float) -> dict[str, Any]:
    """The decision as the ledger keeps it for `fogmesh explain`: the chosen agent and the best
    few candidates in full, the others counted by why they lost (a site may have 1,000 agents).
    ``decided_ms``: when it was made, from the job's acceptance (its prediction counts from then)."""
    ranked = sorted(d.candidates, key=lambda c: (c.agent != d.agent, not c.eligible, c.completion_s, c.agent))
    shown, rest = ranked[:EXPLAIN_CANDIDATES], ranked[EXPLAIN_CANDIDATES:]
    others: dict[str, int] = {}
    for c in rest:
        others[c.reason] = others.get(c.reason, 0) + 1
    return {
        "policy": d.policy, "target": d.target, "agent": d.agent, "reason": d.reason,
        "predicted_ms": round(d.predicted_s * 1000, 1), "decided_ms": round((now - created_at) * 1000, 1),
        "at_risk": d.at_risk,
        "cost": {"edge": round(d.cost, 9)},
        # the prediction in parts: queue wait, first token (TTFT + prefill), decode of the tokens assumed
        "parts": d.parts.as_ms() if d.parts else None,
        "cloud": d.cloud.as_ms() | {"completion_ms": round(d.cloud.completion_s * 1000, 1)} if d.cloud else None,
        "candidates": [
            {"agent": c.agent, "eligible": c.eligible, "reason": c.reason, "wait_ms": round(c.wait_s * 1000, 1),
             "completion_ms": round(c.completion_s * 1000, 1), "cost": round(c.cost, 9),
             "meets_deadline": c.meets_deadline, "has_room": c.has_room,
             **(c.parts.as_ms() if c.parts else {})}
            for c in shown
        ],
        "other_candidates": others,
    }


def answer(core: Core, msg: Message) -> None:
    """A job's transitions and decisions, to the request's Response Topic (operators only may read it)."""
    c = core
    if not (msg.response_topic or "").startswith(f"{c.topics.explain}/reply/"):
        log.warning(kv("explain_bad_reply_topic", topic=(msg.response_topic or "")[:128],
                       expected=f"{c.topics.explain}/reply/<token>"))
        return
    try:
        wanted = decode(msg.payload, ExplainRequest).job
    except DecodeError:
        wanted = ""
    jobs = [ExplainedJob(key=row["key"], state=row["state"], agent=row["agent"], tier=row["tier"],
                         attempt=row["attempt"], priority=row["priority"], live=row["key"] in c.jobs,
                         history=c.ledger.history(row["key"]))
            for row in (c.ledger.find(wanted)[:20] if wanted else [])]
    reply = ExplainReply(job=wanted, policy=c.settings.policy, jobs=jobs)
    c.pending.publish(msg.response_topic or "", encode(reply), correlation=msg.correlation)
