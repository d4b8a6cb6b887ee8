"""A few hundred mutated uploads (seeded): every one gets a 2xx or a JSON 4xx, never a 5xx or a
dropped connection, and the service keeps serving.

Mutations of a PNG, a JPEG, a DICOM and a NIfTI file: bit flips (anywhere, and in the header),
truncations, random bytes, one format's header on another format's body, DICOM headers that
lie about the pixel matrix, empty and oversized files.
"""

from __future__ import annotations

import gzip
import io
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pydicom
import pytest

from tests.serving._live_server import start_server

SEED = 20240611
N_RANDOM = 230
MAX_UPLOAD_MB = 1


def _bases(serving_inputs) -> dict[str, bytes]:
    return {
        "png": serving_inputs["png"].read_bytes(),
        "jpeg": serving_inputs["jpeg"].read_bytes(),
        "dicom": serving_inputs["dicom"].read_bytes(),
        "nifti": gzip.decompress(serving_inputs["nifti"].read_bytes()),
        "nifti_gz": serving_inputs["nifti"].read_bytes(),
    }


def _lying_dicoms(path) -> list[bytes]:
    """DICOM files whose header disagrees with their pixel data."""
    out = []
    for change in (
        {"Rows": 60000},
        {"Columns": 1},
        {"BitsAllocated": 32},
        {"SamplesPerPixel": 3},
        {"NumberOfFrames": 50},
        {"Modality": "CT"},
        {"PhotometricInterpretation": "YBR_FULL"},
        {"PixelData": b""},
    ):
        ds = pydicom.dcmread(path)
        for k, v in change.items():
            setattr(ds, k, v)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        out.append(buf.getvalue())
    return out


def mutated_files(serving_inputs) -> list[tuple[str, bytes]]:
    rng = random.Random(SEED)
    bases = _bases(serving_inputs)
    names = list(bases)
    files: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("oversized", b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD_MB * 1024 * 1024 + 10)),
    ]
    files += [(f"lying-dicom-{i}", d) for i, d in enumerate(_lying_dicoms(serving_inputs["dicom"]))]
    for i in range(N_RANDOM):
        kind = rng.choice(("flip", "flip_header", "truncate", "random", "swap", "flip_truncate"))
        name = rng.choice(names)
        data = bytearray(bases[name])
        if kind in ("flip", "flip_header", "flip_truncate"):
            span = min(len(data), 1024) if kind == "flip_header" else len(data)
            for _ in range(rng.randint(1, 32)):
                j = rng.randrange(span)
                data[j] ^= 1 << rng.randrange(8)
            if kind == "flip_truncate":
                data = data[: rng.randrange(1, len(data))]
        elif kind == "truncate":
            data = data[: rng.randrange(0, len(data))]
        elif kind == "random":
            data = bytearray(rng.randbytes(rng.randint(1, 20000)))
        else:  # swap: the head of one format, the body of another
            other = bases[rng.choice([n for n in names if n != name])]
            cut = rng.choice((4, 8, 132, 348, 400, 1024))
            data = data[:cut] + other[cut:]
        files.append((f"{i:03d}-{kind}-{name}", bytes(data)))
    return files


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    srv = start_server(tiny_run, tmp_path_factory.mktemp("fuzz"), "--max-upload-mb", str(MAX_UPLOAD_MB))
    yield srv
    srv.stop()


def test_mutated_uploads_never_give_5xx_and_the_service_stays_up(server, serving_inputs):
    files = mutated_files(serving_inputs)
    assert len(files) >= 240

    def send(item):
        name, data = item
        with httpx.Client(base_url=server.url, timeout=60) as c:
            try:
                r = c.post("/v1/predictions", files={"file": (name, data)})
            except httpx.HTTPError as e:
                return name, None, f"{type(e).__name__}: {e}"
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
            if r.status_code == 200:  # what was accepted must also render: SR (or 409), FHIR, image
                for path in ("sr", "fhir", "image.png"):
                    follow = c.get(f"/v1/predictions/{body['id']}/{path}")
                    if follow.status_code >= 500:
                        return f"{name} {path}", follow.status_code, follow.json()
            return name, r.status_code, body

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, files))

    dropped = [(n, b) for n, s, b in results if s is None]
    server_errors = [(n, s, b) for n, s, b in results if s is not None and s >= 500]
    odd = [(n, s) for n, s, _ in results if s is not None and not (200 <= s < 500)]
    assert not dropped, f"dropped connections: {dropped[:5]}"
    assert not server_errors, f"5xx answers: {server_errors[:5]}"
    assert not odd
    for name, status, body in results:
        if status >= 400:
            assert isinstance(body, dict) and body.get("error") and body.get("detail"), (name, status, body)
    statuses = {n: s for n, s, _ in results}
    assert statuses["empty"] == 400 and statuses["oversized"] == 413
    assert sum(s == 415 for s in statuses.values()) > 10 and sum(s == 422 for s in statuses.values()) > 10

    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    r = httpx.post(
        f"{server.url}/v1/predictions", files={"file": ("ok.png", serving_inputs["png"].read_bytes())}, timeout=60
    )
    assert r.status_code == 200 and r.json()["id"]
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log
