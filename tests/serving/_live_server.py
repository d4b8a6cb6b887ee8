"""A real `medlens serve` process on a free 127.0.0.1 port, for the tests that need one (browser, SIGKILL, fuzzing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PSEUDONYM_KEY = "test-pseudonym-key"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    process: subprocess.Popen
    url: str
    log_path: Path
    audit_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no flushing."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(run_dir: Path, workdir: Path, *extra: str, startup_timeout: float = 120.0) -> LiveServer:
    """Start `medlens serve` and wait (bounded) until /healthz answers; raises if it does not."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    audit = workdir / "audit.sqlite"
    log_path = workdir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "medlens.cli.main",
        "serve",
        str(run_dir),
        "--port",
        str(port),
        "--audit-db",
        str(audit),
        "--store-dir",
        str(workdir / "store"),
        *extra,
    ]
    env = {**os.environ, "MEDLENS_PSEUDONYM_KEY": PSEUDONYM_KEY, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log_file = open(log_path, "wb")
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log_file.close()
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path, audit)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medlens serve exited with {process.returncode}:\n{server.log()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"medlens serve did not answer within {startup_timeout} s:\n{server.log()[-3000:]}")
