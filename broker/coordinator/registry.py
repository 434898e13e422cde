"""The coordinator's view of the agents, built from their retained statuses.

A status is taken only if it is newer than what we hold: a later boot epoch, or
the same epoch and a higher sequence number. A retained status left by an
earlier boot, or one that arrives out of order, is ignored (Sparkplug B's bdSeq
is the precedent). The Last Will (state offline, seq 0) counts for its own
epoch whatever its sequence number. An agent whose heartbeat lapses for
``timeout_factor`` x its heartbeat interval is treated as offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from broker.runtime.budget import TokenWindow
from schemas.status import AgentStatus

Change = Literal["new", "updated", "restarted", "draining", "offline", "ignored"]


@dataclass
class Known:
    status: AgentStatus
    seen: float  # monotonic time of the last accepted status
    online: bool  # alive: online or draining (a draining agent still finishes its jobs)
    # Tokens this coordinator saw the agent generate: its advertised budget use lags a status behind.
    window: TokenWindow = field(default_factory=lambda: TokenWindow(60.0))

    @property
    def accepting(self) -> bool:
        """Takes new work: online, not draining."""
        return self.online and self.status.state == "online"

    # Cached: a Known is made anew for every status taken, and these are read for every job.
    @cached_property
    def models(self) -> frozenset[str]:
        return frozenset(m.name for m in self.status.models)

    @cached_property
    def chat_models(self) -> frozenset[str]:
        """The models this agent can render chat messages for."""
        return frozenset(m.name for m in self.status.models if m.chat)


class Registry:
    def __init__(self, timeout_factor: float = 3.0) -> None:
        self.timeout_factor = timeout_factor
        self.agents: dict[str, Known] = {}
        self.changed: set[str] = set()  # agents whose view the scheduler's fleet must rebuild
        # What the site's agents hold, asked for every prompt: kept until an agent's models change.
        self._models: tuple[set[str], set[str]] | None = None

    def update(self, status: AgentStatus, now: float) -> Change:
        known = self.agents.get(status.agent)
        if known is not None:
            old = known.status
            if status.epoch < old.epoch:
                return "ignored"
            if status.epoch == old.epoch and status.state != "offline" and status.seq <= old.seq:
                return "ignored"
        online = status.state != "offline"
        window = known.window if known else TokenWindow(status.budget.window_s if status.budget else 60.0)
        new = self.agents[status.agent] = Known(status, now, online, window)
        self.changed.add(status.agent)
        if known is None or (known.models, known.chat_models, known.status.models[:1]) != (
                new.models, new.chat_models, status.models[:1]):
            self._models = None
        if not online:
            return "offline" if known is None or known.online else "updated"
        if status.state == "draining" and (known is None or known.status.state != "draining"):
            return "draining"
        if known is None:
            return "new"
        return "restarted" if status.epoch > known.status.epoch else "updated"

    def forget(self, agent: str) -> Known | None:
        """Drop a retired agent (its retained status was cleared); return what was known of it."""
        self.changed.add(agent)
        self._models = None
        return self.agents.pop(agent, None)

    def sweep(self, now: float) -> list[str]:
        """Mark agents whose heartbeat lapsed offline; return their ids."""
        lapsed = []
        for agent, known in self.agents.items():
            limit = known.status.heartbeat_s * self.timeout_factor
            if known.online and now - known.seen > limit:
                known.online = False
                lapsed.append(agent)
        self.changed.update(lapsed)
        return lapsed

    def touch(self, agent: str) -> None:
        """Something the scheduler sees of ``agent`` changed (tokens it generated, say)."""
        self.changed.add(agent)

    def take_changed(self) -> set[str]:
        changed, self.changed = self.changed, set()
        return changed

    def is_online(self, agent: str) -> bool:
        known = self.agents.get(agent)
        return bool(known and known.online)

    def models(self) -> set[str]:
        """Every model some known agent holds (do not change the set returned)."""
        return self._held()[0]

    def chat_models(self) -> set[str]:
        """Models some known agent can chat with (a model with no name given: the agents' defaults)."""
        return self._held()[1]

    def _held(self) -> tuple[set[str], set[str]]:
        if self._models is None:
            chat = {name for k in self.agents.values() for name in k.chat_models}
            chat |= {"" for k in self.agents.values() if k.status.models and k.status.models[0].chat}
            self._models = ({name for k in self.agents.values() for name in k.models}, chat)
        return self._models

    def online(self) -> list[Known]:
        return [k for k in self.agents.values() if k.online]
