"""What a device asks for: a prompt or chat messages, how to sample, and what shape the answer takes.

The fields follow OpenAI's chat-completions API, so a device author can reuse what they know. A
:class:`Request` is shared by the device's prompt, the agent's assignment and the cloud request
it becomes, so the tiers carry the same fields.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from schemas.errors import DecodeError

DEFAULT_MAX_TOKENS = 64


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def _field(description: str, *examples: Any, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, examples=list(examples), **constraints)


Role = Literal["system", "user", "assistant"]


class ChatMessage(_Message, frozen=True):
    """One turn of a chat, as in OpenAI's chat-completions API."""

    role: Annotated[Role, _field("Who speaks: system (instructions), user, or assistant (an earlier answer).",
                                 "user")]
    content: Annotated[str, _field("What they said.", "Is 31 degrees in the server room a problem?")]


class JsonSchemaFormat(_Message, frozen=True):
    """The schema an answer must follow, as in OpenAI's ``response_format.json_schema``."""

    name: Annotated[str, _field("A name for the schema (letters, digits, _ and -).", "verdict",
                                pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    schema: Annotated[dict[str, Any], _field(
        "A JSON Schema (draft 2020-12). Generation is constrained to it and the answer validated against it.",
        {"type": "object", "properties": {"level": {"enum": ["ok", "warn", "alarm"]}}, "required": ["level"]})]
    strict: Annotated[bool, _field("Accepted for compatibility: fogmesh always constrains and validates.", True)] = True
    description: str | None = None


class ResponseFormat(_Message, frozen=True):
    """What shape the answer takes: free text, any JSON object, or JSON that follows a schema."""

    type: Annotated[Literal["text", "json_object", "json_schema"], _field(
        "text (default), json_object (any JSON object) or json_schema (JSON following json_schema.schema).",
        "json_schema")]
    json_schema: JsonSchemaFormat | None = None


StopText = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Request(_Message, frozen=True):
    """What to generate and how: the fields a prompt shares with the assignment and the cloud request
    it becomes. Sampling fields left out take the serving agent's configured values."""

    prompt: Annotated[str, _field("The text to complete. A request has prompt or messages, not both.",
                                  "The pump vibration is 7 mm/s, which means")] | None = None
    messages: Annotated[list[ChatMessage], _field(
        "A chat, rendered with the model's chat template. A request has prompt or messages, not both.",
        [{"role": "user", "content": "Is 31 degrees in the server room a problem?"}],
        min_length=1, max_length=256)] | None = None
    max_tokens: Annotated[int, _field("The most tokens to generate.", 64, ge=1)] = DEFAULT_MAX_TOKENS
    model: Annotated[str, _field("The model to use (default: the site's default model).", "gemma-3-270m",
                                 min_length=1, max_length=256)] | None = None
    temperature: Annotated[float, _field("Sampling temperature, 0-2; 0 always takes the likeliest token.",
                                         0.2, ge=0, le=2)] | None = None
    top_p: Annotated[float, _field("Nucleus sampling: keep the likeliest tokens up to this probability mass.",
                                   0.9, gt=0, le=1)] | None = None
    top_k: Annotated[int, _field("Keep only the k likeliest tokens (0: all).", 40, ge=0, le=100_000)] | None = None
    min_p: Annotated[float, _field("Drop tokens less likely than min_p x the likeliest one's probability.",
                                   0.05, ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, _field("Penalty for repeating recent tokens (1: none).", 1.1,
                                            gt=0, le=10)] | None = None
    seed: Annotated[int, _field("Random seed: with the same seed, agent and request, the same answer.", 42,
                                ge=0, le=2**32 - 1)] | None = None
    stop: Annotated[StopText | Annotated[list[StopText], msgspec.Meta(min_length=1, max_length=4)], _field(
        "A string, or up to 4, that end the answer when generated; it is not part of the answer.",
        ["\n\n"])] | None = None
    # The Meta sits on the union: msgspec drops one put on a Struct type inside it.
    response_format: Annotated[ResponseFormat | None, _field(
        "The answer's shape: text, json_object or json_schema (constrained, validated, parsed into `json`).",
        {"type": "json_object"})] = None

    def __post_init__(self) -> None:
        if self.prompt is None and self.messages is None:
            raise ValueError("Object missing required field `prompt` (or `messages`, for a chat)")
        if self.prompt is not None and self.messages is not None:
            raise ValueError("A request has `prompt` or `messages`, not both")

    @property
    def extended(self) -> bool:
        """Uses the contract's later fields: only such a request's chunks and final carry ``attempt`` and
        ``finish_reason``, so a device written for the first contract gets exactly what it validates."""
        return any(getattr(self, name) is not None for name in EXTENSIONS)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or ())

    def texts(self) -> list[str]:
        """The input's text: the prompt, or every message's content."""
        return [self.prompt] if self.prompt is not None else [m.content for m in self.messages or ()]

    def text_size(self) -> int:
        """Characters of input: the prompt, or every message's content."""
        return len(self.prompt or "") + sum(len(m.content) for m in self.messages or ())


REQUEST_FIELDS: tuple[str, ...] = Request.__struct_fields__
EXTENSIONS = ("messages", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop",
              "response_format")


def request_of(message: Request) -> dict[str, Any]:
    """The :class:`Request` fields of ``message`` (a prompt, an assignment, a cloud request), to build another."""
    return {name: getattr(message, name) for name in REQUEST_FIELDS}


# Fields whose invalid values get a code naming the field (invalid_temperature, ...).
NAMED_FIELDS = frozenset({"temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "messages",
                          "response_format"})


def rejection_code(exc: DecodeError) -> str:
    """The code a request that failed to decode is rejected with; the coordinator and the HTTP gateway
    both answer with it, so a client reads the same code whichever way it asked."""
    top = re.split(r"[.\[]", exc.field or "", maxsplit=1)[0]
    if exc.field == "prompt" and exc.code == "invalid_value":
        return "empty_prompt"
    if top in NAMED_FIELDS and exc.code in ("invalid_value", "wrong_type"):
        return f"invalid_{top}"
    return exc.code
