"""Fill docs/reliability.md's table from the rows the fault tests wrote.

    FOGMESH_RELIABILITY_OUT=build/reliability.jsonl pytest -m fault
    python -m tests.reliability build/reliability.jsonl

(``make reliability`` does both.)
"""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path

import orjson

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- table:begin -->", "<!-- table:end -->"


def render(rows: list[dict]) -> str:
    lines = [f"Measured {datetime.date.today().isoformat()} on {platform.node() or 'this machine'} "
             f"({platform.machine()}, Python {platform.python_version()}), one run of `make reliability`.", "",
             "| fault | what the test does | jobs accepted | answered once | lost | answered twice | finals |",
             "|---|---|---:|---:|---:|---:|---|"]
    windows = [r["window_ms"] for r in rows if "window_ms" in r]
    for r in rows:
        if "fault" not in r:
            continue
        finals = ", ".join(f"{status} {n}" for status, n in sorted(r["statuses"].items()))
        lines.append(f"| {r['fault']} | {r['action']} | {r['accepted']} | {r['answered']} | {r['lost']} | "
                     f"{r['twice']} | {finals} |")
    for w in windows:
        lines += ["", f"A final's delivery is in the ledger {w['median']} ms (median; max {w['max']} ms, "
                  f"{w['n']} finals) after the device received it: a coordinator killed inside that window "
                  "sends the final again on restart."]
    return "\n".join(lines)


def main(path: str) -> int:
    rows = [orjson.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}")
    print(f"{DOC}: {len(rows)} rows")
    return 0 if all(r["lost"] == 0 and r["twice"] == 0 for r in rows if "fault" in r) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/reliability.jsonl"))
