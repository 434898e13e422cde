"""The llama.cpp backend (llama-cpp-python): token-level generation with cancellation.

Token by token over llama.cpp's evaluation and sampler API rather than ``create_completion``:
usage counts are exact, cancellation is checked between tokens (a token is ~20 ms here, so a
cancel stops generation well inside 100 ms), UTF-8 sequences split across tokens are decoded
incrementally instead of being held back, and each request brings its own sampling, stop
strings, chat rendering and output grammar (:mod:`agents.backends.sampling`).
"""

from __future__ import annotations

import ctypes
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.backends.base import Generation
from agents.backends.decoding import Decoding
from agents.backends.gpu import offload_layers, offloaded
from agents.backends.sampling import Candidates, Sampler, Sampling
from agents.chat import ChatRenderer, template_for
from agents.errors import BackendError
from schemas import output
from schemas.messages import Request
from schemas.status import ModelInfo

log = logging.getLogger("fogmesh.llama")
_LOG_CALLBACK: Any = None  # kept referenced: llama.cpp calls it from C


def quiet_llama_cpp(llama_cpp: Any) -> None:
    """llama.cpp's own notices (context sizes, the SWA cache) are not the operator's business, and
    llama-cpp-python prints some of them to stderr even with ``verbose=False``: its errors go to
    fogmesh's log as warnings, the rest to debug."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        def forward(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", "replace").rstrip()
            if line:
                # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continues the previous line
                log.log(logging.WARNING if level == 4 else logging.DEBUG, "llama.cpp: %s", line)

        _LOG_CALLBACK = llama_cpp.llama_log_callback(forward)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def check_gguf(path: Path) -> None:
    """A model file must be GGUF: say so plainly before llama.cpp fails on it (with a traceback
    from llama-cpp-python's cleanup of the half-made model)."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise BackendError("model_load_failed", f"cannot read model file {path}: {exc.strerror}") from exc
    if magic != b"GGUF":
        raise BackendError("model_load_failed", f"{path} is not a GGUF model file (it starts with {magic!r}, not "
                           "b'GGUF'); fogmesh runs llama.cpp models in GGUF format: use a .gguf file")


_QUANT = re.compile(r"(?i)(q\d+_k_[sml]|q\d+_k|q\d+_\d|q\d+|f16|bf16|f32|iq\d\w*)")


class LlamaBackend:
    """One llama.cpp context; not thread-safe, so an agent creates one per slot."""

    def __init__(self, path: Path, name: str = "", n_ctx: int = 2048, threads: int = 1,
                 sampling: Sampling | None = None, chat_format: str = "auto", gpu_layers: int | None = None,
                 own_ctx: bool = True) -> None:
        """``gpu_layers``: layers offloaded to the GPU (-1: all; None: all on a GPU build, none on a
        CPU-only one, :mod:`agents.backends.gpu`); ``own_ctx=False``: the model only,
        with a token-sized context, for an engine that makes its own (:mod:`agents.backends.batched`)."""
        import llama_cpp  # loaded already, before numpy, by agents.backends.sampling

        quiet_llama_cpp(llama_cpp)
        check_gguf(path)
        n_gpu_layers = offload_layers(gpu_layers)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx if own_ctx else 64, n_threads=threads,
                n_threads_batch=threads, n_gpu_layers=n_gpu_layers, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError("model_load_failed", f"cannot load {path}: {exc}") from exc
        self._lib = llama_cpp
        model = self._llm._model
        template, source = template_for(self._llm.metadata, chat_format)
        self._chat = None
        if template is not None:
            text = lambda token: model.token_get_text(token) if token != -1 else ""  # noqa: E731
            try:
                self._chat = ChatRenderer(template, bos=text(self._llm.token_bos()), eos=text(self._llm.token_eos()))
            except BackendError as exc:
                if source != "gguf":
                    raise  # a template the operator configured must work
                # the file's own template: serve plain prompts as before, without chat
                log.warning("model %s: its chat template does not parse (%s); chat is off for it", path, exc)
                template, source = None, f"its own chat template does not parse: {exc.message}"
        quant = _QUANT.search(path.name)
        on_gpu, layers, device = offloaded(model.model, n_gpu_layers)
        self.info = ModelInfo(
            name=name or path.stem,
            quant=quant.group(1).upper() if quant else "",
            n_ctx=self._llm.n_ctx() if own_ctx else n_ctx,
            file_bytes=path.stat().st_size,
            chat_template=source if template is not None else "",
            device=device, gpu_layers=on_gpu, layers=layers,
        )
        self._no_chat = source if template is None else ""
        self.defaults = sampling or Sampling()
        # Gemma's <end_of_turn> ends a generation as EOS does: ask llama.cpp which tokens end one.
        vocab = model.vocab
        self._vocab = vocab
        self._candidates = Candidates(self._lib, self._llm.n_vocab())  # reused by every token of every request
        self._is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        # In a chat, a control token (Gemma's <start_of_turn>) is the model opening the next turn.
        self._is_control = lambda token: bool(llama_cpp.llama_vocab_is_control(vocab, token))

    def tokens(self, request: Request) -> list[int]:
        """The request as the model's input: the prompt, or the messages rendered with the chat template."""
        if request.messages is None:
            return self._llm.tokenize((request.prompt or "").encode("utf-8"), add_bos=True)
        if self._chat is None:
            raise BackendError("chat_unsupported", f"model {self.info.name} cannot render chat messages: "
                               f"{self._no_chat}")
        pieces = self._chat([{"role": m.role, "content": m.content} for m in request.messages])
        # The template writes its special tokens (<bos>, <start_of_turn>) as text; the device's text
        # is tokenized as text.
        return [token for text, own in pieces
                for token in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=own)]

    def sampling(self, request: Request) -> Sampling:
        d = self.defaults
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return Sampling(temperature=pick(request.temperature, d.temperature), top_p=pick(request.top_p, d.top_p),
                        top_k=pick(request.top_k, d.top_k), min_p=pick(request.min_p, d.min_p),
                        repeat_penalty=pick(request.repeat_penalty, d.repeat_penalty), seed=request.seed)

    def begin(self, request: Request, on_text: Callable[[str], None], cancelled: Callable[[], bool],
              ctx: Any = None) -> Decoding:
        """A request ready to generate: its input tokens checked against the context, its sampler and
        grammar built for ``ctx`` (default: this backend's own context). Raises BackendError for a
        request this model cannot run as asked."""
        start = time.perf_counter()
        tokens = self.tokens(request)
        room = self.info.n_ctx - len(tokens)
        if room <= 0:
            raise BackendError(
                "prompt_too_long",
                f"prompt is {len(tokens)} tokens; the model's context is {self.info.n_ctx}",
            )
        try:
            gbnf = output.grammar(request.response_format)
        except output.OutputError as exc:
            raise BackendError(exc.code, exc.message) from exc
        ctx = self._llm._ctx.ctx if ctx is None else ctx
        sampler = Sampler(self._lib, ctx, self._vocab, self._candidates, self.sampling(request), gbnf)
        return Decoding(tokens, min(request.max_tokens, room), sampler, chat=request.messages is not None,
                        is_end=self._is_end, is_control=self._is_control, piece=self.piece,
                        stops=request.stops(), on_text=on_text, cancelled=cancelled, start=start)

    def piece(self, token: int) -> bytes:
        return bytes(self._llm.detokenize([token]))

    def generate(self, request: Request, on_text: Callable[[str], None], cancelled: Callable[[], bool]) -> Generation:
        job = self.begin(request, on_text, cancelled)
        try:
            self._prefill(job.tokens, reuse=request.seed is None)
            while job.advance():
                self._llm.eval([job.token])
        except (RuntimeError, ValueError) as exc:
            job.close()
            raise BackendError("generation_failed", str(exc)) from exc
        except BaseException:
            job.close()
            raise
        return job.finish()

    def _prefill(self, tokens: list[int], reuse: bool) -> None:
        """Evaluate the prompt. The longest prefix it shares with what the cache holds is reused (a site's
        prompts often share a system prompt), except for a seeded request: llama.cpp's logits are not
        bit-for-bit the same when a prompt is evaluated in different batches, and a seed promises
        the same answer every time, so a seeded request starts from an empty cache."""
        llm = self._llm
        keep = 0
        if reuse:
            for cached, new in zip(llm.input_ids[: llm.n_tokens], tokens[:-1], strict=False):
                if cached != new:
                    break
                keep += 1
        llm.n_tokens = keep  # eval() drops the cache beyond this
        llm.eval(tokens[keep:])

    def close(self) -> None:
        self._llm.close()
