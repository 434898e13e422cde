"""One line per event, key=value or JSON, journald-friendly."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson


def kv(event: str, **fields: Any) -> str:
    """Render an event and its fields as ``event=... key=value`` (values quoted when needed)."""
    parts = [f"event={event}"]
    for key, value in fields.items():
        if value is None:
            continue
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        if not text or any(c in text for c in ' ="'):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup(level: str = "info", fmt: str = "kv", name: str = "fogmesh") -> None:
    """Configure the root logger for a daemon. ``fmt`` is ``kv`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
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
