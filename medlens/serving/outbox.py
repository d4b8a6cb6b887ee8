"""The DICOM node's journal: which series arrived, which were answered, which results still wait for the PACS.

One SQLite file (``storage_dir/node.sqlite``, WAL, ``synchronous=FULL``, mode 0600) with two tables:

* ``series`` -- one row per received series, keyed by its pseudonym: ``receiving`` until answered,
  then ``answered`` with the digest of the instances the answer covered (the *complete state*), the
  reference of the SR that answered it (a later answer names it as its predecessor) and the time,
  then ``pruned`` once the retention period removed its files. Series that medlens produced
  itself are ``generated`` and never analyzed.
* ``outbox`` -- one row per result instance (SR, overlay SC), keyed by its SOP Instance UID, with
  the file to send, the number of attempts, the next attempt time and, once the PACS acknowledged
  it, ``sent_at``. An answer and its outbox rows are written in one transaction, so after a crash
  a series is either unanswered (and analyzed again) or answered with its results queued.

:func:`send_due` sends what is due in one association and backs off exponentially
(``retry_initial`` doubling up to ``retry_max`` seconds) for what the PACS did not acknowledge;
it retries forever. A row is marked sent right after the PACS's acknowledgement; only a crash
between the two can repeat a send, and the repeat carries the same SOP Instance UID, which a PACS
stores once.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pydicom

from medlens.serving.pacs import PacsError, PacsTarget

log = logging.getLogger("medlens.dicom_node")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series TEXT PRIMARY KEY, state TEXT NOT NULL, last_received REAL, refused INTEGER NOT NULL DEFAULT 0,
    digest TEXT, answered_at REAL, answers INTEGER NOT NULL DEFAULT 0, last_sr TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    sop_uid TEXT PRIMARY KEY, series TEXT NOT NULL, path TEXT NOT NULL, created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, sent_at REAL, last_error TEXT
);
"""


@dataclass
class OutboxItem:
    sop_uid: str
    series: str
    path: Path
    attempts: int


class Outbox:
    """The journal of one DICOM node (see the module docstring); safe to use from several threads."""

    def __init__(self, path: str | Path, *, retry_initial: float = 1.0, retry_max: float = 60.0):
        self.path = Path(path)
        self.retry_initial, self.retry_max = float(retry_initial), float(retry_max)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args):
        with self._lock:
            return self._db.execute(sql, args).fetchone()

    # -- series ------------------------------------------------------------------------------
    def received(self, series: str, *, refused: bool = False) -> None:
        """An instance of ``series`` arrived (stored, or ``refused``): it is receiving again."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO series (series, state, last_received) VALUES (?, 'receiving', ?) "
                "ON CONFLICT(series) DO UPDATE SET state = 'receiving', last_received = excluded.last_received",
                (series, time.time()),
            )
            if refused:
                db.execute("UPDATE series SET refused = refused + 1 WHERE series = ?", (series,))

    def mark_generated(self, series: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO series (series, state) VALUES (?, 'generated')", (series,))

    def state(self, series: str) -> str | None:
        row = self._one("SELECT state FROM series WHERE series = ?", series)
        return row[0] if row else None

    def receiving(self) -> list[str]:
        """Series received but not answered (after a restart: those to complete)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT series FROM series WHERE state = 'receiving'")]

    def answer_of(self, series: str) -> tuple[str | None, int, dict | None]:
        """(digest of the last answered state, refused instances, last SR reference) of ``series``."""
        row = self._one("SELECT digest, refused, last_sr FROM series WHERE series = ?", series)
        if not row:
            return None, 0, None
        return row[0], int(row[1]), json.loads(row[2]) if row[2] else None

    def record_unchanged(self, series: str) -> None:
        """The series is complete in a state already answered: answered again, nothing to send."""
        with self._tx() as db:
            db.execute("UPDATE series SET state = 'answered', answered_at = ? WHERE series = ?", (time.time(), series))

    def record_answer(self, series: str, digest: str, sr_ref: dict, outputs: dict[str, Path]) -> None:
        """The answer to ``series`` and its results to send (``{sop_uid: path}``), in one transaction."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE series SET state = 'answered', digest = ?, answered_at = ?, answers = answers + 1, "
                "last_sr = ?, refused = 0 WHERE series = ?",
                (digest, now, json.dumps(sr_ref), series),
            )
            db.executemany(
                "INSERT OR IGNORE INTO outbox (sop_uid, series, path, created, next_try) VALUES (?, ?, ?, ?, ?)",
                [(uid, series, str(path), now, now) for uid, path in outputs.items()],
            )

    def expired(self, answered_before: float) -> list[str]:
        """Answered series whose answer is older than ``answered_before`` (a time.time())."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series FROM series WHERE state = 'answered' AND answered_at < ?", (answered_before,)
            )
            return [r[0] for r in rows]

    def mark_pruned(self, series: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE series SET state = 'pruned' WHERE series = ? AND state = 'answered'", (series,))

    # -- outbox ------------------------------------------------------------------------------
    def due(self, limit: int = 64) -> list[OutboxItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sop_uid, series, path, attempts FROM outbox WHERE sent_at IS NULL AND next_try <= ? "
                "ORDER BY created LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [OutboxItem(r[0], r[1], Path(r[2]), r[3]) for r in rows]

    def unsent(self, series: str | None = None) -> int:
        if series is None:
            return self._one("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")[0]
        return self._one("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND series = ?", series)[0]

    def is_sent(self, sop_uid: str) -> bool:
        row = self._one("SELECT sent_at FROM outbox WHERE sop_uid = ?", sop_uid)
        return bool(row and row[0] is not None)

    def mark_sent(self, sop_uid: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE sop_uid = ?", (time.time(), sop_uid)
            )

    def mark_failed(self, item: OutboxItem, error: str) -> float:
        """Count a failed attempt; returns the delay before the next one."""
        delay = min(self.retry_max, self.retry_initial * 2 ** min(item.attempts, 30))
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE sop_uid = ?",
                (time.time() + delay, error[:300], item.sop_uid),
            )
        return delay

    def send_due(self, pacs: PacsTarget) -> int:
        """Send what is due to ``pacs`` in one association; returns how many the PACS acknowledged."""
        with self._send_lock:
            items = [i for i in self.due() if i.path.exists()]
            if not items:
                return 0
            datasets = {}
            for item in items:
                ds = pydicom.dcmread(item.path)
                datasets[item.sop_uid] = ds
            try:
                failed = {str(ds.SOPInstanceUID) for ds in pacs.send(list(datasets.values()))}
                error = "PACS did not acknowledge"
            except PacsError as e:
                failed, error = set(datasets), str(e)
            sent = 0
            for item in items:
                if item.sop_uid in failed:
                    delay = self.mark_failed(item, error)
                    log.warning(
                        "result of series %s not acknowledged by %s (attempt %d, next in %.0f s): %s",
                        item.series,
                        pacs,
                        item.attempts + 1,
                        delay,
                        error,
                    )
                else:
                    self.mark_sent(item.sop_uid)
                    sent += 1
            return sent
