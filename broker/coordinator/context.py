"""What the coordinator's parts share: its settings, clock, ledger, agents, jobs and metrics, and
the publishes a batch will make once its ledger transaction has committed."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.coordinator.jobs import Jobs
from broker.coordinator.ledger import Ledger
from broker.coordinator.lengths import AnswerLengths
from broker.coordinator.registry import Registry
from broker.coordinator.scheduler import CloudTier
from broker.coordinator.settings import CoordinatorSettings
from broker.coordinator.stats import SiteStats
from broker.runtime.delivery import Delivery
from broker.runtime.metrics import TOKENS_PER_S, Metrics
from broker.runtime.mqtt import Message, Publisher
from schemas.topics import Topics


class Pending:
    """A batch's publishes and acknowledgements, in order, held until its transaction commits:
    nothing leaves the coordinator that the ledger does not hold."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Any]] = []

    def publish(self, topic: str, payload: bytes, *, correlation: bytes | None = None,
                retain: bool = False, final_of: str | None = None, qos: int = 1) -> None:
        """``final_of``: the job key whose final this is; its delivery is tracked for the ledger."""
        self._items.append(("publish", (topic, payload, correlation, retain, final_of, qos)))

    def ack(self, msg: Message) -> None:
        self._items.append(("ack", msg))

    def flush(self, session: Publisher) -> list[tuple[str, Delivery]]:
        """Do it all; returns the deliveries of the finals among it."""
        items, self._items = self._items, []
        finals = []
        for kind, item in items:
            if kind == "ack":
                session.ack(item)
                continue
            topic, payload, correlation, retain, final_of, qos = item
            delivery = session.publish(topic, payload, qos=qos, retain=retain, correlation=correlation)
            if final_of is not None:
                finals.append((final_of, delivery))
        return finals


@dataclass
class CoordinatorMetrics:
    """The coordinator's own metrics (``fogmesh_coordinator_*``); ``model`` is the model a job asked for
    or, when it named none, the default model of the agent that served it."""

    metrics: Metrics
    finals: Any = None
    rejections: Any = None
    unanswered: Any = None
    offloads: Any = None
    dead_letters: Any = None
    spend: Any = None
    energy: Any = None
    queue_wait: Any = None
    ttft: Any = None
    latency: Any = None
    tps: Any = None

    @classmethod
    def create(cls, m: Metrics) -> CoordinatorMetrics:
        tier_model = ("tier", "model")
        return cls(
            metrics=m,
            finals=m.counter("jobs_total", "Jobs finished, by final status, the tier that served them and model",
                             ("status", "tier", "model")),
            rejections=m.counter("rejections_total", "Prompts rejected, by error code", ("code",)),
            unanswered=m.counter("prompts_unanswered_total",
                                 "Prompts that could not be answered on a result topic, by reason", ("reason",)),
            offloads=m.counter("offloads_total", "Jobs sent to the cloud tier, by why the edge did not take them",
                               ("reason",)),
            dead_letters=m.counter("dead_letters_total", "Jobs given up after their retries, left as dead letters"),
            spend=m.counter("spend_total", "What done jobs cost, in the currency of the configured prices "
                            "(price_per_kwh at the edge, price_in/out_per_1k in the cloud)", tier_model),
            energy=m.counter("edge_energy_joules_total", "Energy done edge jobs took (agents' joules per token)",
                             ("model",)),
            queue_wait=m.histogram("queue_wait_seconds", "From accepted to started on an agent or the cloud"),
            ttft=m.histogram("ttft_seconds", "Time to first token of done jobs", labels=tier_model),
            latency=m.histogram("latency_seconds", "From accepted to the final message, done jobs", labels=tier_model),
            tps=m.histogram("decode_tokens_per_second", "Decode rate of done jobs", TOKENS_PER_S, tier_model),
        )


@dataclass
class Core:
    """The coordinator's shared state. One thread (the loop's) reads and changes it."""

    settings: CoordinatorSettings
    ledger: Ledger
    counters: dict[str, int]
    metrics: Metrics
    clock: Callable[[], float] = time.time
    topics: Topics = field(init=False)
    registry: Registry = field(init=False)
    jobs: Jobs = field(init=False)
    pending: Pending = field(default_factory=Pending)
    cloud: CloudTier = field(default_factory=CloudTier)  # enabled while a bridge's status says it is online
    stats: SiteStats = field(default_factory=SiteStats)
    lengths: AnswerLengths = field(default_factory=AnswerLengths)  # answer lengths of finished jobs
    admitted: list[str] = field(default_factory=list)  # jobs accepted since the last dispatch pass
    m: CoordinatorMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.topics = Topics(self.settings.site)
        self.registry = Registry(self.settings.agent_timeout_factor)
        self.jobs = Jobs(self.settings.aging_s)
        self.m = CoordinatorMetrics.create(self.metrics)

    def length_key(self, model: str | None) -> str:
        """The model a job's answer length is learned and predicted under: the one it names, else the site's."""
        return model or self.settings.default_model or ""

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1
