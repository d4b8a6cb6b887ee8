"""Download into the cache: success, checksum mismatch (bad file not kept), cache hit without a request."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from pathlib import Path

import numpy as np
import pytest

from medlens.data.download import cache_dir, download, md5_file
from medlens.errors import ChecksumError, MedlensError


class _Server:
    """A local http.server on 127.0.0.1 serving ``files`` and counting requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                body = outer.files.get(self.path.lstrip("/").split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def small_npz_bytes() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture
def serve():
    servers = []

    def start(files):
        s = _Server(files).__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.__exit__()


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDLENS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "medlens"


def test_download_success_verifies_md5(tmp_path, serve):
    body = small_npz_bytes()
    server = serve({"x.npz": body})
    dest = download(f"{server.url}/x.npz", tmp_path / "x.npz", md5=hashlib.md5(body).hexdigest(), show_progress=False)
    assert dest.read_bytes() == body
    assert md5_file(dest) == hashlib.md5(body).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]  # no temp file left


def test_download_checksum_mismatch_deletes_file(tmp_path, serve):
    server = serve({"x.npz": b"not what was published"})
    with pytest.raises(ChecksumError) as e:
        download(f"{server.url}/x.npz", tmp_path / "x.npz", md5="0" * 32, show_progress=False)
    msg = str(e.value)
    assert "x.npz" in msg and "0" * 32 in msg and hashlib.md5(b"not what was published").hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_download_http_error_is_one_line(tmp_path, serve):
    server = serve({})
    with pytest.raises(MedlensError, match="download failed"):
        download(f"{server.url}/missing.npz", tmp_path / "m.npz", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_with_progress_bar(tmp_path, serve):
    body = b"x" * 5000
    server = serve({"b.bin": body})
    assert download(f"{server.url}/b.bin", tmp_path / "b.bin", show_progress=True).read_bytes() == body
