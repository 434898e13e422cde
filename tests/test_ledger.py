"""The ledger keeps every state change and survives reopening."""

from __future__ import annotations

import sqlite3

import pytest

from broker.coordinator.ledger import Ledger
from broker.runtime.errors import LedgerError


def row(key: str, state: str = "queued") -> dict:
    return {"key": key, "device": "d", "job": key.split("/")[1], "state": state, "request": "{}", "created_at": 1.0}


def test_open_jobs_survive_a_reopen(tmp_path):
    path = tmp_path / "l.db"
    led = Ledger(path)
    with led.transaction():
        led.insert(row("d/1"))
        led.insert(row("d/2"))
        led.update("d/2", "done", final='{"final":true}', delivered=0)
    led.close()
    led = Ledger(path)
    assert [r["key"] for r in led.open_jobs()] == ["d/1"]
    assert [r["key"] for r in led.undelivered()] == ["d/2"]
    assert [h["state"] for h in led.history("d/2")] == ["queued", "done"]
    assert led.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [r[0] for r in led.db.execute("SELECT version FROM migrations")] == [1, 2]


def test_a_failed_transaction_leaves_nothing(tmp_path):
    led = Ledger(tmp_path / "l.db")
    with pytest.raises(RuntimeError), led.transaction():
        led.insert(row("d/1"))
        raise RuntimeError("boom")
    assert led.get("d/1") is None
    with pytest.raises(LedgerError), led.transaction():
        led.db.execute("INSERT INTO nope VALUES (1)")
    assert isinstance(led.db.conn, sqlite3.Connection)
