"""The agents as the scheduler sees them: one :class:`AgentView` each, in an :class:`AgentIndex`,
rebuilt only for the agents that changed (a status taken, a job placed or ended, tokens counted).

Building every agent's view for every dispatch pass cost O(agents) a pass, and the views of a
1,000-agent site mostly had not changed. The registry and the jobs note which agents changed;
:meth:`Fleet.refresh` rebuilds those. Agents with a token budget are rebuilt once a pass as
well: their use is a sliding window, and it drops as time passes without any event. So are the
busy agents, each at most every ``PROGRESS_S`` and only while jobs wait to be placed: a job's
wait for a full agent, and its time beside the jobs on one with a free slot, is their answer
tokens still to come, and those drop as they decode; and so are the agents whose slots share
one batch while a long prompt is evaluated there, which slows a job placed beside it less as it
goes. At most ``PROGRESS_BATCH`` of them a
pass, so that a 1,000-agent site, all full, does not stop the loop for a few hundred milliseconds
every ``PROGRESS_S``.
"""

from __future__ import annotations

import math
import time

from broker.coordinator.context import Core
from broker.coordinator.index import AgentIndex
from broker.coordinator.predict import Ahead, prefill_table, rate_at, tokens_left
from broker.coordinator.scheduler import AgentView

PROGRESS_S = 0.25  # how often a busy agent's view counts its running jobs' progress anew, at most
PROGRESS_BATCH = 64  # busy agents brought up to date in one dispatch pass, at most: the longest waiting first


class Fleet:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.index = AgentIndex()
        self._budgeted: set[str] = set()  # agents whose budget use decays with time
        # busy agents (their jobs' time still to run drops as they generate) and batched ones evaluating a long
        # prompt (its weight on a job placed beside it drops) -> when it was last counted
        # (monotonic), the least recent first
        self._progressing: dict[str, float] = {}

    def refresh(self, budgets: bool = False) -> AgentIndex:
        """The index, with the views of the agents that changed rebuilt (``budgets``: and of every
        agent with a token budget, once a dispatch pass)."""
        c = self.core
        changed = c.registry.take_changed() | c.jobs.take_changed()
        if budgets:
            changed |= self._budgeted
            if self._progressing and (len(c.jobs.waiting) or c.admitted):
                changed.update(self._due(time.monotonic()))
        for agent in changed:
            self._rebuild(agent)
        return self.index

    def views(self) -> list[AgentView]:
        return self.refresh().views()

    def _due(self, mono: float) -> list[str]:
        due: list[str] = []
        for agent, at in self._progressing.items():
            if mono - at < PROGRESS_S or len(due) >= PROGRESS_BATCH:
                break
            due.append(agent)
        return due

    def _rebuild(self, agent: str) -> None:
        c = self.core
        k = c.registry.agents.get(agent)
        if k is None:
            self.index.remove(agent)
            self._budgeted.discard(agent)
            self._progressing.pop(agent, None)
            return
        st = k.status
        n, toks = c.jobs.load_of(agent)
        rates = tuple(st.decode_tps_at[:st.slots_total])
        expected, decoded, first, crowd = c.jobs.expected_on(agent), 0, 0.0, 0.0
        ahead: Ahead = ()
        full = n >= st.slots_total > 0  # only a full agent's backlog makes a wait
        if n:  # each job's time still to run: a full agent's make a wait, and a job beside them speeds up as they end
            # (on one with a free slot, they run beside the job placed there: n + 1 at once)
            done, ahead_first, ahead = self._progress(
                agent, rate_at(AgentView(agent, decode_tps=st.decode_tps, decode_tps_at=rates),
                               min(n + 1, st.slots_total)), st.progress)
            if full:
                decoded, first = done, ahead_first
        if n and st.batched:
            crowd = self._prompts_ahead(agent)
        view = AgentView(
            agent=agent, online=k.accepting, fresh=k.online, models=k.models, slots=st.slots_total,
            chat_models=k.chat_models, default_model=st.models[0].name if st.models else "",
            outstanding=n, outstanding_tokens=expected - decoded, first_ahead_s=first, ahead_s=ahead,
            decode_tps=st.decode_tps, ttft_ms=st.ttft_ms,
            # a level per slot: a longer list (a broken or hostile agent) would slow every prediction for it
            prefill_tps=st.prefill_tps, decode_tps_at=rates,
            prefill_tps_at=prefill_table(st.prefill_tps_at),
            prefill_ahead_s=crowd, batched=st.batched,
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
        self._progressing.pop(agent, None)
        if ahead or crowd:
            self._progressing[agent] = time.monotonic()  # counted now: the last to count again

    def _prompts_ahead(self, agent: str) -> float:
        """The prompt evaluation still ahead of the jobs placed on ``agent``, past a short prompt's:
        each job's predicted prefill, as much of it as its predicted first token still has ahead
        (both as predicted when it was placed, whatever the agent has advertised since)."""
        now, ahead = self.core.clock(), 0.0
        for job in self.core.jobs.on(agent):
            parts = (job.decision or {}).get("parts")
            if parts and parts.get("prefill_ms", 0) > 0:
                left = parts["first_token_ms"] / 1000
                if job.started_at is not None:
                    left -= now - job.started_at
                ahead += max(0.0, min(parts["prefill_ms"] / 1000, left))
        return ahead

    def _progress(self, agent: str, rate: float, reported: dict[str, int]) -> tuple[int, float, Ahead]:
        """The jobs placed on ``agent``, as predicted by now: (the answer tokens they have decoded, the
        time to first token still ahead of them, each one's time still to run and time left before
        its deadline, when this coordinator stops it: the running ones first). A job runs from when
        it started: its predicted first token (TTFT and prefill), then ``rate``, and has decoded at
        least what the agent last reported. One past its planned length is still running: half its
        plan is taken to be left (within its ``max_tokens``), not none. One recovered after a
        restart has no parts: its full planned length, no first token."""
        now, decoded, first = self.core.clock(), 0, 0.0
        running: Ahead = ()
        queued: list[tuple[float, tuple[float, float]]] = []
        for job in self.core.jobs.on(agent):
            parts = (job.decision or {}).get("parts")
            planned = job.planned_tokens
            first_s = parts["first_token_ms"] / 1000 if parts else 0.0
            until = job.deadline_at - now if job.deadline_at is not None else math.inf
            if job.started_at is None:
                first += first_s
                queued.append((job.created_at, (first_s + planned / rate, until)))
                continue
            going = now - job.started_at - first_s
            if going < 0:
                first -= going
                running += ((planned / rate - going, until),)
                continue
            left = tokens_left(planned, max(going * rate, reported.get(job.key, 0)) if parts else 0.0,
                               job.req.max_tokens)
            decoded += planned - left
            running += ((left / rate, until),)
        return decoded, first, (*running, *(s for _, s in sorted(queued)))
