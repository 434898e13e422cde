"""The llama.cpp backend (llama-cpp-python): token-level generation with cancellation.

Token-level ``Llama.generate`` rather than ``create_completion``: usage counts are
exact, cancellation is checked between tokens (a token is ~20 ms here, so a
cancel stops generation well inside 100 ms), and UTF-8 sequences split across
tokens are decoded incrementally instead of being held back.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.backends.base import Generation
from agents.errors import BackendError
from schemas.messages import ModelInfo

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

    def __init__(
        self,
        path: Path,
        name: str = "",
        n_ctx: int = 2048,
        threads: int = 1,
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 40,
        repeat_penalty: float = 1.1,
    ) -> None:
        import llama_cpp  # deferred: importing loads the shared library

        quiet_llama_cpp(llama_cpp)
        check_gguf(path)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError("model_load_failed", f"cannot load {path}: {exc}") from exc
        quant = _QUANT.search(path.name)
        self.info = ModelInfo(
            name=name or path.stem,
            quant=quant.group(1).upper() if quant else "",
            n_ctx=self._llm.n_ctx(),
            file_bytes=path.stat().st_size,
        )
        self._sampling: dict[str, Any] = dict(temp=temperature, top_p=top_p, top_k=top_k,
                                              repeat_penalty=repeat_penalty)
        # Gemma's <end_of_turn> ends a generation as EOS does: ask llama.cpp which tokens end one.
        vocab = self._llm._model.vocab
        self._is_end = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Generation:
        start = time.perf_counter()
        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=True)
        room = self.info.n_ctx - len(tokens)
        if room <= 0:
            raise BackendError(
                "prompt_too_long",
                f"prompt is {len(tokens)} tokens; the model's context is {self.info.n_ctx}",
            )
        limit = min(max_tokens, room)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        parts: list[str] = []
        first = 0.0
        count = 0
        stopped = "length"
        try:
            for token in self._llm.generate(tokens, reset=True, **self._sampling):
                if count == 0:
                    first = time.perf_counter() - start
                if self._is_end(token):
                    stopped = "eos"
                    break
                count += 1
                piece = decoder.decode(self._llm.detokenize([token]))
                if piece:
                    parts.append(piece)
                    on_text(piece)
                if count >= limit:
                    break
                if cancelled():
                    stopped = "cancelled"
                    break
        except (RuntimeError, ValueError) as exc:
            raise BackendError("generation_failed", str(exc)) from exc
        tail = decoder.decode(b"", final=True)
        if tail:
            parts.append(tail)
            on_text(tail)
        return Generation(
            text="".join(parts),
            prompt_tokens=len(tokens),
            completion_tokens=count,
            ttft_s=first,
            total_s=time.perf_counter() - start,
            stopped=stopped,
        )

    def close(self) -> None:
        self._llm.close()
