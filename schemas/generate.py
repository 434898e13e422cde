"""Generate the JSON Schema files (draft 2020-12) that device authors read, and the AsyncAPI document.

    python -m schemas.generate           # rewrite schemas/json/*.schema.json and schemas/asyncapi.json
    python -m schemas.generate --check   # exit 1 if the committed files drift
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas import asyncapi
from schemas.catalog import ALL_MESSAGES
from schemas.request import Request

OUT_DIR = Path(__file__).parent / "json"
ASYNCAPI_FILE = Path(__file__).parent / "asyncapi.json"  # beside json/, whose files it refers to
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_for(name: str, kind: type[Any]) -> dict[str, Any]:
    body = msgspec.json.schema(kind)
    if isinstance(kind, type) and issubclass(kind, Request):  # what Request.__post_init__ checks
        body["oneOf"] = [{"required": ["prompt"]}, {"required": ["messages"]}]
    return {
        "$schema": DIALECT,
        "$id": f"https://fogmesh.dev/schemas/{name}.schema.json",
        "title": kind.__name__,
        "description": (kind.__doc__ or "").strip().splitlines()[0] if kind.__doc__ else "",
        **body,
    }


def render() -> dict[Path, bytes]:
    """Every schema file by path, as it should be on disk."""
    return {OUT_DIR / f"{name}.schema.json": dump(schema_for(name, kind))
            for name, kind in sorted(ALL_MESSAGES.items())}


def generated() -> dict[Path, bytes]:
    """Every generated file by path: the schema files and the AsyncAPI document."""
    return {**render(), ASYNCAPI_FILE: dump(asyncapi.document())}


def dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def drift() -> list[str]:
    """Paths (under schemas/) of generated files whose committed copy differs from the types."""
    files = generated()
    stale = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    stale += [p for p in OUT_DIR.glob("*.schema.json") if p not in files]
    return sorted(str(p.relative_to(OUT_DIR.parent)) for p in stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed files drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        for name in stale:
            print(f"schemas/{name} is out of date: run python -m schemas.generate")
        return 1 if stale else 0
    OUT_DIR.mkdir(exist_ok=True)
    for path, data in generated().items():
        path.write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
