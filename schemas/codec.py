"""Encode and decode messages: orjson on the wire, msgspec for types and validation."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
import orjson

from schemas.errors import DecodeError

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Object missing required field `([^`]+)`"), "missing_field"),
    (re.compile(r"^Object contains unknown field `([^`]+)`"), "unknown_field"),
    (re.compile(r"^Expected `[^`]+`, got `[^`]+`"), "wrong_type"),
    (re.compile(r"^Invalid enum value"), "invalid_value"),
    (re.compile(r"^A request has `prompt` or `messages`, not both"), "prompt_and_messages"),
]


def encode(message: msgspec.Struct) -> bytes:
    """Serialise a message to compact JSON, leaving out fields that are None."""
    data = msgspec.to_builtins(message)
    return orjson.dumps({k: v for k, v in data.items() if v is not None})


def decode(raw: bytes, into: type[T]) -> T:
    """Parse ``raw`` as a message of type ``into``; raise DecodeError naming the field and reason."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", f"payload is not valid JSON: {exc}", raw) from exc
    return convert(obj, into, raw)


def convert(obj: Any, into: type[T], raw: bytes = b"") -> T:
    """Validate an already parsed JSON value as a message of type ``into``."""
    if not isinstance(obj, dict):
        raise DecodeError(
            "not_object", f"payload must be a JSON object, got {type(obj).__name__}", raw
        )
    try:
        return msgspec.convert(obj, into, strict=True)
    except msgspec.ValidationError as exc:
        raise _explain(exc, raw) from exc


def _explain(exc: msgspec.ValidationError, raw: bytes) -> DecodeError:
    text = str(exc)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    head = text[: at.start()] if at else text
    code = "invalid_value"
    field = path or None
    for pattern, reason in _REASONS:
        m = pattern.match(head)
        if m:
            code = reason
            if m.groups():
                field = f"{path}.{m.group(1)}" if path else m.group(1)
            break
    where = f" (field `{field}`)" if field and f"`{field}`" not in head else ""
    return DecodeError(code, f"{head}{where}", raw, field)
