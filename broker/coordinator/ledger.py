"""The coordinator's job ledger: every state change in SQLite (WAL) before it is acknowledged.

One row per job in ``jobs`` (its request, state, placement and, once final, the
final message and whether the broker acknowledged it), and every transition in
``transitions`` (what ``fogmesh explain`` reads).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import sqlite_utils

from broker.runtime.errors import LedgerError
from schemas.messages import FINAL_STATES

# Migrations are history: the final states written in the first stay as written there;
# FINAL_STATES (from the message types) is the list the code uses.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS jobs (
        key TEXT PRIMARY KEY, device TEXT NOT NULL, job TEXT NOT NULL,
        state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 5,
        attempt INTEGER NOT NULL DEFAULT 0, agent TEXT, tier TEXT,
        request TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        deadline_at REAL, final TEXT, delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS jobs_open ON jobs(state) WHERE state NOT IN
        ('done', 'error', 'rejected', 'cancelled', 'expired');
    CREATE INDEX IF NOT EXISTS jobs_undelivered ON jobs(delivered) WHERE delivered = 0;
    CREATE TABLE IF NOT EXISTS transitions (
        id INTEGER PRIMARY KEY, key TEXT NOT NULL, ts REAL NOT NULL,
        state TEXT NOT NULL, detail TEXT
    );
    CREATE INDEX IF NOT EXISTS transitions_key ON transitions(key);
    """,
    # An index on the state moved at every state change (queued, assigned, running, done) and cost
    # ~15 us of the ~20 us each of those updates took. An open job is one without its final
    # message: indexed on that, a row enters the index once and leaves it once, and the restart
    # reads the open jobs in order of arrival straight from it.
    """
    DROP INDEX IF EXISTS jobs_open;
    CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs(created_at) WHERE final IS NULL;
    """,
]


class Ledger:
    def __init__(self, path: str | Path, sync: str = "normal") -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(sqlite3.connect(str(path), check_same_thread=False, isolation_level=None))
            self.db.enable_wal()
            self.db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._migrate()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the job ledger {path}: {exc}") from exc
        self.path = path
        # A batch's writes, held until its commit: then a job's row is written once however often it
        # changed in the batch (admitted and assigned in one step: one INSERT), and the rows and
        # transitions of many jobs in a few statements. Nothing leaves before the commit anyway.
        self._rows: dict[str, tuple[bool, dict[str, Any]]] = {}  # key -> (an insert?, its columns)
        self._transitions: list[tuple[str, float, str, str | None]] = []

    def _migrate(self) -> None:
        conn = self.db.conn
        conn.execute("CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
        done = {row[0] for row in conn.execute("SELECT version FROM migrations")}
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            conn.execute("BEGIN")
            for stmt in filter(str.strip, sql.split(";")):
                conn.execute(stmt)
            conn.execute("INSERT INTO migrations VALUES (?, ?)", (version, time.time()))
            conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction for a batch of state changes (group commit)."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            self._write()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._forget()
            conn.execute("ROLLBACK")
            raise LedgerError(f"ledger write failed: {exc}") from exc
        except BaseException:
            self._forget()
            conn.execute("ROLLBACK")
            raise

    def _forget(self) -> None:
        self._rows.clear()
        self._transitions.clear()

    def _write(self) -> None:
        """The writes held so far: the rows with the same columns in one statement, then the transitions."""
        conn = self.db.conn
        rows, self._rows = self._rows, {}
        groups: dict[tuple[bool, tuple[str, ...]], list[list[Any]]] = {}
        for key, (insert, values) in rows.items():
            params = list(values.values()) if insert else [*values.values(), key]
            groups.setdefault((insert, tuple(values)), []).append(params)
        for (insert, cols), params in groups.items():
            if insert:
                sql = f"INSERT OR REPLACE INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            else:
                sql = f"UPDATE jobs SET {', '.join(f'{col} = ?' for col in cols)} WHERE key = ?"
            conn.executemany(sql, params)
        if self._transitions:
            trans, self._transitions = self._transitions, []
            conn.executemany("INSERT INTO transitions (key, ts, state, detail) VALUES (?, ?, ?, ?)", trans)

    # The per-job writes below are plain parameterised SQL: they run several times for
    # every job, and sqlite-utils' table helpers re-read the schema on each call.

    def insert(self, row: dict[str, Any], detail: dict[str, Any] | None = None) -> None:
        """A job's row, new or replacing the one under its key."""
        now = time.time()
        self._rows[row["key"]] = (True, {**row, "updated_at": now})
        self._transition(row["key"], row["state"], detail, now)

    def update(self, key: str, state: str, detail: dict[str, Any] | None = None, **fields: Any) -> None:
        now = time.time()
        values = {"state": state, "updated_at": now, **fields}
        held = self._rows.get(key)
        if held is None:
            self._rows[key] = (False, values)
        else:
            held[1].update(values)  # on top of what the batch already changed (or inserted)
        self._transition(key, state, detail, now)

    def note(self, key: str, state: str, detail: dict[str, Any] | None = None) -> None:
        """Record a transition that does not change the job's row (a decision, an event)."""
        self._transition(key, state, detail, time.time())

    def _transition(self, key: str, state: str, detail: dict[str, Any] | None, ts: float) -> None:
        self._transitions.append((key, ts, state, orjson.dumps(detail).decode() if detail else None))
        if not self.db.conn.in_transaction:  # a write on its own: no commit to wait for
            self._write()

    def mark_delivered(self, keys: list[str]) -> None:
        self._write()
        self.db.conn.executemany("UPDATE jobs SET delivered = 1 WHERE key = ?", [(k,) for k in keys])

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._rows:
            self._write()  # rare: a job changed in this batch, asked for again in it
        # Asked for every prompt (is its id taken?): plain SQL, 4 us against sqlite-utils' 16.
        cur = self.db.conn.execute("SELECT * FROM jobs WHERE key = ?", (key,))
        row = cur.fetchone()
        return dict(zip((d[0] for d in cur.description), row, strict=True)) if row else None

    def find(self, job: str) -> list[dict[str, Any]]:
        """Jobs whose device job id or key is ``job``."""
        self._write()
        return list(self.db.query("SELECT * FROM jobs WHERE key = ? OR job = ? ORDER BY created_at", [job, job]))

    def open_jobs(self) -> Iterator[dict[str, Any]]:
        """The jobs not finished, oldest first, a row at a time: a restart may find 100,000, and all
        their rows at once took more memory than the jobs made from them."""
        self._write()
        marks = ",".join("?" * len(FINAL_STATES))
        cur = self.db.conn.execute(  # `final IS NULL`: read in order from the jobs_unfinished index
            f"SELECT * FROM jobs WHERE final IS NULL AND state NOT IN ({marks}) ORDER BY created_at",
            list(FINAL_STATES))
        cols = [d[0] for d in cur.description]
        for row in cur:
            yield dict(zip(cols, row, strict=True))

    def undelivered(self) -> list[dict[str, Any]]:
        self._write()
        return list(self.db.query("SELECT * FROM jobs WHERE delivered = 0 AND final IS NOT NULL"))

    def history(self, key: str) -> list[dict[str, Any]]:
        self._write()
        rows = self.db.query("SELECT ts, state, detail FROM transitions WHERE key = ? ORDER BY id", [key])
        return [{**r, "detail": orjson.loads(r["detail"]) if r["detail"] else None} for r in rows]

    def prune(self, older_than: float | None, keep: int, batch: int = 5000) -> int:
        """Forget finished jobs whose final the broker has (``delivered``): those last updated before
        ``older_than``, and beyond the newest ``keep`` the oldest. At most ``batch`` a call, so the
        coordinator's loop never stalls on it; SQLite reuses the freed pages, so the file stops growing."""
        self._write()
        marks = ",".join("?" * len(FINAL_STATES))
        done = f"state IN ({marks}) AND (delivered = 1 OR final IS NULL)"
        conn = self.db.conn
        keys = [r[0] for r in conn.execute(
            f"SELECT key FROM jobs WHERE {done} AND updated_at < ? ORDER BY updated_at LIMIT ?",
            [*FINAL_STATES, older_than if older_than is not None else float("-inf"), batch])]
        if len(keys) < batch:
            (finished,) = conn.execute(f"SELECT count(*) FROM jobs WHERE {done}", list(FINAL_STATES)).fetchone()
            excess = min(batch - len(keys), finished - len(keys) - keep)
            if excess > 0:
                keys += [r[0] for r in conn.execute(
                    f"SELECT key FROM jobs WHERE {done} ORDER BY updated_at LIMIT ? OFFSET ?",
                    [*FINAL_STATES, excess, len(keys)])]
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            qs = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM transitions WHERE key IN ({qs})", chunk)
            conn.execute(f"DELETE FROM jobs WHERE key IN ({qs})", chunk)
        return len(keys)

    def counts(self) -> dict[str, int]:
        self._write()
        return {r["state"]: r["n"] for r in self.db.query("SELECT state, count(*) AS n FROM jobs GROUP BY state")}

    def close(self) -> None:
        self.db.conn.close()
