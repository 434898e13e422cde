"""The answer to a job no tier can finish before its deadline: a refusal that names the best
prediction, so that the device (or its operator) sees by how much it missed and where."""

from __future__ import annotations

from broker.coordinator.jobs import Job
from broker.coordinator.predict import EDGE_MARGIN, Parts
from broker.coordinator.scheduler import Decision
from schemas.messages import ErrorInfo


def _said(where: str, p: Parts) -> str:
    return (f"{where} in {p.completion_s * 1000:.0f} ms (wait {p.wait_s * 1000:.0f} ms, first token "
            f"{p.first_s * 1000:.0f} ms, {p.tokens} tokens in {p.decode_s * 1000:.0f} ms)")


def refusal(job: Job, decision: Decision, now: float) -> ErrorInfo:
    """``deadline_infeasible``, with the quickest tier's prediction in parts."""
    left_ms = max(0.0, ((job.deadline_at or now) - now) * 1000)
    options = []
    if decision.agent is not None and decision.parts is not None:
        options.append((decision.parts.completion_s, _said(f"edge agent {decision.agent}", decision.parts)))
    if decision.cloud is not None:
        options.append((decision.cloud.completion_s, _said("the cloud", decision.cloud)))
    options.sort()
    best = "; ".join(words for _, words in options) or f"{decision.predicted_s * 1000:.0f} ms"
    return ErrorInfo(code="deadline_infeasible",
                     message=f"no tier can finish this job within its deadline ({left_ms:.0f} ms left; an "
                             f"edge agent's prediction, {EDGE_MARGIN:.0%} more, must fit): "
                             f"the best prediction is {best}")
