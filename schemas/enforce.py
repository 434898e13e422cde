"""Which JSON Schemas a grammar can enforce, decided before a job is accepted.

llama-cpp-python's port of llama.cpp's ``json_schema_to_grammar`` silently ignores keywords it
does not implement (``minimum``, ``not``, ``uniqueItems``), takes only the first of several
keywords that each could shape a node (``$ref`` beside ``maxLength``: the length is lost), and
spells out every repetition. Generation under such a grammar could produce JSON the schema
forbids, or cost a device's request minutes of an agent's time. So a schema is walked first and
refused with ``schema_unsupported`` (naming the keyword and where) unless every constraint in it
is one the grammar enforces, at a bounded size.
"""

from __future__ import annotations

from typing import Any

from schemas.errors import SchemaError

ENFORCED = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems",
    "enum", "const", "anyOf", "oneOf", "$ref", "$defs", "definitions", "pattern", "minLength", "maxLength",
    "format",
})
ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
# Keywords that decide a node's whole shape in the grammar builder: beside one of them, other
# constraints are dropped (so they are refused), annotations and definitions aside.
SHAPERS = ("$ref", "anyOf", "oneOf", "const", "enum")
BESIDE_SHAPERS = frozenset({"$defs", "definitions", "type"}) | ANNOTATIONS
COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
MAX_DEPTH = 32  # nesting of subschemas
MAX_DOCUMENT_DEPTH = 64  # nesting of anything in the schema document (annotations included)
MAX_COUNT = 1024  # one minItems / maxLength / {n,m}
MAX_SPELLED = 8192  # all the repetitions a grammar spells out, together


class OutputError(SchemaError):
    """A response format that cannot be enforced, or an answer that does not follow it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def unsupported(message: str) -> OutputError:
    return OutputError("schema_unsupported", message)


def document_depth(value: Any, limit: int = MAX_DOCUMENT_DEPTH) -> None:
    """Refuse a document nested past ``limit`` (without recursing: a deep one must not cost a stack)."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise unsupported(f"the schema nests deeper than {limit} levels")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)


class Walk:
    """One pass over a schema: every subschema checked, the repetitions it spells out counted."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.spelled = 0

    def node(self, node: Any, path: str, depth: int = 0) -> None:
        where = path or "the schema"
        if depth > MAX_DEPTH:
            raise unsupported(f"the schema nests deeper than {MAX_DEPTH} subschemas at {where}")
        if isinstance(node, bool):
            raise unsupported(f"{where} is {str(node).lower()}: the grammar builder takes schemas as objects; "
                              "write {} for any value")
        if not isinstance(node, dict):
            raise OutputError("invalid_schema", f"{where} must be an object, not {type(node).__name__}")
        for key in node:
            if key not in ENFORCED and key not in ANNOTATIONS:
                raise unsupported(f"keyword {key!r} at {path}/{key} cannot be enforced while generating (fogmesh "
                                  f"enforces: {', '.join(sorted(ENFORCED))}); remove it or check it yourself")
        self.siblings(node, where)
        self.values(node, path)
        for key in ("properties", "$defs", "definitions"):
            if isinstance(node.get(key), dict):
                for name, sub in node[key].items():
                    self.node(sub, f"{path}/{key}/{name}", depth + 1)
        for key in ("anyOf", "oneOf", "prefixItems"):
            if isinstance(node.get(key), list):
                for i, sub in enumerate(node[key]):
                    self.node(sub, f"{path}/{key}/{i}", depth + 1)
        if "items" in node:
            self.node(node["items"], f"{path}/items", depth + 1)
        extra = node.get("additionalProperties")
        if extra is not None and not isinstance(extra, bool):
            self.node(extra, f"{path}/additionalProperties", depth + 1)

    def siblings(self, node: dict[str, Any], where: str) -> None:
        shapers = [k for k in SHAPERS if k in node]
        if len(shapers) > 1:
            raise unsupported(f"{where} has both {shapers[0]} and {shapers[1]}: the grammar would enforce only one")
        if shapers:
            lost = sorted(k for k in node if k not in BESIDE_SHAPERS and k != shapers[0])
            if lost:
                raise unsupported(f"{where}: {', '.join(lost)} beside {shapers[0]} would not be enforced; move "
                                  f"{'them' if len(lost) > 1 else 'it'} into the {shapers[0]} branches")
        if isinstance(node.get("type"), list) and any(k not in BESIDE_SHAPERS for k in node):
            raise unsupported(f"{where}: a list of types takes no other constraints; use anyOf with one schema "
                              "per type")
        if "prefixItems" in node and ("minItems" in node or "maxItems" in node or "items" in node):
            raise unsupported(f"{where}: prefixItems fixes the array's items; minItems, maxItems and items beside "
                              "it would not be enforced")
        if node.get("items") == {}:
            raise unsupported(f"{where}: items {{}} (any value) cannot be generated; give the items a schema")
        required = node.get("required")
        properties = node.get("properties")
        if isinstance(required, list) and isinstance(properties, dict):
            missing = [r for r in required if r not in properties]
            extra = node.get("additionalProperties")
            if missing and (extra is None or extra is False):
                raise unsupported(f"{where}: required {missing} is not in properties, so it could never be "
                                  "generated")

    def values(self, node: dict[str, Any], path: str) -> None:
        fmt = node.get("format")
        if fmt is not None and (not isinstance(fmt, str) or fmt not in FORMATS):
            raise unsupported(f"format {fmt!r} at {path}/format cannot be enforced (supported: "
                              f"{', '.join(sorted(FORMATS))})")
        ref = node.get("$ref")
        if ref is not None:
            if not (isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/"))):
                raise unsupported(f"$ref {ref!r} at {path}/$ref: only references to #/$defs/... (or "
                                  "#/definitions/...) are followed")
            section, _, name = ref[2:].partition("/")
            if not isinstance(self.root.get(section), dict) or name not in self.root[section]:
                raise OutputError("invalid_schema", f"$ref {ref!r} at {path}/$ref points at nothing")
        for key in COUNTS:
            value = node.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                if value > MAX_COUNT:
                    raise unsupported(f"{key} {value} at {path}/{key}: the grammar spells out every repetition, "
                                      f"so fogmesh takes at most {MAX_COUNT}")
                self.spend(value, f"{path}/{key}")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            self.pattern(pattern, f"{path}/pattern")

    def spend(self, count: int, where: str) -> None:
        self.spelled += count
        if self.spelled > MAX_SPELLED:
            raise unsupported(f"the schema spells out more than {MAX_SPELLED} repetitions in all (at {where}); "
                              "lower its minItems / maxItems / minLength / maxLength / {n,m}")

    def pattern(self, pattern: str, where: str) -> None:
        """Patterns the grammar can spell without stalling: no repetition of a group that itself repeats
        or alternates (``(a?){1000}`` makes llama.cpp's grammar engine take seconds per token), no
        quote or backslash (the grammar would put them in the JSON string unescaped)."""
        if '"' in pattern or "\\\\" in pattern:
            raise unsupported(f"pattern at {where} matches a quote or a backslash, which the grammar cannot "
                              "escape inside a JSON string")
        groups: list[bool] = []  # per open group: does it repeat or alternate inside?
        i, n, product = 0, len(pattern), 1
        while i < n:
            c = pattern[i]
            if c == "\\":
                i += 2
                continue
            if c == "[":
                j = i + 1
                while j < n and pattern[j] != "]":
                    j += 2 if pattern[j] == "\\" else 1
                i = j + 1
                continue
            if c == "(":
                groups.append(False)
            elif c == ")" and groups:
                inner = groups.pop()
                if i + 1 < n and pattern[i + 1] in "?*+{" and inner:
                    raise unsupported(f"pattern at {where} repeats a group that itself repeats or alternates; "
                                      "the grammar engine would take seconds per token (write ^a{0,1000}$, not "
                                      "^(a?){1000}$)")
                if inner and groups:
                    groups[-1] = True
            elif c in "?*+{|" and groups:
                groups[-1] = True
            if c == "{":
                j = pattern.find("}", i)
                counts = pattern[i + 1: j].replace(" ", "").split(",") if j > 0 else []
                numbers = [int(x) for x in counts if x.isdigit()]
                product *= max([*numbers, 1])
                if product > MAX_COUNT:
                    raise unsupported(f"pattern at {where}: its {{n,m}} repetitions go past {MAX_COUNT}")
                self.spend(max([*numbers, 0]), where)
            i += 1


def check(schema: dict[str, Any]) -> None:
    """Refuse a schema the grammar cannot enforce (see the module's docstring)."""
    document_depth(schema)
    Walk(schema).node(schema, "")
