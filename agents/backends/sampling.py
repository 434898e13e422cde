"""Per-request sampling on llama.cpp, with grammar-constrained output at nearly the free rate.

llama-cpp-python puts the grammar in the sampler chain, so it is applied to every token of the
vocabulary at every step: Gemma's 262k tokens made constrained decoding 3x slower than free
decoding here. llama.cpp's own ``common_sampler`` samples first and checks only the chosen token
against the grammar, filtering the whole vocabulary only when that token is rejected; this is
the same algorithm over llama.cpp's C sampler API. The output is still always inside the grammar:
a token is used only after the grammar accepted it.

Every token is drawn from a candidate array that lives as long as the model's context. llama.cpp's
``llama_sampler_sample`` builds a fresh vector of the whole vocabulary for every token (262k entries,
3 MB for Gemma): measured here, 2.8 ms a token against 1.0-1.5 ms for the same chain over a reused
array, about 7% of a token's time at 50 tokens/s.
"""

from __future__ import annotations

import ctypes
import os
import random
import threading
from dataclasses import dataclass
from typing import Any

from agents.backends.gpu import load_llama_cpp
from agents.errors import BackendError

load_llama_cpp()  # before numpy, which crashed a CUDA build where it came first (load_llama_cpp says how)
import numpy as np  # noqa: E402

PENALTY_LAST_N = 64
SHORTLIST = 1024  # tokens the grammar filters first after a rejection


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling parameters: the request's, or the agent's configured defaults."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None


def shortlist_size(params: Sampling) -> int:
    """How many of the likeliest tokens the chain can start from without changing what it draws
    (0: the whole vocabulary).

    llama.cpp's repeat penalty looks every candidate up in its table of recent tokens: 262k
    lookups a token for Gemma, ~1.3 ms of a 1.8 ms draw measured in a batch of 8. A penalty
    >= 1 only lowers the logits of the (at most ``PENALTY_LAST_N``) recent tokens, so the ``top_k``
    best after it are always among the ``top_k + PENALTY_LAST_N`` best before it, and greedy's one
    among the ``1 + PENALTY_LAST_N``: cutting to those first draws the same token from the same
    probabilities. A penalty below 1 raises recent tokens, so then the whole vocabulary is kept.
    """
    if params.repeat_penalty < 1.0:
        return 0
    if params.temperature == 0:
        return 1 + PENALTY_LAST_N
    return params.top_k + PENALTY_LAST_N if params.top_k > 0 else 0


def sampling_threads(slots: int, threads: int, offloaded: bool) -> int:
    """How many threads draw a batch's tokens at once: one a request, within the cores the model
    may use. On the CPU that is its ``threads``, which decoding already keeps busy; offloaded, the
    cores this process may run on."""
    if not offloaded:
        return min(slots, threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(slots, cores)


class Candidates:
    """The whole vocabulary as llama.cpp's candidate array, allocated once per model context and
    refilled from the last position's logits for each token."""

    def __init__(self, lib: Any, n_vocab: int, like: Candidates | None = None) -> None:
        """``like``: another Candidates for the same model (a sampling thread's, beside the context's),
        whose pristine array this shares; that array is read-only, so no thread can change it."""
        self.lib, self.n_vocab = lib, n_vocab
        if like is not None and like.n_vocab != n_vocab:
            raise ValueError(f"a vocabulary of {n_vocab} tokens cannot share the pristine array of {like.n_vocab}")
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self.cur = np.empty(n_vocab, dtype=dtype)
        self._pristine: np.ndarray[Any, Any]
        if like is not None:
            self._pristine = like._pristine
        else:  # ids in order, p 0: copied over cur, then the logits
            self._pristine = np.zeros(n_vocab, dtype=dtype)
            self._pristine["id"] = np.arange(n_vocab, dtype=np.intc)
            self._pristine.flags.writeable = False
        self.array = lib.llama_token_data_array(data=self.cur.ctypes.data_as(lib.llama_token_data_p),
                                                size=n_vocab, selected=-1, sorted=False)
        self._one = (lib.llama_token_data * 1)()
        self.single = lib.llama_token_data_array(data=ctypes.cast(self._one, lib.llama_token_data_p),
                                                 size=1, selected=-1, sorted=False)

    def fill(self, row: Any, shortlist: bool = False) -> Any:
        """A row of logits (``llama_get_logits_ith``) as the candidate array: the whole vocabulary, or
        only its ``SHORTLIST`` likeliest tokens."""
        cur, arr = self.cur, self.array
        logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,))
        if shortlist:
            ids = np.argpartition(logits, -SHORTLIST)[-SHORTLIST:]
            n = len(ids)
            cur["id"][:n], cur["logit"][:n], cur["p"][:n] = ids, logits[ids], 0.0
        else:
            n = self.n_vocab
            ctypes.memmove(cur.ctypes.data, self._pristine.ctypes.data, cur.nbytes)
            cur["logit"] = logits
        arr.size, arr.selected, arr.sorted = n, -1, False
        return arr

    def one(self, token: int) -> Any:
        """A candidate array of ``token`` alone, to ask the grammar about it."""
        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        self.single.size, self.single.selected, self.single.sorted = 1, -1, False
        return self.single

    @property
    def one_allowed(self) -> bool:
        return bool(np.isfinite(self._one[0].logit))


class ThreadCandidates(threading.local):
    """Each sampling thread's own :class:`Candidates`, like ``shared``, made at its first draw."""

    def __init__(self, shared: Candidates) -> None:  # run again in each thread that reads it
        self.shared = shared
        self.own: Candidates | None = None

    def get(self) -> Candidates:
        if self.own is None:
            shared = self.shared
            try:
                self.own = Candidates(shared.lib, shared.n_vocab, like=shared)
            except Exception as exc:  # MemoryError: the draw's request fails, not the engine and its others
                raise BackendError("generation_failed", f"a sampling thread cannot make its candidate array "
                                                        f"({shared.n_vocab} tokens): {exc!r}") from exc
        return self.own


class Sampler:
    """One request's sampler: a chain (penalties, top-k, top-p, min-p, temperature, then a seeded draw,
    or greedy at temperature 0) and, for structured output, a grammar checked after the draw."""

    def __init__(self, lib: Any, ctx: Any, vocab: Any, candidates: Candidates, params: Sampling,
                 grammar: str | None = None) -> None:
        self.lib, self.ctx, self.candidates = lib, ctx, candidates
        self.index = -1  # the batch position whose logits are this request's (a batch of many requests)
        self.chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lambda s: lib.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        keep = shortlist_size(params)
        if keep:
            add(lib.llama_sampler_init_top_k(keep))
        add(lib.llama_sampler_init_penalties(PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0))
        if params.temperature == 0:
            add(lib.llama_sampler_init_greedy())
        else:
            add(lib.llama_sampler_init_top_k(params.top_k))
            add(lib.llama_sampler_init_top_p(params.top_p, 1))
            add(lib.llama_sampler_init_min_p(params.min_p, 1))
            add(lib.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(lib.llama_sampler_init_dist(seed))
        self.grammar = None
        self.rejections = 0
        if grammar is not None:
            self.grammar = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not self.grammar:
                self.close()
                raise BackendError("schema_unsupported", "llama.cpp could not compile the grammar for this schema")

    def logits(self) -> Any:
        """This request's row of logits at batch position ``index``; the first call after a decode
        waits for it. Not thread-safe: a batch's rows are taken on the thread that decoded it."""
        return self.lib.llama_get_logits_ith(self.ctx, self.index)

    def sample(self, row: Any = None, candidates: Candidates | None = None) -> int:
        """The next token, from ``row`` (default: this request's :meth:`logits`). Requests of one batch
        can be sampled on several threads at once, each with its own ``candidates`` array."""
        lib = self.lib
        row = self.logits() if row is None else row
        cands = self.candidates if candidates is None else candidates
        token = self._draw(row, cands, grammar_first=False)
        if self.grammar is not None:
            if not self._allowed(token, cands):
                self.rejections += 1
                shortlist = self._draw_shortlist(row, cands)
                token = self._draw(row, cands, grammar_first=True) if shortlist is None else shortlist
            lib.llama_sampler_accept(self.grammar, token)
        lib.llama_sampler_accept(self.chain, token)
        return token

    def _draw(self, row: Any, cands: Candidates, grammar_first: bool) -> int:
        arr = cands.fill(row)
        if grammar_first:
            self.lib.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if arr.selected < 0:
            raise BackendError("generation_failed", "the sampler selected no token")
        return int(arr.data[arr.selected].id)

    def _draw_shortlist(self, row: Any, cands: Candidates) -> int | None:
        """After a rejection: the grammar applied to the ``SHORTLIST`` likeliest tokens only, then the chain.
        None when the grammar allows none of them (then the whole vocabulary is filtered).

        A token outside the shortlist has a lower logit than every token in it, so greedy decoding
        picks the same token as over the whole vocabulary, and sampling loses only tokens whose
        probability is below the 1,024th likeliest's. A rejection costs ~1 ms instead of ~50 ms.
        """
        arr = cands.fill(row, shortlist=True)
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if not np.isfinite(cands.cur["logit"][: arr.size]).any():
            return None
        self.lib.llama_sampler_apply(self.chain, ctypes.byref(arr))
        if arr.selected < 0:
            return None
        return int(arr.data[arr.selected].id)

    def _allowed(self, token: int, cands: Candidates) -> bool:
        self.lib.llama_sampler_apply(self.grammar, ctypes.byref(cands.one(token)))
        return cands.one_allowed

    def close(self) -> None:
        if self.chain:
            self.lib.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            self.lib.llama_sampler_free(self.grammar)
            self.grammar = None
