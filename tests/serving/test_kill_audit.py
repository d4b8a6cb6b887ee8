"""SIGKILL in the middle of a burst: every prediction the server acknowledged (200) is in the audit log.

A real `medlens serve` process (uvicorn) gets uploads from 8 concurrent clients; once enough
were answered it is killed with SIGKILL (no shutdown, no flushing) while requests are still in
flight. The audit log (SQLite, WAL, synchronous=FULL, committed before each response) must hold
every acknowledged prediction id.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from medlens.serving.audit import AuditLog
from tests.serving._live_server import start_server

CLIENTS = 8
KILL_AFTER = 16  # acknowledged predictions before the kill
BURST_TIMEOUT = 40.0  # seconds


def test_sigkill_mid_burst_loses_no_acknowledged_prediction(tiny_run, serving_inputs, tmp_path):
    server = start_server(tiny_run, tmp_path / "srv")
    acked: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    data = {k: serving_inputs[k].read_bytes() for k in ("png", "dicom")}

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            n = 0
            while not stop.is_set():
                kind = "png" if (i + n) % 2 else "dicom"
                n += 1
                try:
                    r = c.post("/v1/predictions", files={"file": (f"x.{kind}", data[kind])})
                except httpx.HTTPError as e:  # in flight when the server died
                    with lock:
                        failures.append(type(e).__name__)
                    return
                if r.status_code == 200:
                    with lock:
                        acked.append(r.json()["id"])

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            deadline = time.monotonic() + BURST_TIMEOUT
            while time.monotonic() < deadline:
                with lock:
                    if len(acked) >= KILL_AFTER:
                        break
                time.sleep(0.05)
            server.kill()
            stop.set()
            for f in futures:
                f.result(timeout=60)
    finally:
        stop.set()
        server.kill()

    assert server.process.returncode == -9
    assert len(acked) >= KILL_AFTER // 2, f"only {len(acked)} predictions acknowledged before the kill"
    audit = AuditLog(server.audit_path)
    try:
        logged = audit.ids()
    finally:
        audit.close()
    missing = set(acked) - logged
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged predictions missing from the audit log"
    assert len(logged) >= len(acked)  # requests answered after our last read may be there too
