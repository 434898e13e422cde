"""OpenAI's API shapes, mapped to fogmesh's device contract and back.

A request body becomes a :class:`schemas.messages.Prompt`, validated by the same decoder as a
device's prompt, so a bad field gets the code the coordinator would give it. A final message
becomes a completion, or an error in OpenAI's shape with the HTTP status that fits its status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.gateway.errors import ApiError, Diverged
from schemas.codec import convert
from schemas.errors import DecodeError
from schemas.messages import Chunk, Final, Prompt
from schemas.request import rejection_code

Kind = Literal["chat", "completion"]

# OpenAI fields fogmesh has no counterpart for, when their value would change the answer:
# refused, so an application never silently gets something other than what it asked for.
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v in (None, 1), "fogmesh answers with one choice per request; leave n out or set it to 1"),
    "best_of": (lambda v: v in (None, 1), "fogmesh generates one answer per request (best_of 1)"),
    "tools": (lambda v: not v, "fogmesh does not call tools"),
    "tool_choice": (lambda v: v in (None, "none"), "fogmesh does not call tools"),
    "functions": (lambda v: not v, "fogmesh does not call functions"),
    "function_call": (lambda v: v in (None, "none"), "fogmesh does not call functions"),
    "logprobs": (lambda v: not v, "fogmesh returns no log probabilities"),
    "top_logprobs": (lambda v: not v, "fogmesh returns no log probabilities"),
    "logit_bias": (lambda v: not v, "fogmesh does not bias tokens"),
    "frequency_penalty": (lambda v: v in (None, 0), "fogmesh has no frequency_penalty; use repeat_penalty"),
    "presence_penalty": (lambda v: v in (None, 0), "fogmesh has no presence_penalty; use repeat_penalty"),
    "echo": (lambda v: not v, "fogmesh does not echo the prompt"),
    "suffix": (lambda v: not v, "fogmesh does not insert text (suffix)"),
    "modalities": (lambda v: v in (None, ["text"]), "fogmesh answers with text only"),
    "audio": (lambda v: v is None, "fogmesh answers with text only"),
    "prediction": (lambda v: v is None, "fogmesh does not take predicted outputs"),
    "reasoning_effort": (lambda v: v is None, "fogmesh's models do not take a reasoning effort"),
    "web_search_options": (lambda v: v is None, "fogmesh does not search the web"),
}
# Fields that change nothing about the answer: accepted and ignored.
IGNORED = frozenset({"user", "store", "metadata", "service_tier", "parallel_tool_calls", "safety_identifier",
                     "prompt_cache_key"})
# The Prompt's own fields a body may carry besides the input (fogmesh's extras included).
PASSED = frozenset({"model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop",
                    "response_format", "deadline_ms", "priority", "privacy", "offline_ok"})
PARAM_OF_CODE = {"max_tokens_too_large": "max_tokens", "unknown_model": "model", "chat_unsupported": "model",
                 "schema_unsupported": "response_format", "invalid_schema": "response_format",
                 "empty_prompt": "messages", "prompt_and_messages": "messages"}


@dataclass
class Asked:
    """One HTTP request as the gateway serves it: its job, what to stream, how to answer."""

    kind: Kind
    job: str
    prompt: Prompt
    stream: bool = False
    include_usage: bool = False
    model: str = ""
    created: int = field(default_factory=lambda: int(time.time()))


def parse(kind: Kind, body: dict[str, Any], job: str) -> Asked:
    """The body of /v1/chat/completions or /v1/completions as a job; ApiError 400 saying what is wrong."""
    fields: dict[str, Any] = {}
    for key, value in body.items():
        if key in REFUSED:
            allowed, why = REFUSED[key]
            if not allowed(value):
                raise ApiError(400, "unsupported_parameter", f"{key}: {why}", key)
        elif key in PASSED:
            fields[key] = value
        elif key not in IGNORED and key not in ("stream", "stream_options", "max_completion_tokens",
                                                "messages" if kind == "chat" else "prompt"):
            raise ApiError(400, "unknown_field", f"unknown field `{key}` for {_path(kind)}", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "wrong_type", "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "wrong_type", "stream_options must be an object", "stream_options")
    alias = body.get("max_completion_tokens")
    if alias is not None:
        if fields.get("max_tokens") not in (None, alias):
            raise ApiError(400, "invalid_value", "max_tokens and max_completion_tokens differ; give one",
                           "max_completion_tokens")
        fields["max_tokens"] = alias
    if kind == "chat":
        if "messages" not in body:
            raise ApiError(400, "missing_field", "`messages` is required", "messages")
        fields["messages"] = _messages(body["messages"])
    else:
        if "prompt" not in body:
            raise ApiError(400, "missing_field", "`prompt` is required", "prompt")
        fields["prompt"] = _prompt(body["prompt"])
    if fields.get("model") == "":
        del fields["model"]  # the site's default model
    if fields.get("stop") == []:
        del fields["stop"]
    fields.update(id=job, stream=stream)
    try:
        prompt = convert(fields, Prompt)
    except DecodeError as exc:
        raise ApiError(400, rejection_code(exc), exc.message, exc.field) from exc
    return Asked(kind, job, prompt, stream, bool(options.get("include_usage")), str(fields.get("model") or ""))


def _path(kind: Kind) -> str:
    return "/v1/chat/completions" if kind == "chat" else "/v1/completions"


def _messages(messages: Any) -> Any:
    """OpenAI's message forms fogmesh can take: ``developer`` is ``system``, a list of text parts is their
    text, ``name`` is dropped. Anything else is left for the Prompt's validation to name."""
    if not isinstance(messages, list):
        return messages
    out = []
    for m in messages:
        if not isinstance(m, dict):
            out.append(m)
            continue
        m = {k: v for k, v in m.items() if k != "name"}
        if m.get("role") == "developer":
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, "unsupported_content", "message content parts must be text: fogmesh's models "
                               "read text only", "messages")
            m["content"] = "".join(p["text"] for p in content)
        out.append(m)
    return out


def _prompt(prompt: Any) -> Any:
    if isinstance(prompt, list):
        if len(prompt) == 1 and isinstance(prompt[0], str):
            return prompt[0]
        raise ApiError(400, "unsupported_parameter", "prompt must be one string: fogmesh answers one prompt per "
                       "request and takes text, not token ids", "prompt")
    return prompt


# ---------------------------------------------------------------------- the answer


def refusal(final: Final) -> ApiError | None:
    """The HTTP error for a final that is not an answer; None for a job that is done."""
    if final.status == "done":
        return None
    code = final.error.code if final.error else final.status
    message = final.error.message if final.error else f"the job ended {final.status}"
    if final.status == "rejected":
        status = {"overloaded": 429, "too_large": 413, "deadline_infeasible": 503}.get(code, 400)
        param = PARAM_OF_CODE.get(code) or (code.removeprefix("invalid_") if code.startswith("invalid_") else None)
        return ApiError(status, code, message, param)
    if final.status == "expired":
        return ApiError(504, code, message)
    if final.status == "cancelled":
        return ApiError(499, code, message)
    return ApiError(503 if code == "no_agent" else 502, code, message)


def usage(final: Final) -> dict[str, int]:
    u = final.usage
    prompt, completion = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(asked: Asked, final: Final) -> str:
    """The final's finish_reason; a plain prompt's final has none (the first contract), so it is read
    from the tokens generated."""
    if final.finish_reason:
        return final.finish_reason
    done = final.usage.completion_tokens if final.usage else 0
    return "length" if done >= asked.prompt.max_tokens else "stop"


def completion(asked: Asked, final: Final) -> dict[str, Any]:
    """A done job as ``chat.completion`` or ``text_completion``, with fogmesh's own facts beside."""
    reason = finish_reason(asked, final)
    if asked.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": final.text,
                                                          "refusal": None},
                                  "finish_reason": reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": final.text, "finish_reason": reason, "logprobs": None}
    return {"id": asked.job, "object": "chat.completion" if asked.kind == "chat" else "text_completion",
            "created": asked.created, "model": asked.model, "choices": [choice], "usage": usage(final),
            "system_fingerprint": None, "fogmesh": facts(final)}


def facts(final: Final) -> dict[str, Any]:
    served = {"tier": final.served_by.tier, "node": final.served_by.node} if final.served_by else None
    return {"job": final.job, "served_by": served, "timings": final.timings, "cost": final.cost}


def event(asked: Asked, text: str | None, reason: str | None = None) -> dict[str, Any]:
    """One streamed piece: ``chat.completion.chunk`` (``text`` None: the opening delta with the role)
    or ``text_completion``; ``reason`` on the last."""
    if asked.kind == "chat":
        delta = {"role": "assistant", "content": ""} if text is None else ({"content": text} if text else {})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        kind = "text_completion"
    return {"id": asked.job, "object": kind, "created": asked.created, "model": asked.model, "choices": [choice]}


def usage_event(asked: Asked, final: Final) -> dict[str, Any]:
    """The extra last event of ``stream_options: {"include_usage": true}``."""
    kind = "chat.completion.chunk" if asked.kind == "chat" else "text_completion"
    return {"id": asked.job, "object": kind, "created": asked.created, "model": asked.model, "choices": [],
            "usage": usage(final)}


class Sent:
    """What the client has been sent so far. A chunk of a later attempt restarts the job's answer
    (another agent took it over): only text that extends what was sent goes out, never the same
    text twice; a restarted answer that differs from it cannot be mended, and says so."""

    def __init__(self) -> None:
        self.text = ""  # what the client has
        self.attempt = 0
        self.answer = ""  # the current attempt's text so far
        self.seq = 0  # the next chunk expected in this attempt

    def chunk(self, chunk: Chunk) -> str:
        """The new text ``chunk`` brings ('' for none); Diverged when it contradicts what was sent."""
        attempt = chunk.attempt or 1
        if attempt < self.attempt:
            return ""
        if attempt > self.attempt:
            self.attempt, self.answer, self.seq = attempt, "", 0
        if chunk.seq < self.seq:
            return ""  # a QoS 1 duplicate
        self.seq = chunk.seq + 1
        self.answer += chunk.text
        return self.extend(self.answer)

    def final(self, final: Final) -> str:
        """What of the final's whole text the client lacks; Diverged unless it begins with what was sent."""
        if len(final.text) < len(self.text):
            raise Diverged(f"the answer ({len(final.text)} characters) is shorter than what was streamed")
        return self.extend(final.text)

    def extend(self, text: str) -> str:
        """What of ``text`` (the current attempt's answer up to now) the client lacks."""
        if len(text) <= len(self.text):
            if not self.text.startswith(text):
                raise Diverged("a restarted attempt's answer differs from what was streamed")
            return ""
        if not text.startswith(self.text):
            raise Diverged("a restarted attempt's answer differs from what was streamed")
        new, self.text = text[len(self.text):], text
        return new
