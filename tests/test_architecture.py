"""The tree tells what runs where: the import rule of docs/architecture.md holds, checked by
import-linter with the contract in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_each_part_imports_only_the_parts_below_it():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout


def test_every_module_reads_in_one_sitting():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for package in ("agents", "broker", "cloud_bridge", "schemas") for p in (ROOT / package).rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 400} == {}
