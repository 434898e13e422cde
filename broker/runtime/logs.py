"""One line per event, key=value or JSON, journald-friendly.

Under systemd (``$JOURNAL_STREAM`` set) the timestamp is left to the journal, and
the level becomes a ``<N>`` syslog prefix so ``journalctl -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson

SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class Event(str):
    """A log line (``event=... key=value``) that keeps its fields for the JSON format."""

    fields: dict[str, Any]


def kv(event: str, **fields: Any) -> Event:
    """Render an event and its fields as ``event=... key=value`` (values quoted when needed)."""
    parts = [f"event={event}"]
    kept: dict[str, Any] = {"event": event}
    for key, value in fields.items():
        if value is None:
            continue
        kept[key] = value if isinstance(value, (int, float, bool, str)) else str(value)
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' ="'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    line = Event(" ".join(parts))
    line.fields = kept
    return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record.msg, "fields", None)
        if fields and not record.args:
            out.update(fields)  # event, job, agent, ... as JSON fields, not one string
        else:
            out["msg"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def setup(level: str = "info", fmt: str = "kv", name: str = "fogmesh") -> None:
    """Configure the root logger for a daemon. ``fmt`` is ``kv`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif journald:
        handler.setFormatter(_JournalFormatter(f"level=%(levelname)s proc={name} %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s level=%(levelname)s proc={name} %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if name in ("up", "demo", "ask", "status", "explain"):
        # Client commands connect short-lived sessions; their connects are not news.
        logging.getLogger("fogmesh.mqtt").setLevel(max(root.level, logging.WARNING))
