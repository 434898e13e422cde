"""The wire contract: decoding errors name the field and reason; JSON Schemas never drift."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, decode, encode, output
from schemas.generate import drift, render
from schemas.messages import (
    AgentStatus,
    Cancel,
    Chunk,
    Final,
    JsonSchemaFormat,
    Prompt,
    ResponseFormat,
    ServedBy,
    Usage,
)
from schemas.topics import TopicError, Topics


def test_committed_json_schemas_match_the_types():
    assert drift() == [], "run: python -m schemas.generate"


def test_every_schema_declares_draft_2020_12_and_forbids_unknown_fields():
    for path, data in render().items():
        schema = orjson.loads(data)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        body = schema["$defs"][schema["title"]]
        assert body["additionalProperties"] is False, path.name


def test_a_prompt_needs_only_its_text():
    p = decode(b'{"prompt": "hello"}', Prompt)
    assert (p.prompt, p.max_tokens, p.stream, p.priority, p.privacy, p.offline_ok) == (
        "hello", 64, True, 5, "cloud-ok", False)


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        (b"{", "not_json", None),
        (b'"text"', "not_object", None),
        (b"{}", "missing_field", "prompt"),
        (b'{"prompt": 5}', "wrong_type", "prompt"),
        (b'{"prompt": "x", "max_tokens": 1.5}', "wrong_type", "max_tokens"),
        (b'{"prompt": "x", "stream": "yes"}', "wrong_type", "stream"),
        (b'{"prompt": "x", "max_tokens": 0}', "invalid_value", "max_tokens"),
        (b'{"prompt": "x", "priority": -1}', "invalid_value", "priority"),
        (b'{"prompt": "x", "privacy": "public"}', "invalid_value", "privacy"),
        (b'{"prompt": "x", "id": "a/b"}', "invalid_value", "id"),
        (b'{"prompt": "x", "colour": "red"}', "unknown_field", "colour"),
        (b'{"prompt": NaN}', "not_json", None),
        (b'{"prompt": "x", "deadline_ms": Infinity}', "not_json", None),
    ],
)
def test_a_bad_prompt_names_its_field_and_reason(raw, code, field):
    with pytest.raises(DecodeError) as err:
        decode(raw, Prompt)
    assert err.value.code == code
    assert err.value.field == field
    assert err.value.raw == raw
    if field:
        assert f"`{field}`" in err.value.message


def test_final_messages_always_say_final_and_leave_out_empty_fields():
    body = orjson.loads(encode(Final(job="j", status="done", text="hi", served_by=ServedBy(tier="edge", node="a"),
                                     usage=Usage(prompt_tokens=2, completion_tokens=3))))
    assert body == {"job": "j", "final": True, "status": "done", "text": "hi",
                    "served_by": {"tier": "edge", "node": "a"},
                    "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    assert orjson.loads(encode(Chunk(job="j", seq=0, text="a")))["final"] is False


@given(st.builds(Prompt, prompt=st.text(min_size=1), max_tokens=st.integers(1, 4096),
                 priority=st.integers(0, 9), stream=st.booleans()))
def test_prompts_round_trip(p):
    assert decode(encode(p), Prompt) == p


def test_cancel_needs_an_id():
    assert decode(b'{"id": "j1"}', Cancel).id == "j1"
    with pytest.raises(DecodeError):
        decode(b"{}", Cancel)


def test_agent_status_round_trips():
    s = AgentStatus(agent="a", epoch=1, seq=2, state="online", slots_total=1, slots_free=1)
    assert decode(encode(s), AgentStatus) == s


def test_topics_keep_the_device_contract():
    t = Topics("plant-3")
    assert t.prompts("d1") == "fogmesh/plant-3/prompts/d1"
    assert t.cancel("d1") == "fogmesh/plant-3/cancel/d1"
    assert t.results("d1", "j1") == "fogmesh/plant-3/results/d1/j1"
    assert t.agent_status("a1") == "fogmesh/plant-3/agents/a1/status"
    assert t.mesh_status == "fogmesh/plant-3/mesh/status"
    assert t.parse("fogmesh/plant-3/results/d1/j1") == ("results", "d1", "j1")
    with pytest.raises(TopicError):
        t.parse("fogmesh/other/prompts/d1")
    with pytest.raises(TopicError):
        Topics("bad/site")


KEYWORDS = ["type", "properties", "required", "items", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
            "pattern", "minLength", "maxLength", "minItems", "maxItems", "format", "additionalProperties",
            "prefixItems", "minimum", "not", "title"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**9) | st.sampled_from(
        ["string", "object", "array", "integer", "number", "boolean", "null", "#/$defs/a", "^a{3}$", "date", "("]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from([*KEYWORDS, "a", "b"]), inner,
                                                                 max_size=4),
    max_leaves=30)


@given(st.dictionaries(st.sampled_from(KEYWORDS), json_values, max_size=5))
@settings(max_examples=300, deadline=None)
def test_any_schema_is_enforced_or_refused_with_a_code_never_an_exception(schema):
    """What the coordinator runs on a device's schema: it may only accept it or answer a precise code."""
    fmt = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="s", schema=schema))
    try:
        output.check(fmt)
    except output.OutputError as exc:
        assert exc.code in ("invalid_schema", "schema_unsupported")
        return
    assert output.grammar(fmt)


def test_answers_are_checked_against_the_schema():
    fmt = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="v", schema={
        "type": "object", "properties": {"level": {"enum": ["ok", "alarm"]}}, "required": ["level"]}))
    assert output.parse('{"level": "ok"}', "stop", fmt) == {"level": "ok"}
    cases = [('{"level": "maybe"}', "stop", "output_invalid"), ('{"lev', "length", "output_truncated"),
             ('{"lev', "stop", "output_invalid"), ("[1]", "stop", "output_invalid")]
    for text, reason, code in cases:
        with pytest.raises(output.OutputError) as err:
            output.parse(text, reason, fmt)
        assert err.value.code == code, text
    assert output.parse("no json", "stop", None) is None  # text answers are not parsed
