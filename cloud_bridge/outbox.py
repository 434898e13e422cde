"""The bridge's durable outbox (SQLite, WAL): jobs waiting for the cloud, and results already handed on.

A request is written here before its MQTT message is acknowledged, so a bridge
killed at any point loses nothing; a result is recorded once handed to the
coordinator, so an SQS redelivery or a restart between publish and delete is
recognised and dropped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from broker.runtime.errors import LedgerError

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, attempt INTEGER NOT NULL,
    body BLOB NOT NULL, offline_ok INTEGER NOT NULL, deadline_at REAL, created_at REAL NOT NULL,
    state TEXT NOT NULL, sent_at REAL, UNIQUE (key, attempt)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(state, seq);
CREATE TABLE IF NOT EXISTS delivered (key TEXT NOT NULL, attempt INTEGER NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (key, attempt));
CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_at REAL);
"""


class Outbox:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            self.db.enable_wal()
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO migrations VALUES (1, ?)", (time.time(),))
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the bridge outbox {path}: {exc}") from exc
        self._lock = threading.Lock()  # the MQTT thread adds, the sender and receiver threads update

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self.db.conn.execute(sql, args)
            except sqlite3.Error as exc:
                raise LedgerError(f"outbox write failed: {exc}") from exc

    def add(self, key: str, attempt: int, body: bytes, offline_ok: bool, deadline_at: float | None) -> bool:
        """Store a request; False if this attempt was stored before (a redelivered MQTT message)."""
        cur = self._run("INSERT OR IGNORE INTO outbox (key, attempt, body, offline_ok, deadline_at, created_at, state)"
                        " VALUES (?, ?, ?, ?, ?, ?, 'pending')",
                        (key, attempt, body, int(offline_ok), deadline_at, time.time()))
        return cur.rowcount == 1

    def pending(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db.query("SELECT * FROM outbox WHERE state = 'pending' ORDER BY seq LIMIT ?", [limit]))

    def set_state(self, seqs: list[int], state: str) -> None:
        now = time.time()
        with self._lock:
            self.db.conn.executemany("UPDATE outbox SET state = ?, sent_at = ? WHERE seq = ?",
                                     [(state, now, s) for s in seqs])

    def depth(self) -> tuple[int, float]:
        """Jobs waiting to be sent, and the age in seconds of the oldest."""
        row = self._run("SELECT count(*), min(created_at) FROM outbox WHERE state = 'pending'").fetchone()
        return int(row[0]), (time.time() - row[1]) if row[1] else 0.0

    def in_flight(self, within_s: float = 3600.0) -> int:
        """Jobs sent to the queue in the last ``within_s`` whose result has not come back yet."""
        row = self._run("SELECT count(*) FROM outbox o WHERE state = 'sent' AND sent_at > ? AND NOT EXISTS "
                        "(SELECT 1 FROM delivered d WHERE d.key = o.key AND d.attempt = o.attempt)",
                        (time.time() - within_s,)).fetchone()
        return int(row[0])

    def delivered(self, key: str, attempt: int) -> bool:
        return self._run("SELECT 1 FROM delivered WHERE key = ? AND attempt = ?", (key, attempt)).fetchone() is not None

    def mark_delivered(self, key: str, attempt: int) -> None:
        self._run("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)", (key, attempt, time.time()))

    def close(self) -> None:
        self.db.conn.close()
