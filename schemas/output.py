"""Structured output: the grammar that constrains generation to a response format, and the check of an
answer against it.

What a schema may contain is decided in :mod:`schemas.enforce`; a schema that passes is turned into
a llama.cpp grammar (GBNF) by llama-cpp-python's port of llama.cpp's ``json_schema_to_grammar``, with
its string characters narrowed to what JSON allows unescaped (the port lets raw control characters,
and a pattern's ``.`` lets quotes, into a string). Every answer is validated against the schema by
a real JSON Schema validator (``jsonschema``) before the job ends ``done``.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from schemas import enforce
from schemas.enforce import OutputError
from schemas.messages import ResponseFormat

__all__ = ["OutputError", "check", "grammar", "parse"]

MAX_SCHEMA_BYTES = 16_384
MAX_GRAMMAR_BYTES = 1 << 20
# A JSON string's characters: not a quote, a backslash or a control character, else an escape.
_CHAR = r'''char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'''
_DOT = r'''dot ::= [^"\\\x7F\x00-\x1F]'''


def _narrow(gbnf: str) -> str:
    lines = gbnf.splitlines()
    return "\n".join(_CHAR if line.startswith("char ::=") else _DOT if line.startswith("dot ::=") else line
                     for line in lines) + "\n"


@functools.lru_cache(maxsize=256)
def _grammar(schema_json: str) -> str | OutputError:
    """The grammar for a schema, or why not (failures are remembered too: a device re-sending a schema
    that cannot be enforced must not cost the coordinator the work again)."""
    import jsonschema
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # deferred: loads llama.cpp's library

    schema = orjson.loads(schema_json)
    try:
        enforce.check(schema)
        jsonschema.Draft202012Validator.check_schema(schema)
    except OutputError as exc:
        return exc
    except jsonschema.SchemaError as exc:
        return OutputError("invalid_schema", f"not a valid JSON Schema: {exc.message}")
    try:
        gbnf = json_schema_to_gbnf(schema_json)
    except (AssertionError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as exc:
        return enforce.unsupported(f"the schema cannot be turned into a grammar: {exc}")
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        return enforce.unsupported(f"the schema's grammar is {len(gbnf)} bytes; fogmesh takes at most "
                                   f"{MAX_GRAMMAR_BYTES} (fewer repetitions or alternatives)")
    return _narrow(gbnf)


def _schema_grammar(fmt: ResponseFormat) -> str:
    assert fmt.json_schema is not None
    schema = fmt.json_schema.schema
    enforce.document_depth(schema)  # before serialising it: orjson refuses deep documents with a TypeError
    text = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_SCHEMA_BYTES:
        raise enforce.unsupported(f"the schema is {len(text)} bytes; the limit is {MAX_SCHEMA_BYTES}")
    result = _grammar(text)
    if isinstance(result, OutputError):
        raise OutputError(result.code, result.message)
    return result


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
    _schema_grammar(fmt)


def grammar(fmt: ResponseFormat | None) -> str | None:
    """The GBNF grammar that constrains generation to ``fmt`` (None: unconstrained text)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        result = _grammar('{"type":"object"}')
        assert isinstance(result, str)
        return result
    check(fmt)
    return _schema_grammar(fmt)


def parse(text: str, finish_reason: str | None, fmt: ResponseFormat | None) -> Any:
    """The answer as JSON, checked against ``fmt``; raises ``output_truncated`` when generation was cut
    off by ``max_tokens`` first, ``output_invalid`` when it does not follow the schema."""
    if fmt is None or fmt.type == "text":
        return None
    truncated = OutputError("output_truncated", "the answer reached max_tokens before its JSON was complete; "
                            "raise max_tokens")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if finish_reason == "length":
            raise truncated from exc
        raise OutputError("output_invalid", f"the answer is not JSON: {exc}") from exc
    if finish_reason == "length" and isinstance(value, int | float) and not isinstance(value, bool):
        raise truncated  # a number cut off is still a number: only the end of generation says it is whole
    if fmt.type == "json_object" and not isinstance(value, dict):
        raise OutputError("output_invalid", f"the answer is JSON but not an object ({type(value).__name__})")
    if fmt.type == "json_schema" and fmt.json_schema is not None:
        import jsonschema

        try:
            errors = sorted(jsonschema.Draft202012Validator(fmt.json_schema.schema).iter_errors(value),
                            key=lambda e: [str(p) for p in e.path])
        except RecursionError as exc:
            raise OutputError("output_invalid", "the answer nests too deep to check against the schema") from exc
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "the answer"
            raise OutputError("output_invalid", f"the answer does not follow the schema at {where}: {first.message}")
    return value
