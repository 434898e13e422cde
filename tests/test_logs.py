"""Log lines: key=value by default, real JSON fields with log_format json, journald priorities under systemd."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from broker.runtime import logs


@pytest.fixture(autouse=True)
def keep_root_logger():
    """logs.setup() replaces the root logger's handlers; give pytest its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(monkeypatch, fmt: str, journald: bool = False) -> io.StringIO:
    out = io.StringIO()
    if journald:
        monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr(logs.sys, "stderr", out)
    logs.setup("info", fmt, "coordinator")
    return out


def test_key_value_lines_quote_what_needs_quoting(monkeypatch):
    out = capture(monkeypatch, "kv")
    logging.getLogger("fogmesh.t").info(logs.kv("job_done", job="dev-1/j1", detail='said "hi" there', ms=1.23456))
    line = out.getvalue().strip()
    assert line.endswith('event=job_done job=dev-1/j1 detail="said \\"hi\\" there" ms=1.235')
    assert " level=INFO proc=coordinator " in line and line[:4].isdigit()  # a timestamp first


def test_json_lines_carry_the_fields(monkeypatch):
    out = capture(monkeypatch, "json")
    logging.getLogger("fogmesh.t").warning(logs.kv("job_rejected", job="d/j", code="not_json", attempt=2))
    rec = orjson.loads(out.getvalue())
    assert rec["event"] == "job_rejected" and rec["job"] == "d/j" and rec["attempt"] == 2
    assert rec["level"] == "warning" and rec["logger"] == "fogmesh.t"


def test_under_journald_the_level_is_a_syslog_priority_and_the_journal_keeps_the_time(monkeypatch):
    out = capture(monkeypatch, "kv", journald=True)
    logging.getLogger("fogmesh.t").warning(logs.kv("mqtt_lost", broker="mqtt://gw:1883"))
    assert out.getvalue().startswith("<4>level=WARNING proc=coordinator event=mqtt_lost")
