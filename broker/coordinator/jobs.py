"""A job's state, and the live jobs: by key, by agent, the waiting queue, the prompt bytes held."""

from __future__ import annotations

import enum
import itertools
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from broker.coordinator.scheduler import WaitQueue
from schemas import encode
from schemas.messages import Prompt


def new_job_id() -> str:
    """Time-ordered, unique: milliseconds then 6 random bytes, hex."""
    return f"{time.time_ns() // 1_000_000:x}-{secrets.token_hex(6)}"


class JobState(enum.StrEnum):
    """Where a live job is. The ledger's row keeps the same words, except ``accepted``, which it
    records as a transition of an ``assigned`` row."""

    QUEUED = "queued"  # in the coordinator's waiting queue
    ASSIGNED = "assigned"  # sent to an agent, not yet accepted
    ACCEPTED = "accepted"  # the agent took it and will start it
    RUNNING = "running"  # the agent is generating
    OFFLOADED = "offloaded"  # handed to the cloud bridge

    @property
    def on_agent(self) -> bool:
        return self in (JobState.ASSIGNED, JobState.ACCEPTED, JobState.RUNNING)

    @property
    def accepted(self) -> bool:
        """The agent has said it holds the job (so losing it counts)."""
        return self in (JobState.ACCEPTED, JobState.RUNNING)


@dataclass
class Job:
    key: str  # <device>/<job id>
    device: str
    job: str
    req: Prompt
    created_at: float  # wall clock
    deadline_at: float | None = None  # wall clock
    response_topic: str | None = None
    correlation: str | None = None  # hex
    state: JobState = JobState.QUEUED
    agent: str | None = None
    agent_epoch: int = 0
    attempt: int = 0
    assigned_mono: float = 0.0
    started_at: float | None = None
    failures: int = 0
    exclude: set[str] = field(default_factory=set)  # agents it must not go to again
    size: int = 0  # bytes of the prompt held in memory (max_queue_bytes)
    stranded_at: float | None = None  # since when no agent online (nor the cloud) could take it
    decision: dict[str, Any] | None = None

    def request_row(self) -> str:
        data = {"prompt": orjson.loads(encode(self.req)), "response_topic": self.response_topic,
                "correlation": self.correlation}
        return orjson.dumps(data).decode()


class Jobs:
    """The coordinator's live jobs, with the indexes kept in step: every change goes through here."""

    def __init__(self, aging_s: float) -> None:
        self._by_key: dict[str, Job] = {}
        self._by_agent: dict[str, set[str]] = {}  # agent -> keys of the live jobs placed on it
        self.waiting = WaitQueue(aging_s)  # keys of the jobs in state QUEUED
        self.held_bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._by_key.values()))

    def oldest(self, n: int) -> list[Job]:
        """The first ``n`` live jobs by arrival (keys are kept in the order jobs were added)."""
        return list(itertools.islice(self._by_key.values(), n))

    def get(self, key: str) -> Job | None:
        return self._by_key.get(key)

    def __getitem__(self, key: str) -> Job:
        return self._by_key[key]

    def add(self, job: Job) -> None:
        self._by_key[job.key] = job
        self.held_bytes += job.size
        if job.state is JobState.QUEUED:
            self.waiting.push(job.key, job.req.priority, job.created_at)
        self.place(job, job.agent)

    def remove(self, job: Job) -> None:
        del self._by_key[job.key]
        self.held_bytes -= job.size
        self.place(job, None)
        self.waiting.discard(job.key)

    def place(self, job: Job, agent: str | None) -> None:
        """Set the agent a job is on, keeping the per-agent index in step."""
        if job.agent and job.agent != agent:
            self._by_agent.get(job.agent, set()).discard(job.key)
        job.agent = agent
        if agent:
            self._by_agent.setdefault(agent, set()).add(job.key)

    def requeue(self, job: Job) -> None:
        """Back to the waiting queue, at its original age (aging keeps it from starving)."""
        self.place(job, None)
        job.state, job.started_at = JobState.QUEUED, None
        self.waiting.push(job.key, job.req.priority, job.created_at)

    def on(self, agent: str) -> list[Job]:
        """The live jobs placed on ``agent``."""
        return [self._by_key[k] for k in self._by_agent.get(agent, ())]

    def load(self) -> dict[str, tuple[int, int]]:
        """agent -> (jobs placed on it, their max_tokens together)."""
        return {agent: (len(keys), sum(self._by_key[k].req.max_tokens for k in keys))
                for agent, keys in self._by_agent.items() if keys}
