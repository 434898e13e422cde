"""The agent's sampler on the real model: the shortlist it starts from draws exactly what the
whole vocabulary would, so the speed costs no answer."""

from __future__ import annotations

import pytest

import agents.backends.sampling as sampling
from agents.backends.llama import LlamaBackend
from agents.backends.sampling import PENALTY_LAST_N, Candidates, Sampling, sampling_threads, shortlist_size
from agents.model import default_model_path
from schemas.messages import Request

PROMPT = "List every colour you know, one per line, and say which ones repeat:"


@pytest.fixture(scope="module")
def backend():
    b = LlamaBackend(default_model_path(), "m", 1024, threads=2)
    yield b
    b.close()


def answer(backend: LlamaBackend, **sampling_args: float) -> str:
    request = Request(prompt=PROMPT, max_tokens=48, seed=11, **sampling_args)
    return backend.generate(request, lambda _t: None, lambda: False).text


@pytest.mark.parametrize("args", [
    {"temperature": 0.9, "repeat_penalty": 1.5, "top_k": 40},  # a strong penalty moves recent tokens far down
    {"temperature": 1.2, "repeat_penalty": 1.1, "top_k": 5, "top_p": 1.0, "min_p": 0.0},
    {"temperature": 0.0, "repeat_penalty": 1.3},
])
def test_the_shortlisted_chain_answers_as_the_whole_vocabulary_does(backend, monkeypatch, args):
    short = answer(backend, **args)
    monkeypatch.setattr(sampling, "shortlist_size", lambda _params: 0)
    assert answer(backend, **args) == short


def test_the_shortlist_holds_every_token_the_penalty_can_push_out_and_none_when_it_can_pull_in():
    assert shortlist_size(Sampling(top_k=40, repeat_penalty=1.1)) == 40 + PENALTY_LAST_N
    assert shortlist_size(Sampling(temperature=0.0)) == 1 + PENALTY_LAST_N
    assert shortlist_size(Sampling(top_k=0)) == 0  # top-k off: the whole vocabulary takes part
    assert shortlist_size(Sampling(repeat_penalty=0.8)) == 0  # a penalty below 1 raises recent tokens


def test_sampling_threads_stay_within_the_cores_the_model_may_use(monkeypatch):
    monkeypatch.setattr(sampling.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(sampling.os, "sched_getaffinity", lambda _pid: {0, 1, 2}, raising=False)
    assert sampling_threads(slots=8, threads=2, offloaded=False) == 2  # decoding's own cores, not the machine's
    assert sampling_threads(slots=1, threads=4, offloaded=False) == 1
    assert sampling_threads(slots=8, threads=1, offloaded=True) == 3  # the cores this process may run on
    monkeypatch.delattr(sampling.os, "sched_getaffinity")  # macOS has none
    assert sampling_threads(slots=8, threads=1, offloaded=True) == 8


def test_a_threads_candidates_share_the_models_pristine_array_read_only():
    import llama_cpp

    model = Candidates(llama_cpp, 16)
    own = Candidates(llama_cpp, 16, like=model)
    assert own._pristine is model._pristine
    with pytest.raises(ValueError):
        own._pristine["id"][0] = 3
    with pytest.raises(ValueError, match="16"):
        Candidates(llama_cpp, 8, like=model)  # another model's vocabulary
