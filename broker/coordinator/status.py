"""What the coordinator tells the fleet: its retained status (its heartbeat, with counters), the
site's mesh status (agents, slots, queue, backpressure, what it did lately), its live jobs, its
last 15 minutes, and its Prometheus gauges."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from broker.coordinator.context import Core
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.registry import Known
from broker.coordinator.scheduler import AgentView
from broker.coordinator.stats import STEP_S
from broker.runtime import __version__
from broker.runtime.mqtt import Publisher
from schemas import encode
from schemas.messages import CoordinatorState
from schemas.status import CoordinatorStatus, JobPhase, JobView, MeshJobs, MeshStatus, SiteWindow

JOBS_SHOWN = 200  # live jobs in mesh/jobs; a dashboard lists the oldest, the count says how many more
PHASE: dict[JobState, JobPhase] = {JobState.QUEUED: "queued", JobState.ASSIGNED: "assigned",
                                   JobState.ACCEPTED: "assigned", JobState.RUNNING: "generating",
                                   JobState.OFFLOADED: "offloaded"}


class StatusBoard:
    def __init__(self, core: Core, views: Callable[[], list[AgentView]]) -> None:
        self.core = core
        self.views = views
        self.last: MeshStatus | None = None
        self._last_at = 0.0  # when the mesh status was last published
        self._checked_at = 0.0  # when the views were last worked out, published or not
        self._jobs_shown: tuple[Any, ...] | None = None
        self._history_at = 0.0
        self._window: SiteWindow | None = None
        self._window_at = 0.0

    def coordinator(self, state: CoordinatorState) -> CoordinatorStatus:
        c = self.core
        return CoordinatorStatus(state=state, host=socket.gethostname(), pid=os.getpid(), policy=c.settings.policy,
                                 version=__version__, counters=dict(c.counters), ts=c.clock())

    def publish(self, session: Publisher, state: CoordinatorState, wait: bool = False) -> None:
        delivery = session.publish(self.core.topics.coordinator_status, encode(self.coordinator(state)), qos=1,
                                   retain=True)
        if wait:
            delivery.wait(5.0)

    def mesh(self) -> MeshStatus:
        c = self.core
        views = [v for v in self.views() if v.online]
        queued = len(c.jobs.waiting)  # counted as they come and go: a site may queue 100,000 jobs
        tps = sum(v.decode_tps * v.slots for v in views) or 0.0
        backlog = c.jobs.queued_tokens + sum(v.outstanding_tokens for v in views)
        return MeshStatus(
            agents_online=len(views),
            slots_total=sum(v.slots for v in views),
            slots_free=sum(max(0, v.slots - v.outstanding) for v in views),
            queue_depth=queued,
            running=c.jobs.placed,
            predicted_wait_ms=round(backlog / tps * 1000, 1) if tps else 0.0,
            overloaded=queued >= c.settings.max_queue * 0.8 or (bool(queued) and not views),
            recent=self._recent(),
            ts=c.clock(),
        )

    def _recent(self) -> SiteWindow:
        """The last minute's figures, made anew at most once a second: their medians sort every job
        that ended in the minute (36,000 at 600 jobs/s), and the mesh status is looked at 4 times a second."""
        mono = time.monotonic()
        if self._window is None or mono - self._window_at >= 1.0:
            self._window, self._window_at = self.core.stats.window(self.core.clock()), mono
        return self._window

    def jobs(self) -> MeshJobs:
        c = self.core
        shown = [_view(j, c.registry.agents.get(j.agent) if j.agent else None) for j in c.jobs.oldest(JOBS_SHOWN)]
        return MeshJobs(live=len(c.jobs), limit=JOBS_SHOWN, jobs=shown, finished=list(reversed(c.stats.last)),
                        ts=c.clock())

    def publish_mesh(self, session: Publisher) -> None:
        """On a change (at most 4 times a second), and at the status interval as a heartbeat; the
        live jobs when they change (tokens too), the history every step. Each view walks the live
        jobs, so they are worked out at most 4 times a second too, whether anything changed or not."""
        mono = time.monotonic()
        if mono - self._checked_at < 0.25:
            return
        self._checked_at = mono
        c = self.core
        mesh, jobs = self.mesh(), self.jobs()
        shown = (jobs.live, tuple((j.key, j.state, j.node, j.tokens) for j in jobs.jobs),
                 jobs.finished[0].key if jobs.finished else None)
        heartbeat = mono - self._last_at >= c.settings.status_interval_s
        if heartbeat or shown != self._jobs_shown:
            self._jobs_shown = shown
            session.publish(c.topics.mesh_jobs, encode(jobs), qos=1, retain=True)
        if mono - self._history_at >= STEP_S:
            self._history_at = mono
            session.publish(c.topics.mesh_history, encode(c.stats.history(c.clock())), qos=1, retain=True)
        if not heartbeat and self.last is not None and _strip_ts(self.last) == _strip_ts(mesh):
            return
        self.last, self._last_at = mesh, mono
        session.publish(c.topics.mesh_status, encode(mesh), qos=1, retain=True)
        self.publish(session, "online")  # its counters and timestamp are the coordinator's heartbeat

    def gauges(self, reconnects: Callable[[], int]) -> None:
        c, m = self.core, self.core.m.metrics
        m.gauge("queue_depth", "Jobs waiting for an agent", lambda: len(c.jobs.waiting))
        m.gauge("jobs_in_flight", "Jobs accepted and not yet finished", lambda: len(c.jobs))
        m.gauge("agents_online", "Agents online", lambda: len(c.registry.online()))
        m.gauge("slots", "Slots across online agents", lambda: self.last.slots_total if self.last else 0)
        m.gauge("slots_free", "Free slots across online agents", lambda: self.last.slots_free if self.last else 0)
        m.gauge("decision_p99_seconds", "Processor time of the scheduler's decision, p99 of the last 4,096",
                lambda: self.last.recent.decision_p99_ms / 1000 if self.last and self.last.recent else 0)
        m.reconnects(reconnects)


def _strip_ts(m: MeshStatus) -> tuple[Any, ...]:
    return (m.agents_online, m.slots_total, m.slots_free, m.queue_depth, m.running, m.overloaded,
            m.recent.totals if m.recent else None)


def _view(job: Job, agent: Known | None) -> JobView:
    """A live job as operators see it; its tokens so far only as the agent it is on reports them."""
    tokens = agent.status.progress.get(job.key, 0) if agent is not None else 0
    return JobView(key=job.key, state=PHASE[job.state], node="cloud" if job.state is JobState.OFFLOADED else
                   (job.agent or ""), created_at=job.created_at, started_at=job.started_at or 0.0,
                   tokens=max(0, tokens), max_tokens=job.req.max_tokens, priority=job.req.priority)
