"""An OpenAI-compatible completions endpoint as an inference backend (vLLM, llama.cpp's server,
Ollama, a hosted API): the cloud worker's choice when the larger model runs elsewhere."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

import orjson

from agents.backends.base import Generation
from agents.errors import BackendError
from schemas.messages import ModelInfo


class OpenAIBackend:
    """An OpenAI-compatible ``/v1/completions`` endpoint (text completion, not chat)."""

    def __init__(self, url: str, model: str, api_key: str = "", timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/") + "/v1/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.info = ModelInfo(name=model or "openai")

    def generate(self, prompt: str, max_tokens: int, on_text: Callable[[str], None],
                 cancelled: Callable[[], bool]) -> Generation:
        start = time.perf_counter()
        body = orjson.dumps({"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "stream": False})
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = orjson.loads(resp.read())
        except (urllib.error.URLError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise BackendError("cloud_backend_failed", f"{self.url}: {exc}") from exc
        text = data["choices"][0].get("text", "")
        usage = data.get("usage") or {}
        total = time.perf_counter() - start
        on_text(text)
        return Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)), ttft_s=total, total_s=total,
                          stopped="length")

    def close(self) -> None:
        pass
