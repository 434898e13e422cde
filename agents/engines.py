"""How an agent's slots get their llama.cpp backends: one shared batched context per model
(:mod:`agents.backends.batched`), or one context per model per slot.

Batching is the default with more than one slot: concurrent jobs share each forward pass. With
``agent.batching = false`` (``--no-batching``) each slot keeps its own context and a share of
the cores, as before batching existed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from agents.backends.base import Backend
from agents.errors import AgentError
from agents.settings import AgentSettings


def slot_factory(settings: AgentSettings) -> Callable[[], dict[str, Backend]]:
    """``make_slot`` for :class:`agents.agent.Agent`: each call builds one slot's backends by model name."""
    from agents.backends.llama import LlamaBackend
    from agents.model import parse_models

    models = parse_models(settings.models)
    for key, named in (("chat_formats", set(settings.chat_formats)), ("gpu_layers", set(settings.gpu_layers) - {"*"})):
        unknown = sorted(named - {name for name, _ in models})
        if unknown:
            raise AgentError(f"agent.{key} names {', '.join(unknown)}, which this agent does not hold "
                             f"(its models: {', '.join(name for name, _ in models)})")
    fmt = lambda name: settings.chat_formats.get(name, "auto")  # noqa: E731

    if not settings.batching or settings.slots == 1:
        per_slot = max(1, settings.threads // settings.slots)

        def own_contexts() -> dict[str, Backend]:
            return {name: LlamaBackend(path, name, settings.n_ctx, per_slot, settings.sampling(), fmt(name),
                                       settings.gpu_layers_for(name)) for name, path in models}

        return own_contexts

    from agents.backends.batched import BatchedEngine

    engines: dict[str, BatchedEngine] = {}
    lock = threading.Lock()

    def shared_context() -> dict[str, Backend]:
        with lock:  # the first slot starts the engines (each loads its model on its own thread)
            if not engines:
                engines.update({name: BatchedEngine(path, name, settings.n_ctx, settings.threads, settings.slots,
                                                    settings.sampling(), fmt(name), settings.gpu_layers_for(name))
                                for name, path in models})
        return {name: engine.slot() for name, engine in engines.items()}

    return shared_context
