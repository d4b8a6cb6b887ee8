from __future__ import annotations

import sqlite3

from medlens.serving.audit import AuditLog, hash_identifier


def test_rows_round_trip_and_sqlite_is_durable(tmp_path):
    path = tmp_path / "audit.sqlite"
    log = AuditLog(path)
    log.record(
        prediction_id="p1",
        input_hash="h" * 64,
        input_ids_hashed=[hash_identifier("1.2.3", "k")],
        model="cnn-small",
        model_sha256="s" * 64,
        output={"finding": "nodule"},
        key_id="key1",
    )
    row = log.get("p1")
    assert row["output"] == {"finding": "nodule"} and row["key_id"] == "key1"
    assert "1.2.3" not in str(row["input_ids_hashed"])
    assert [r["prediction_id"] for r in log.recent()] == ["p1"]
    log.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_hash_identifier_is_keyed():
    assert hash_identifier("x", "a") != hash_identifier("x", "b")
    assert hash_identifier("x", "a") == hash_identifier("x", "a")


def _row(prediction_id: str, **extra) -> dict:
    return dict(
        prediction_id=prediction_id,
        input_hash="h" * 64,
        input_ids_hashed=["x" * 64],
        model="cnn-small",
        model_sha256="s" * 64,
        output={"finding": "nodule", **extra},
        key_id=None,
        client="127.0.0.1",
    )


def test_sqlite_rows_read_back_as_sqlalchemy_writes_them(tmp_path):
    """The SQLite commit path bypasses SQLAlchemy's insert: what it stores must read back the same
    as a row SQLAlchemy inserted (UTC time, JSON columns, NULLs, NumPy values as text)."""
    import datetime as dt

    import numpy as np
    from sqlalchemy import insert

    from medlens.serving.audit import predictions_table

    log = AuditLog(tmp_path / "audit.sqlite")
    log.record_many([_row("fast", p=np.float32(0.25), path=tmp_path)])
    with log.engine.begin() as conn:
        conn.execute(
            insert(predictions_table),
            [{**_row("orm", p="0.25", path=str(tmp_path)), "time": dt.datetime.now(dt.timezone.utc)}],
        )
    fast, orm = log.get("fast"), log.get("orm")
    assert fast["output"] == {"finding": "nodule", "p": "0.25", "path": str(tmp_path)} == orm["output"]
    assert abs(fast["time"] - orm["time"]) < dt.timedelta(minutes=1)  # SQLite keeps UTC without its offset
    assert fast["input_ids_hashed"] == orm["input_ids_hashed"] and fast["key_id"] is None is orm["key_id"]
    assert {k: type(v) for k, v in fast.items()} == {k: type(v) for k, v in orm.items()}


def test_a_group_commit_is_all_or_none(tmp_path):
    import sqlite3 as dbapi

    import pytest
    import sqlalchemy.exc

    log = AuditLog(tmp_path / "audit.sqlite")
    log.record_many([_row("a")])
    with pytest.raises((dbapi.IntegrityError, sqlalchemy.exc.IntegrityError)):
        log.record_many([_row("b"), _row("a")])  # "a" again: the whole group fails
    assert log.ids() == {"a"}
    log.record_many([_row("b")])  # the connection is usable after the failure
    assert log.ids() == {"a", "b"}
