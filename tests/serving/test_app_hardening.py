"""Hardening of the REST service: early refusal of big bodies, nested JSON, security headers,
self-hosted docs, no open wide binding, and logs free of UIDs and control characters.

The body-limit tests talk raw HTTP/1.1 to a real uvicorn server (in a thread of this process): the
answer must come before the body is sent, which an in-process test client cannot show.
"""

from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
from contextlib import contextmanager

import pydicom
import pytest
import uvicorn
from fastapi.testclient import TestClient

from medlens.serving.app import create_app
from medlens.serving.predictor import Predictor
from medlens.serving.settings import ServeSettings, create_key
from tests.serving._live_server import free_port

KEY = "test-pseudonym-key"


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(tiny_run, pseudonym_key=KEY)


def make_app(tiny_run, tmp_path, predictor, **kw):
    settings = ServeSettings(
        run_dir=tiny_run,
        audit_url=str(tmp_path / "audit.sqlite"),
        store_dir=tmp_path / "store",
        pseudonym_key=KEY,
        **kw,
    )
    return create_app(settings, predictor=predictor)


@contextmanager
def live(app):
    """uvicorn serving ``app`` on a free loopback port, in a thread; yields the port."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def exchange(port: int, head: str, body_parts=(), timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send ``head`` (and ``body_parts``) and read one response; never sends more than given."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            s.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        need = int(headers.get("content-length", "0"))
        while len(rest) < need:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return int(lines[0].split()[1]), headers, rest


# -- 1. bodies refused early ---------------------------------------------------------------------
def test_oversized_content_length_is_refused_before_the_body_is_sent(tiny_run, tmp_path, predictor):
    app = make_app(tiny_run, tmp_path, predictor, max_upload_mb=1)
    with live(app) as port:
        head = (
            f"POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: application/dicom\n"
            f"Content-Length: {512 * 1024 * 1024}\n"
        )
        status, headers, body = exchange(port, head)  # not one body byte sent: the answer must come anyway
        assert status == 413 and b"too_large" in body
        assert headers.get("connection") == "close"


def test_chunked_body_is_refused_once_it_passes_the_limit(tiny_run, tmp_path, predictor):
    app = make_app(tiny_run, tmp_path, predictor, max_upload_mb=1)
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, bytes(256 * 1024))
    with live(app) as port:
        head = "POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: application/dicom\nTransfer-Encoding: chunked\n"
        status, _, body = exchange(port, head, [chunk] * 5)  # 1.25 MB sent, the body never ends
        assert status == 413 and b"too_large" in body
        boundary = "b0undary"
        head = (
            f"POST /v1/predictions HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\n"
        )
        start = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.dcm"\r\n'
            "Content-Type: application/dicom\r\n\r\n"
        ).encode()
        status, _, body = exchange(port, head, [b"%x\r\n%s\r\n" % (len(start), start), *[chunk] * 5])
        assert status == 413 and b"too_large" in body


def test_the_api_key_is_checked_before_the_body_is_read(tiny_run, tmp_path, predictor):
    keys = tmp_path / "keys.txt"
    create_key(keys, "ward")
    app = make_app(tiny_run, tmp_path, predictor, api_keys_file=keys)
    with live(app) as port:
        head = f"POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: application/dicom\nContent-Length: {10**7}\n"
        status, headers, body = exchange(port, head)
        assert status == 401 and b"unauthorized" in body and headers.get("connection") == "close"
        head = "POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: application/dicom\nTransfer-Encoding: chunked\n"
        status, _, _ = exchange(port, head, [b"10\r\n" + bytes(16) + b"\r\n"])
        assert status == 401


def test_bodies_within_the_limit_still_work_over_keep_alive(tiny_run, tmp_path, predictor, serving_inputs):
    png = serving_inputs["png"].read_bytes()
    app = make_app(tiny_run, tmp_path, predictor, max_upload_mb=1)
    with live(app) as port:
        head = f"POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: image/png\nContent-Length: {len(png)}\n"
        status, headers, body = exchange(port, head, [png])
        assert status == 200 and b'"finding"' in body
        head = "POST /v1/predictions HTTP/1.1\nHost: x\nContent-Type: image/png\nTransfer-Encoding: chunked\n"
        status, _, _ = exchange(port, head, [b"%x\r\n%s\r\n" % (len(png), png), b"0\r\n\r\n"])
        assert status == 200


# -- 2. client input never gives a 5xx -----------------------------------------------------------
@pytest.fixture
def client(tiny_run, tmp_path, predictor):
    with TestClient(make_app(tiny_run, tmp_path, predictor)) as c:
        yield c


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" * 100_000,
        b'{"study_instance_uid": "1.2", "series_instance_uid": "' + b"1." * 5000 + b'1"}',
        b'{"study_instance_uid": "1.2", "explain": [[[[]]]], "series_instance_uid": 5}',
        b"\xff\xfe not json",
        b'"just a string"',
    ],
)
def test_hostile_json_is_a_4xx_with_a_one_line_error(client, body):
    r = client.post("/v1/predictions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:200]
    assert "\n" not in r.json()["detail"]


def test_hostile_headers_and_paths_are_never_a_5xx(client):
    cases = [
        ("POST", "/v1/predictions", {"Content-Type": "image/png", "X-Filename": "a\x1b[31m\x00.png"}),
        ("POST", "/v1/predictions", {"Content-Type": "multipart/form-data"}),
        ("POST", "/v1/predictions", {"Content-Type": "multipart/form-data; boundary=" + "x" * 5000}),
        ("GET", "/v1/predictions/%1b%5b31m", {}),
        ("GET", "/v1/predictions?limit=" + "9" * 400, {}),
        ("GET", "/v1/predictions/" + "a" * 10_000 + "/heatmap.png?alpha=nan", {}),
    ]
    for method, path, headers in cases:
        r = client.request(method, path, headers=headers, content=b"\x00" * 10)
        assert r.status_code < 500, (path, r.status_code, r.text[:200])
        if r.headers.get("content-type", "").startswith("application/json"):
            assert "\x1b" not in r.text


# -- 3. security headers -------------------------------------------------------------------------
def test_every_response_carries_the_security_headers(client, serving_inputs):
    p = client.post("/v1/predictions?explain=true", files={"file": ("a.png", serving_inputs["png"].read_bytes())})
    base = f"/v1/predictions/{p.json()['id']}"
    for path in ("/", "/static/app.js", "/healthz", "/v1/models", "/v1/nope", "/docs", base, f"{base}/heatmap.png"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert r.headers["referrer-policy"] == "no-referrer", path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[-1].split(";")[0]
    for path in (base, f"{base}/heatmap.png", f"{base}/image.png", f"{base}/fhir", "/v1/predictions", "/v1/config"):
        assert client.get(path).headers["cache-control"] == "no-store", path
    assert p.headers["cache-control"] == "no-store"


def test_the_page_has_no_inline_script_or_style_and_its_csp_allows_only_itself(client):
    html = client.get("/").text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    csp = dict(
        (d.split()[0], d.split()[1:]) for d in client.get("/").headers["content-security-policy"].split(";") if d
    )
    assert csp["default-src"] == ["'none'"] and csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]
    assert "blob:" in csp["img-src"] and csp["connect-src"] == ["'self'"]


# -- 4. self-hosted API docs ---------------------------------------------------------------------
def test_docs_page_and_its_assets_come_from_this_server(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text) + re.findall(r"url:\s*['\"]([^'\"]+)", page.text)
    assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
    assert "cdn" not in page.text.lower() and "http://" not in page.text and "https://" not in page.text
    for url in urls:
        assert client.get(url).status_code == 200, url
    csp = page.headers["content-security-policy"]
    for script in re.findall(r"<script>(.*?)</script>", page.text, re.S):  # the inline initialiser, by hash
        import base64
        import hashlib

        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp


# -- 6. logs name files and pseudonyms, never UIDs; control characters escaped ------------------
def test_logs_and_answers_carry_no_uids_and_no_raw_control_characters(client, serving_inputs, caplog):
    ds = pydicom.dcmread(serving_inputs["dicom"])
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        "1.2.826.0.1.777001",
        "1.2.826.0.1.777002",
        "1.2.826.0.1.777003",
    )
    good = io.BytesIO()
    ds.save_as(good, enforce_file_format=True)
    bad = bytearray(good.getvalue())
    cut = bad.index(b"\xe0\x7f\x10\x00")  # Pixel Data: truncated after its tag
    evil = "scan\x1b[2J\r\nINFO forged line\x07.dcm"
    caplog.set_level(logging.DEBUG)
    answers = []
    for data, name in ((good.getvalue(), evil), (bytes(bad[: cut + 12]), evil), (b"\x00" * 300, evil)):
        r = client.post("/v1/predictions", files={"file": (name, data)})
        assert r.status_code < 500
        answers.append(r.json())
        r = client.post(
            "/v1/predictions", content=data, headers={"Content-Type": "application/dicom", "X-Filename": name}
        )
        assert r.status_code < 500
        answers.append(r.json())
    assert "finding" in answers[0]
    for uid in ("777001", "777002", "777003"):
        assert uid not in caplog.text
    said = " ".join(_strings(answers))
    for text in (caplog.text.replace("\n", ""), said):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), "raw control character"
    assert "scan\\x1b[2J" in said  # the name is still recognisable, escaped


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


# -- 5. no open service beyond loopback ----------------------------------------------------------
@pytest.fixture
def fake_uvicorn(monkeypatch):
    """`medlens serve` up to the point where it would listen: records uvicorn.run's arguments."""
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield calls
    root.handlers[:] = handlers
    root.setLevel(level)


def test_serve_refuses_a_wide_host_without_keys(cli, tiny_run, tmp_path, fake_uvicorn, monkeypatch):
    monkeypatch.delenv("MEDLENS_API_KEYS", raising=False)
    where = ("--audit-db", tmp_path / "audit.sqlite", "--store-dir", tmp_path / "store")
    for host in ("0.0.0.0", "::", "192.168.1.20", "medlens.example"):
        code, _, err = cli("serve", tiny_run, "--host", host, *where)
        assert code == 2 and "--api-keys" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert fake_uvicorn == []
    for host in ("127.0.0.1", "localhost", "::1"):
        assert cli("serve", tiny_run, "--host", host, *where)[0] == 0
    keys = tmp_path / "keys.txt"
    create_key(keys)
    assert cli("serve", tiny_run, "--host", "0.0.0.0", "--api-keys", keys, *where)[0] == 0
    code, _, err = cli("serve", tiny_run, "--host", "0.0.0.0", "--insecure-no-keys", *where)
    assert code == 0 and "no API keys" in err
    assert [c["host"] for c in fake_uvicorn] == ["127.0.0.1", "localhost", "::1", "0.0.0.0", "0.0.0.0"]


# -- 6. the serve log: UIDs redacted and control characters escaped, whichever library logs ------
def test_the_serve_log_handler_redacts_uids_and_escapes_control_characters(capsys):
    from medlens.serving.logsafe import configure_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("info")
        logging.getLogger("pynetdicom.events").info("stored 1.2.826.0.1.3680043.8.498.12345 from 10.0.0.1")
        logging.getLogger("medlens.serve").warning("name %s", "a\x1b[2J\nINFO forged")
        logging.getLogger("medlens.serve").info("model %s", "1.6.1")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "1.2.826.0.1.3680043.8.498.12345" not in err and "stored <uid> from 10.0.0.1" in err
    assert "\x1b" not in err and "a\\x1b[2J\\nINFO forged" in err and "model 1.6.1" in err
    assert len(err.strip().splitlines()) == 3


def test_a_uid_at_the_end_of_a_sentence_is_redacted_too():
    from medlens.serving.logsafe import redact_uids

    assert redact_uids("series 1.2.840.113619.2.55.3 failed.") == "series <uid> failed."
    assert redact_uids("listening on 127.0.0.1:8000, medlens 0.1.0") == "listening on 127.0.0.1:8000, medlens 0.1.0"
