"""The agents as the scheduler sees them: one :class:`AgentView` each, in an :class:`AgentIndex`,
rebuilt only for the agents that changed (a status taken, a job placed or ended, tokens counted).

Building every agent's view for every dispatch pass cost O(agents) a pass, and the views of a
1,000-agent site mostly had not changed. The registry and the jobs note which agents changed;
:meth:`Fleet.refresh` rebuilds those. Agents with a token budget are rebuilt once a pass as
well: their use is a sliding window, and it drops as time passes without any event.
"""

from __future__ import annotations

from broker.coordinator.context import Core
from broker.coordinator.index import AgentIndex
from broker.coordinator.scheduler import AgentView


class Fleet:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.index = AgentIndex()
        self._budgeted: set[str] = set()  # agents whose budget use decays with time

    def refresh(self, budgets: bool = False) -> AgentIndex:
        """The index, with the views of the agents that changed rebuilt (``budgets``: and of every
        agent with a token budget, once a dispatch pass)."""
        c = self.core
        changed = c.registry.take_changed() | c.jobs.take_changed()
        if budgets:
            changed |= self._budgeted
        for agent in changed:
            self._rebuild(agent)
        return self.index

    def views(self) -> list[AgentView]:
        return self.refresh().views()

    def _rebuild(self, agent: str) -> None:
        c = self.core
        k = c.registry.agents.get(agent)
        if k is None:
            self.index.remove(agent)
            self._budgeted.discard(agent)
            return
        st = k.status
        n, toks = c.jobs.load_of(agent)
        view = AgentView(
            agent=agent, online=k.accepting, fresh=k.online, models=k.models, slots=st.slots_total,
            chat_models=k.chat_models, default_model=st.models[0].name if st.models else "",
            outstanding=n, outstanding_tokens=c.jobs.expected_on(agent), decode_tps=st.decode_tps, ttft_ms=st.ttft_ms,
            # a level per slot: a longer list (a broken or hostile agent) would slow every prediction for it
            prefill_tps=st.prefill_tps, decode_tps_at=tuple(st.decode_tps_at[:st.slots_total]),
            budget_tokens=st.budget.tokens if st.budget else 0,
            budget_used=max(st.budget.used if st.budget else 0, k.window.used()) + toks,
            energy_j_per_token=st.energy_j_per_token, price_per_kwh=st.price_per_kwh,
            prefetch=c.settings.prefetch,
        )
        self.index.put(view)
        if view.budget_tokens:
            self._budgeted.add(agent)
        else:
            self._budgeted.discard(agent)
