"""An OpenAI-compatible server as an inference backend (vLLM, llama.cpp's server, Ollama, a hosted
API): the cloud worker's choice when the larger model runs elsewhere.

Chat messages and structured output go to ``/v1/chat/completions`` with ``response_format``;
plain prompts go to ``/v1/completions``, or to the chat endpoint as one user message when the
server only serves chat (``chat_only``). Sampling fields the request sets are passed through.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from agents.backends.base import Generation, Stopped
from agents.errors import BackendError
from schemas.messages import ChatMessage, Request
from schemas.status import ModelInfo

PASSED = ("temperature", "top_p", "seed", "stop")  # OpenAI's own names for fogmesh's sampling fields
EXTRA = ("top_k", "min_p", "repeat_penalty")  # understood by llama.cpp's server, vLLM and others
FINISH: dict[str, Stopped] = {"stop": "stop", "length": "length"}


class OpenAIBackend:
    """One OpenAI-compatible endpoint; not streamed (the cloud path returns whole answers)."""

    def __init__(self, url: str, model: str, api_key: str = "", timeout_s: float = 120.0,
                 chat_only: bool = False, schema_style: str = "openai") -> None:
        self.base = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.chat_only = chat_only
        self.schema_style = schema_style
        self.info = ModelInfo(name=model or "openai", chat_template="server")

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        """The endpoint and JSON body for ``request``."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "stream": False}
        for name in (*PASSED, *EXTRA):
            value = getattr(request, name)
            if value is not None:
                body[name] = value
        fmt = request.response_format if request.wants_json else None
        if fmt is not None:
            body["response_format"] = {k: v for k, v in msgspec.to_builtins(fmt).items() if v is not None}
            if fmt.json_schema is not None:
                schema = {k: v for k, v in msgspec.to_builtins(fmt.json_schema).items() if v is not None}
                body["response_format"]["json_schema"] = schema
                if self.schema_style == "llama-cpp-python":
                    body["response_format"] = {"type": "json_object", "schema": fmt.json_schema.schema}
        if request.messages is not None or fmt is not None or self.chat_only:
            messages = request.messages or [ChatMessage(role="user", content=request.prompt or "")]
            body["messages"] = msgspec.to_builtins(messages)
            return "/v1/chat/completions", body
        body["prompt"] = request.prompt
        return "/v1/completions", body

    def generate(self, request: Request, on_text: Callable[[str], None],
                 cancelled: Callable[[], bool]) -> Generation:
        start = time.perf_counter()
        path, body = self.body(request)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base + path, data=orjson.dumps(body), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            # 4xx: the server refuses this request (a parameter it does not take): another try would too
            code = "cloud_refused" if 400 <= exc.code < 500 and exc.code not in (408, 429) else "cloud_backend_failed"
            raise BackendError(code, f"{self.base + path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise BackendError("cloud_backend_failed", f"{self.base + path}: {exc}") from exc
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or "" if "message" in choice else choice.get("text", "")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError("cloud_backend_failed", f"{self.base + path}: unexpected answer {str(data)[:200]}") \
                from exc
        usage = data.get("usage") or {}
        total = time.perf_counter() - start
        on_text(text)
        return Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)), ttft_s=total, total_s=total,
                          stopped=FINISH.get(choice.get("finish_reason") or "", "stop"))

    def close(self) -> None:
        pass
