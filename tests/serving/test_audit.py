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
