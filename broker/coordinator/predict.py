"""How long a job would take on an agent or in the cloud, in parts. Pure: no I/O, no clock.

A job's completion on an agent is

    queue wait + TTFT + prompt tokens / prefill rate at its length + expected tokens / decode rate at k

where k is the number of slots that would decode at once with the job (its own included), the
decode rate at k is what the agent advertises for that concurrency (``decode_tps_at[k - 1]``),
and the queue wait is until the agent's first slot frees for it: each job placed there takes the
first slot that frees, for its time still to run (its first token still ahead, then its tokens
still to come at the rate with every slot busy), never past its deadline (``slot_free``). k
falls as the jobs beside it end (``decode_beside``): a job that waited for two that ended
together decodes alone (predicted with every slot busy, such jobs were 25-55% late under
bursts), and one placed beside a job nearly done decodes alone after it (predicted beside it
throughout, readings on a 2-slot agent were predicted at twice their time). A running job
counts the tokens it has not decoded yet, as predicted from when it started (``fleet.py``); a
view without its jobs one by one shares their tokens out among the slots, every slot busy.
The expected tokens are a learned high quantile of the answer length (see
``lengths``), never more than ``max_tokens``. On an agent whose slots share one batch, a job
placed beside others whose prompts are still being evaluated decodes each token in a step that
also evaluates ``SHARED_PROMPT_TOKENS`` of theirs: that evaluation (``prefill_ahead_s``) is added to
its decode, for as many steps as it has. An agent that advertises neither prefill rate nor
per-concurrency rates is predicted as before: one decode rate, TTFT from its calibration prompt.

The cloud: the overhead before its first token (WAN, the queue service, the worker's TTFT), the
wait for a free worker when the bridge advertises how many there are, then the tokens at the
cloud's decode rate. A cloud of few workers that has not answered a job yet cannot promise a job
that would queue for one anything: its time per job is unknown (the configured prior missed by
4x on a busy machine), so such a job is predicted to wait ``UNKNOWN_WAIT_S``.

Prompt tokens are rounded to the nearest multiple of ``PROMPT_BUCKET``, so that the agent index
keeps one completion ranking per (answer, prompt) size in use rather than one per prompt. An
agent's TTFT is measured with its short calibration prompt and its prefill rate past it, so a
reading of a dozen tokens adds no prefill of its own (rounded up, it was charged 64 tokens: 0.4 s
on this machine's agents, a third of such a job's predicted time).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.coordinator.scheduler import AgentView, CloudTier

Ahead = tuple[tuple[float, float], ...]  # a busy agent's jobs: (time still to run, time left before its deadline)
PROMPT_BUCKET = 64
SHARED_PROMPT_TOKENS = 64  # a batched agent's prompt tokens a step beside running jobs (its PREFILL_SHARED)
# An edge prediction meets a deadline only if, this share more, it still fits: the median error of
# edge predictions on the cluster benchmark is 7-16%, and a job predicted at 4.5 s of a 5 s
# deadline, placed beside another on a batched agent, expired with it (docs/scheduling.md).
EDGE_MARGIN = 0.15
MIN_PREFILL_TPS = 0.01  # a prefill rate below it is no measurement (1 / 1e-320 is inf, and inf - inf NaN)
UNKNOWN_WAIT_S = 3600.0  # finite, so that it can be logged and compared; no deadline is this long


@dataclass(frozen=True)
class Parts:
    """A predicted completion, in the parts ``fogmesh explain`` shows."""

    wait_s: float  # queue wait: for a slot on the agent, or a worker in the cloud
    first_s: float  # until the first token once started: TTFT + prefill (cloud: overhead + TTFT)
    decode_s: float
    tokens: int  # the answer length assumed
    prefill_s: float = 0.0  # of first_s: its prompt past a short one's (what a batched neighbour waits for)

    @property
    def completion_s(self) -> float:
        return self.wait_s + self.first_s + self.decode_s

    def as_ms(self) -> dict[str, float]:
        return {"wait_ms": round(self.wait_s * 1000, 1), "first_token_ms": round(self.first_s * 1000, 1),
                "decode_ms": round(self.decode_s * 1000, 1), "tokens": self.tokens,
                "prefill_ms": round(self.prefill_s * 1000, 1)}


def prompt_bucket(tokens: int) -> int:
    return (max(tokens, 0) + PROMPT_BUCKET // 2) // PROMPT_BUCKET * PROMPT_BUCKET


_DIGITS = str.maketrans("", "", "0123456789")


def estimate_prompt_tokens(texts: Iterable[str]) -> int:
    """A prompt's tokens from its text, without a tokenizer (the coordinator holds none): about 4
    characters a token for English words with Gemma's and Llama's tokenizers, and a token for each
    digit, which both split one by one (a sensor log of 2,187 characters is 1,090 tokens to Gemma
    3, where characters / 4 says 547)."""
    total = 0
    for text in texts:
        rest = len(text.translate(_DIGITS))
        total += len(text) - rest + rest // 4
    return total


def rate_at(view: AgentView, k: int) -> float:
    """One job's decode tokens/s on ``view`` while ``k`` of its slots decode at once.

    A level the agent has not measured yet (0 in its list) lies between two it has: the agent's
    throughput (jobs x rate) is taken on the straight line between theirs. Above the highest it has,
    that level's throughput is shared among ``k`` jobs: a safe guess where the cores are the limit.
    Level 1 is the agent's single decode rate when it lists none for it.
    """
    base = view.decode_tps or 1.0
    at = view.decode_tps_at
    if not at:
        return base
    k = max(1, min(k, len(at)))
    if at[k - 1] > 0:
        return at[k - 1]
    below = next((j for j in range(k - 1, 1, -1) if at[j - 1] > 0), 1)
    above = next((j for j in range(k + 1, len(at) + 1) if at[j - 1] > 0), 0)
    low = (at[below - 1] if at[below - 1] > 0 else base) * below
    if not above:
        return low / k
    high = at[above - 1] * above
    return (low + (high - low) * (k - below) / (above - below)) / k


def tokens_left(planned: int, done: float, max_tokens: int) -> int:
    """A running job's answer tokens still to come, of the ``planned``, with ``done`` decoded by now.
    One past its plan is still running: half its plan is taken to be left (within ``max_tokens``),
    not none. (``done`` NaN, from an agent not to be trusted, counts as past it.)"""
    if done < planned:
        return planned - int(done)
    return int(min(planned / 2, max(0.0, max_tokens - min(done, max_tokens))))


def slot_free(ahead: Ahead, slots: int) -> tuple[float, tuple[float, ...]]:
    """When a slot frees for one more job: the jobs ``ahead`` (each one's time still to run and time
    left before its deadline, when the coordinator stops it; the running first) on ``slots``
    slots, each taking the first slot that frees; and when each of the others then ends."""
    free = [*(max(0.0, min(run, until)) for run, until in ahead[:slots]), *[0.0] * (slots - len(ahead[:slots]))]
    heapq.heapify(free)
    for run, until in ahead[slots:]:
        heapq.heapreplace(free, free[0] + max(0.0, min(run, until - free[0])))
    when = heapq.heappop(free)
    return when, tuple(sorted(free))


def decode_beside(view: AgentView, tokens: int, start: float, ends: Iterable[float]) -> float:
    """The time to decode ``tokens`` from ``start`` (its first token, seconds from now) on ``view``
    beside jobs that end at ``ends``: at the rate for as many slots as are busy, faster as each ends."""
    beside = sorted(e for e in ends if e > start)
    t, left, k = start, float(tokens), len(beside) + 1
    for end in beside:
        step = (end - t) * rate_at(view, k)
        if left <= step:
            break
        left, t, k = left - step, end, k - 1
    return t - start + left / rate_at(view, k)


def prefill_table(points: Iterable[Sequence[float]]) -> tuple[tuple[int, float], ...]:
    """An agent's or a probe's prefill rates by length as ``prefill_s`` reads them: the shortest
    first, without a length under 1 or a rate under ``MIN_PREFILL_TPS``."""
    return tuple(sorted((int(n), float(r)) for n, r in points if n >= 1 and r >= MIN_PREFILL_TPS))


def prefill_s(view: AgentView, prompt_tokens: int) -> float:
    """The time to read ``prompt_tokens`` past a short prompt's on ``view``. The time a token takes
    grows with the prompt's length: it is taken on the straight line between the lengths the agent
    measured (``prefill_tps_at``), at the shortest's below it, and past the longest on the slope
    from the shortest to the longest (two neighbouring lengths a few tokens apart would turn a few %
    of noise into a slope); and never shorter than at any shorter length measured: a token does not
    read faster for being in a longer prompt, and a table that says so is noise (the 2-slot agent
    of the cluster benchmark measured 297 tokens/s at 89 tokens and 331 at 497 at start, and its
    logs, planned at 327, expired). One length measured, or none: its one rate."""
    n = prompt_bucket(prompt_tokens)
    at = view.prefill_tps_at
    if not n or not at:
        return n / view.prefill_tps if view.prefill_tps > 0 else 0.0
    i = next((i for i in range(1, len(at)) if n <= at[i][0]), len(at) - 1)
    (n0, r0), (n1, r1) = at[max(i - 1, 0)], at[i]
    slowest = 1 / min(r for t, r in at if t <= n or t == at[0][0])  # seconds a token at a shorter length
    if n <= n0 or n1 <= n0:
        per = 1 / r0 if n <= n0 else 1 / r1
    elif n > n1:
        (first, r_first), slope = at[0], 0.0
        if n1 > first:
            slope = max((1 / r1 - 1 / r_first) / (n1 - first), 0.0)
        per = 1 / r1 + slope * (n - n1)
    else:
        per = 1 / r0 + (1 / r1 - 1 / r0) / (n1 - n0) * (n - n0)  # on the line between the two
    return n * max(per, slowest)


def agent_parts(view: AgentView, tokens: int, prompt_tokens: int = 0) -> Parts:
    slots = max(view.slots, 1)
    prefill = prefill_s(view, prompt_tokens)
    first = view.ttft_ms / 1000 + prefill
    wait = 0.0
    ends: tuple[float, ...] = ()
    if view.outstanding >= slots:
        if view.ahead_s:
            wait, ends = slot_free(view.ahead_s, slots)
        else:
            wait = (view.outstanding_tokens / rate_at(view, slots) + view.first_ahead_s) / slots
    elif view.ahead_s:  # a free slot: beside the jobs there until each ends
        ends = tuple(max(0.0, min(run, until)) for run, until in view.ahead_s)
    if view.batched and prefill:  # each of their steps also reads a piece of its prompt: each ends that much
        ends = tuple(end + prefill for end in ends)  # later (a reading beside a log on the 2-slot agent,
        # planned to end in 0.7 s, took 5 s, and the log, planned alone after it, expired with it)
    crowd = max(0.0, view.prefill_ahead_s - wait)  # decoded beside prompts still being evaluated: each step
    if crowd and view.prefill_tps > 0:  # waits for a piece of them, as long as its own steps last at most
        crowd = min(crowd, (tokens + 1) * SHARED_PROMPT_TOKENS / view.prefill_tps)
    # without its jobs one by one (or none there): beside them for all of its decode
    decode = (decode_beside(view, tokens, wait + first, ends) if view.ahead_s else
              tokens / rate_at(view, min(view.outstanding + 1, slots)))
    return Parts(wait, first, decode + crowd, tokens, prefill)


def cloud_parts(cloud: CloudTier, tokens: int) -> Parts:
    tps = cloud.decode_tps or 1.0
    wait = 0.0
    if cloud.workers:
        ahead = cloud.in_flight - cloud.workers + 1
        if ahead > 0:
            wait = ahead * cloud.service_s / cloud.workers if cloud.service_s else UNKNOWN_WAIT_S
    return Parts(wait, cloud.latency_s + cloud.ttft_s, tokens / tps, tokens)
