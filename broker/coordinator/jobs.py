"""A job's state, and the live jobs: by key, by agent, the waiting queue, the prompt bytes held."""

from __future__ import annotations

import enum
import heapq
import itertools
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
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


class _Stored(msgspec.Struct):
    """A job's request as the ledger keeps it (:meth:`Job.request_row`)."""

    prompt: Prompt
    response_topic: str | None = None
    correlation: str | None = None


_STORED = msgspec.json.Decoder(_Stored)
RECOVERED = ("assigned", "running", "offloaded")  # states a restart resumes; the others start queued


@dataclass(slots=True)  # no per-job __dict__: a site may hold 100,000 queued jobs
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
    # Agents it must not go to again: rarely any, and the empty frozenset is shared, where an empty
    # set took 216 bytes a job.
    exclude: frozenset[str] = frozenset()
    size: int = 0  # bytes of the prompt held in memory (max_queue_bytes)
    stranded_at: float | None = None  # since when no agent online (nor the cloud) could take it
    decision: dict[str, Any] | None = None
    expect_tokens: int = 0  # the answer length its placement was predicted for (0: max_tokens)

    @property
    def planned_tokens(self) -> int:
        return self.expect_tokens or self.req.max_tokens

    @classmethod
    def recovered(cls, row: dict[str, Any], mono: float) -> Job:
        """A live job from its ledger row, at a restart (one C call decodes and checks its request)."""
        stored = _STORED.decode(row["request"])
        state = JobState(row["state"]) if row["state"] in RECOVERED else JobState.QUEUED
        return cls(key=row["key"], device=row["device"], job=row["job"], req=stored.prompt,
                   created_at=row["created_at"], deadline_at=row["deadline_at"],
                   response_topic=stored.response_topic, correlation=stored.correlation, state=state,
                   agent=row["agent"] if state is not JobState.QUEUED else None, attempt=row["attempt"],
                   assigned_mono=mono, size=len(row["request"]))

    def request_row(self) -> str:
        # Spliced rather than decoded and encoded again: written for every job.
        return (b'{"prompt":' + encode(self.req) + b',"response_topic":' + orjson.dumps(self.response_topic)
                + b',"correlation":' + orjson.dumps(self.correlation) + b"}").decode()


class Jobs:
    """The coordinator's live jobs, with the indexes kept in step: every change goes through here.

    Besides the jobs by key: by agent (with their load, for the scheduler's fleet), the waiting
    queue, the deadlines in a heap and the assignments not yet accepted in the order they were
    made, so that nothing that runs for every job or every tick walks every job.
    """

    def __init__(self, aging_s: float) -> None:
        self._by_key: dict[str, Job] = {}
        self._by_agent: dict[str, set[str]] = {}  # agent -> keys of the live jobs placed on it
        # agent -> [jobs placed on it, their max_tokens together, the answer tokens expected of them]
        self._load: dict[str, list[int]] = {}
        self.changed: set[str] = set()  # agents whose load changed since the fleet last looked
        self.waiting = WaitQueue(aging_s)  # keys of the jobs in state QUEUED
        self.held_bytes = 0
        self.queued_tokens = 0  # max_tokens of the jobs in state QUEUED, together
        self.placed = 0  # jobs on agents (assigned, accepted or running)
        self._deadlines: list[tuple[float, str]] = []
        self._unaccepted: deque[tuple[float, str, int]] = deque()  # (assigned_mono, key, attempt)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self) -> Iterator[Job]:
        return iter(list(self._by_key.values()))

    def keys(self) -> list[str]:
        return list(self._by_key)

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
            self.queued_tokens += job.req.max_tokens
        elif job.state is JobState.ASSIGNED:
            self._unaccepted.append((job.assigned_mono, job.key, job.attempt))
        if job.deadline_at is not None:
            heapq.heappush(self._deadlines, (job.deadline_at, job.key))
        self.place(job, job.agent)

    def remove(self, job: Job) -> None:
        del self._by_key[job.key]
        self.held_bytes -= job.size
        if job.state is JobState.QUEUED:
            self.queued_tokens -= job.req.max_tokens
        self.place(job, None)
        self.waiting.discard(job.key)

    def place(self, job: Job, agent: str | None) -> None:
        """Set the agent a job is on, keeping the per-agent index and load in step."""
        old = job.agent
        if old and old != agent and job.key in self._by_agent.get(old, ()):
            self._by_agent[old].discard(job.key)
            self._count(old, job, -1)
        job.agent = agent
        if agent:
            keys = self._by_agent.setdefault(agent, set())
            if job.key not in keys:
                keys.add(job.key)
                self._count(agent, job, 1)

    def _count(self, agent: str, job: Job, sign: int) -> None:
        load = self._load.setdefault(agent, [0, 0, 0])
        load[0] += sign
        load[1] += sign * job.req.max_tokens
        load[2] += sign * job.planned_tokens
        self.placed += sign
        self.changed.add(agent)
        if not load[0]:
            del self._load[agent]
            if not self._by_agent.get(agent):
                self._by_agent.pop(agent, None)

    def assign(self, job: Job, agent: str, mono: float) -> None:
        """A queued job goes to ``agent``: it waits there to be accepted."""
        self._leave_queue(job)
        self.place(job, agent)
        job.state, job.assigned_mono = JobState.ASSIGNED, mono
        self._unaccepted.append((mono, job.key, job.attempt))

    def offload(self, job: Job) -> None:
        """A queued job goes to the cloud."""
        self._leave_queue(job)
        self.place(job, None)
        job.state = JobState.OFFLOADED

    def _leave_queue(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            self.queued_tokens -= job.req.max_tokens
        self.waiting.discard(job.key)

    def requeue(self, job: Job) -> None:
        """Back to the waiting queue, at its original age (aging keeps it from starving)."""
        self.place(job, None)
        if job.state is not JobState.QUEUED:
            self.queued_tokens += job.req.max_tokens
        job.state, job.started_at = JobState.QUEUED, None
        self.waiting.push(job.key, job.req.priority, job.created_at)

    def on(self, agent: str) -> list[Job]:
        """The live jobs placed on ``agent``."""
        return [self._by_key[k] for k in self._by_agent.get(agent, ())]

    def agents(self) -> list[str]:
        """The agents some live job is placed on."""
        return list(self._by_agent)

    def load_of(self, agent: str) -> tuple[int, int]:
        """(jobs placed on ``agent``, their max_tokens together)."""
        load = self._load.get(agent)
        return (load[0], load[1]) if load else (0, 0)

    def expected_on(self, agent: str) -> int:
        """The answer tokens expected of the jobs placed on ``agent``, together."""
        load = self._load.get(agent)
        return load[2] if load else 0

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def past_deadline(self, now: float) -> list[Job]:
        """Live jobs whose deadline is ``now`` or earlier."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            job = self._by_key.get(key)
            if job is not None and job.deadline_at is not None and job.deadline_at <= now:
                out.append(job)
        return out

    def unaccepted_since(self, before: float) -> list[Job]:
        """Jobs still assigned, not accepted, that were assigned before ``before`` (monotonic)."""
        out = []
        while self._unaccepted and self._unaccepted[0][0] < before:
            _, key, attempt = self._unaccepted.popleft()
            job = self._by_key.get(key)
            if job is not None and job.state is JobState.ASSIGNED and job.attempt == attempt:
                out.append(job)
        return out
