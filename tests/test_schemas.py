"""The wire contract: decoding errors name the field and reason; JSON Schemas never drift."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import DecodeError, decode, encode, output
from schemas.generate import drift, render
from schemas.messages import Cancel, Chunk, Final, JsonSchemaFormat, Prompt, ResponseFormat, ServedBy, Usage
from schemas.status import AgentStatus
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


def nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


REFUSED = [
    ({"type": "string", "pattern": "^(a?){1000}$"}, "repeats a group"),  # seconds per token on an agent
    ({"default": {"type": "array", "items": {"type": "integer"}, "maxItems": 30_000_000}, "$ref": "#/default"},
     "only references to #/$defs"),  # a grammar of hundreds of MB, built from 219 bytes
    ({"type": "string", "default": nested(300)}, "nests deeper"),
    ({"type": "string", "pattern": '^"a$'}, "quote or a backslash"),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}, "maxLength": 3}, "maxLength beside $ref"),
    ({"type": ["string", "null"], "maxLength": 3}, "list of types"),
    ({"enum": ["aaaa", "b"], "maxLength": 1}, "maxLength beside enum"),
    ({"allOf": [{"type": "string"}]}, "'allOf'"),
    ({"type": "array", "prefixItems": [{"type": "integer"}], "minItems": 3}, "prefixItems fixes"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "not in properties"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1024} for i in range(300)}},
     "repetitions in all"),
    ({"type": "array", "items": {}}, "give the items a schema"),
    ({"$ref": "#/$defs/missing", "$defs": {}}, "points at nothing"),
]


@pytest.mark.parametrize(("schema", "why"), REFUSED)
def test_a_schema_the_grammar_would_not_enforce_or_could_not_afford_is_refused(schema, why):
    fmt = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="s", schema=schema))
    with pytest.raises(output.OutputError) as err:
        output.check(fmt)
    assert err.value.code in ("schema_unsupported", "invalid_schema")
    assert why in err.value.message


def test_strings_in_the_grammar_hold_only_what_json_allows_unescaped():
    for schema in ({"type": "string"}, {"type": "string", "pattern": "^a.b$"}):
        gbnf = output.grammar(ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="s", schema=schema)))
        rules = dict(line.split(" ::= ", 1) for line in gbnf.splitlines() if " ::= " in line)
        for name in ("char", "dot"):
            if name in rules:
                assert rules[name].startswith('[^"\\\\\\x7F\\x00-\\x1F]'), rules[name]


def test_a_number_cut_off_by_max_tokens_is_truncated_not_done():
    fmt = ResponseFormat(type="json_schema", json_schema=JsonSchemaFormat(name="n", schema={"type": "integer"}))
    with pytest.raises(output.OutputError) as err:
        output.parse("100", "length", fmt)
    assert err.value.code == "output_truncated"
    assert output.parse("100", "stop", fmt) == 100
