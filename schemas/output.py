"""Structured output: which JSON Schemas fogmesh can enforce, the grammar that enforces one, and the
check of an answer against it.

A schema is turned into a llama.cpp grammar (GBNF) by llama-cpp-python's port of llama.cpp's
``json_schema_to_grammar``. That converter silently ignores keywords it does not implement
(``minimum``, ``not``, ``uniqueItems``, ...), which would let generation produce JSON the schema
forbids. So a schema may use only the keywords the converter enforces; any other is refused with
``schema_unsupported`` before the job is accepted, never answered unconstrained. Every answer is
validated against the schema by a real JSON Schema validator (``jsonschema``) before the job ends
``done``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from schemas.errors import SchemaError
from schemas.messages import ResponseFormat

# Keywords the grammar enforces, and annotations that constrain nothing.
ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions", "pattern", "minLength",
    "maxLength", "format",
})
ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
MAX_SCHEMA_BYTES = 16_384
MAX_DEPTH = 32  # nesting of subschemas
COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength"})
MAX_COUNT = 1024
MAX_GRAMMAR_BYTES = 1 << 20


class OutputError(SchemaError):
    """A response format that cannot be enforced, or an answer that does not follow it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _walk(node: Any, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise OutputError("schema_unsupported", f"the schema nests deeper than {MAX_DEPTH} levels at {path}")
    if isinstance(node, bool):
        raise OutputError("schema_unsupported", f"{path or 'the schema'} is {str(node).lower()}: the grammar "
                          "builder takes schemas as objects; write {} for any value")
    if not isinstance(node, dict):
        raise OutputError("invalid_schema", f"{path or 'the schema'} must be an object, not {type(node).__name__}")
    for key, value in node.items():
        where = f"{path}/{key}"
        if key in ANNOTATIONS:
            continue
        if key not in ENFORCED:
            raise OutputError("schema_unsupported", f"keyword {key!r} at {where} cannot be enforced while generating "
                              f"(fogmesh enforces: {', '.join(sorted(ENFORCED))}); remove it or check it yourself")
        if key == "format" and (not isinstance(value, str) or value not in FORMATS):
            raise OutputError("schema_unsupported", f"format {value!r} at {where} cannot be enforced (supported: "
                              f"{', '.join(sorted(FORMATS))})")
        if key == "$ref" and not (isinstance(value, str) and value.startswith("#/")):
            raise OutputError("schema_unsupported", f"$ref {value!r} at {where}: only references inside the "
                              "schema (#/...) are followed")
        if key == "pattern" and isinstance(value, str):
            _check_pattern(value, where)
        if key in COUNTS and isinstance(value, int) and value > MAX_COUNT:
            raise OutputError("schema_unsupported", f"{key} {value} at {where}: the grammar spells out every "
                              f"repetition, so fogmesh takes at most {MAX_COUNT}")
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                _walk(sub, f"{where}/{name}", depth + 1)
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
            for i, sub in enumerate(value):
                _walk(sub, f"{where}/{i}", depth + 1)
        elif key == "items" or (key == "additionalProperties" and not isinstance(value, bool)):
            _walk(value, where, depth + 1)


def _check_pattern(pattern: str, where: str) -> None:
    """The grammar spells a pattern's ``{n,m}`` repetitions out, nested ones multiplied: bound them before."""
    product = 1
    for low, high in QUANTIFIER.findall(pattern):
        product *= max(int(low or 0), int(high or 0), 1)
        if product > MAX_COUNT * 64:
            raise OutputError("schema_unsupported", f"pattern at {where} repeats too much for a grammar "
                              f"(the product of its {{n,m}} counts is over {MAX_COUNT * 64})")


QUANTIFIER = re.compile(r"\{(\d*)\s*(?:,\s*(\d*))?\s*\}")


@functools.lru_cache(maxsize=256)
def _grammar(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # deferred: loads llama.cpp's library

    try:
        gbnf = json_schema_to_gbnf(schema_json)
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        raise OutputError("schema_unsupported", f"the schema cannot be turned into a grammar: {exc}") from exc
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise OutputError("schema_unsupported", f"the schema's grammar is {len(gbnf)} bytes; fogmesh takes at most "
                          f"{MAX_GRAMMAR_BYTES} (fewer repetitions or alternatives)")
    return gbnf


def schema_text(fmt: ResponseFormat) -> str:
    """The schema a json_schema format carries, as canonical JSON text."""
    assert fmt.json_schema is not None
    return orjson.dumps(fmt.json_schema.schema, option=orjson.OPT_SORT_KEYS).decode()


def check(fmt: ResponseFormat | None) -> None:
    """Refuse a response format fogmesh cannot enforce: ``invalid_response_format``, ``invalid_schema``
    (not a valid JSON Schema) or ``schema_unsupported`` (valid, but not enforceable while generating)."""
    if fmt is None or fmt.type != "json_schema":
        if fmt is not None and fmt.json_schema is not None:
            raise OutputError("invalid_response_format", f"response_format type {fmt.type!r} takes no json_schema; "
                              "use type json_schema")
        return
    if fmt.json_schema is None:
        raise OutputError("invalid_response_format",
                          "response_format type json_schema needs json_schema: {name, schema}")
    _walk(fmt.json_schema.schema, "")  # first: it bounds the nesting the next steps recurse through
    text = schema_text(fmt)
    if len(text) > MAX_SCHEMA_BYTES:
        raise OutputError("schema_unsupported", f"the schema is {len(text)} bytes; the limit is {MAX_SCHEMA_BYTES}")
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(fmt.json_schema.schema)
    except jsonschema.SchemaError as exc:
        raise OutputError("invalid_schema", f"not a valid JSON Schema: {exc.message}") from exc
    _grammar(text)


def grammar(fmt: ResponseFormat | None) -> str | None:
    """The GBNF grammar that constrains generation to ``fmt`` (None: unconstrained text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _grammar('{"type": "object"}')
    check(fmt)
    return _grammar(schema_text(fmt))


def parse(text: str, finish_reason: str | None, fmt: ResponseFormat | None) -> Any:
    """The answer as JSON, checked against ``fmt``; raises ``output_truncated`` when generation was cut
    off by ``max_tokens`` first, ``output_invalid`` when it does not follow the schema."""
    if fmt is None or fmt.type == "text":
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if finish_reason == "length":
            raise OutputError("output_truncated", "the answer reached max_tokens before its JSON was complete; "
                              "raise max_tokens") from exc
        raise OutputError("output_invalid", f"the answer is not JSON: {exc}") from exc
    if fmt.type == "json_object" and not isinstance(value, dict):
        raise OutputError("output_invalid", f"the answer is JSON but not an object ({type(value).__name__})")
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        import jsonschema

        errors = sorted(jsonschema.Draft202012Validator(fmt.json_schema.schema).iter_errors(value),
                        key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "the answer"
            raise OutputError("output_invalid", f"the answer does not follow the schema at {where}: {first.message}")
    return value
