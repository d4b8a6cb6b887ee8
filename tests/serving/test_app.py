"""The REST API in-process (FastAPI TestClient): predictions and their renderings, errors, keys, limits, CORS, PACS."""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.serving.app import create_app
from medlens.serving.audit import AuditLog, hash_identifier
from medlens.serving.predictor import Predictor
from medlens.serving.settings import ServeSettings, create_key, hash_key

KEY = "test-pseudonym-key"
SECRET_NAME = "Geheim^Patientin"
SECRET_ID = "PID-SECRET-0815"


@pytest.fixture(scope="module")
def predictor(tiny_run):
    return Predictor.from_run(tiny_run, pseudonym_key=KEY)


def make_client(tiny_run, tmp_path, predictor, **kw) -> TestClient:
    settings = ServeSettings(
        run_dir=tiny_run,
        audit_url=str(tmp_path / "audit.sqlite"),
        store_dir=tmp_path / "store",
        pseudonym_key=KEY,
        **kw,
    )
    return TestClient(create_app(settings, predictor=predictor))


@pytest.fixture
def client(tiny_run, tmp_path, predictor):
    with make_client(tiny_run, tmp_path, predictor) as c:
        yield c


@pytest.fixture(scope="module")
def secret_dicom(serving_inputs, tmp_path_factory):
    """The DX test image with a (fake) patient name and ID that must never reach a log or the audit log."""
    ds = pydicom.dcmread(serving_inputs["dicom"])
    ds.PatientName, ds.PatientID = SECRET_NAME, SECRET_ID
    path = tmp_path_factory.mktemp("secret") / "Geheim_Patientin.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def upload(client, path, explain=False, **kw):
    return client.post(
        f"/v1/predictions?explain={str(explain).lower()}", files={"file": (path.name, path.read_bytes())}, **kw
    )


def test_png_prediction_and_its_renderings(client, serving_inputs):
    r = upload(client, serving_inputs["png"], explain=True)
    assert r.status_code == 200, r.text
    p = r.json()
    assert set(p["probabilities"]) == set(p["class_names"]) and abs(sum(p["probabilities"].values()) - 1) < 1e-3
    assert p["has_heatmap"] and p["source"]["kind"] == "png" and 0 <= p["confidence"] <= 1
    assert client.get(f"/v1/predictions/{p['id']}").json()["probabilities"] == p["probabilities"]

    heat = client.get(f"/v1/predictions/{p['id']}/heatmap.png")
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(heat.content)).convert("RGB")).astype(int)
    grey = np.asarray(
        Image.open(io.BytesIO(client.get(f"/v1/predictions/{p['id']}/image.png").content)).convert("RGB")
    ).astype(int)
    assert rgb.shape == grey.shape and np.abs(rgb - grey).mean() > 5  # the heatmap is really drawn over the image
    assert (grey[..., 0] == grey[..., 2]).all() and not (rgb[..., 0] == rgb[..., 2]).all()
    opaque = client.get(f"/v1/predictions/{p['id']}/heatmap.png?alpha=1").content
    assert opaque == client.get(f"/v1/predictions/{p['id']}/heatmap.png?layer=heatmap").content
    assert client.get(f"/v1/predictions/{p['id']}/heatmap.png?alpha=2").status_code == 422

    fhir = client.get(f"/v1/predictions/{p['id']}/fhir")
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    observations = [r for r in fhir.json()["contained"] if r["resourceType"] == "Observation"]
    assert fhir.json()["resourceType"] == "DiagnosticReport" and len(observations) == len(p["class_names"])

    sr = client.get(f"/v1/predictions/{p['id']}/sr")
    assert sr.status_code == 409 and sr.json()["error"] == "not_dicom" and "png" in sr.json()["detail"]
    assert client.get(f"/v1/predictions/{p['id']}/nope").status_code == 404
    missing = client.get("/v1/predictions/" + "0" * 32)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_heatmap_is_404_without_explain(client, serving_inputs):
    p = upload(client, serving_inputs["jpeg"]).json()
    assert p["has_heatmap"] is False
    r = client.get(f"/v1/predictions/{p['id']}/heatmap.png")
    assert r.status_code == 404 and "explain=true" in r.json()["detail"]
    assert client.get(f"/v1/predictions/{p['id']}/image.png").status_code == 200


def test_dicom_upload_gives_sr_and_keeps_patient_data_out_of_logs_and_audit(client, secret_dicom, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    r = upload(client, secret_dicom, explain=True)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["source"]["kind"] == "dicom" and p["source"]["patient_pseudonym"] not in (None, SECRET_ID)
    sr = client.get(f"/v1/predictions/{p['id']}/sr")
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(sr.content))
    assert ds.Modality == "SR"
    src = pydicom.dcmread(secret_dicom)
    assert (
        ds.CurrentRequestedProcedureEvidenceSequence[0]
        .ReferencedSeriesSequence[0]
        .ReferencedSOPSequence[0]
        .ReferencedSOPInstanceUID
        == src.SOPInstanceUID
    )
    assert client.get(f"/v1/predictions/{p['id']}/sr").content == sr.content  # cached

    logs = caplog.text
    assert p["id"] in logs and p["source"]["patient_pseudonym"] in logs
    for secret in (SECRET_NAME, SECRET_ID, "Geheim", str(src.StudyInstanceUID), str(src.SOPInstanceUID)):
        assert secret not in logs

    audit = AuditLog(tmp_path / "audit.sqlite")
    row = audit.get(p["id"])
    audit.close()
    text = repr(row)
    for secret in (SECRET_NAME, SECRET_ID, "Geheim", str(src.StudyInstanceUID), str(src.SOPInstanceUID)):
        assert secret not in text
    assert hash_identifier(str(src.StudyInstanceUID), KEY) in row["input_ids_hashed"]
    assert hash_identifier(secret_dicom.name, KEY) in row["input_ids_hashed"]
    assert row["model_sha256"] == p["model_sha256"] and row["output"]["finding"] == p["finding"]


def test_every_acknowledged_prediction_is_in_the_audit_log(client, serving_inputs, tmp_path):
    ids = [upload(client, serving_inputs[k]).json()["id"] for k in ("png", "jpeg", "nifti", "dicom")]
    audit = AuditLog(tmp_path / "audit.sqlite")
    assert set(ids) <= audit.ids()
    audit.close()
    recent = client.get("/v1/predictions?limit=3").json()
    assert [d["id"] for d in recent] == ids[::-1][:3] or {d["id"] for d in recent} <= set(ids)


def test_concurrent_predictions_share_a_pass_and_each_is_audited(tiny_run, tmp_path, predictor, serving_inputs):
    data = {k: serving_inputs[k].read_bytes() for k in ("png", "jpeg")}
    alone = {k: predictor.predict_bytes(v, f"x.{k}").prediction.probabilities for k, v in data.items()}
    with make_client(tiny_run, tmp_path, predictor) as c:

        def post(k):
            r = c.post("/v1/predictions", content=data[k], headers={"Content-Type": "image/" + k})
            assert r.status_code == 200, r.text
            return k, r.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, ["png", "jpeg"] * 8))
    for k, answer in answers:  # batched or not, the same answer as alone
        assert answer["probabilities"] == pytest.approx(alone[k], abs=2e-6)
    audit = AuditLog(tmp_path / "audit.sqlite")
    assert {a["id"] for _, a in answers} <= audit.ids() and len(audit.ids()) == 16
    audit.close()


@pytest.mark.parametrize(
    "name, data, status, error",
    [
        ("text", None, 415, "unsupported_media"),
        ("empty", b"", 400, "empty"),
        ("nifti3d", None, 422, "bad_input"),  # a volume for a 2D model
        ("ct_slice", None, 422, "bad_input"),  # CT for a model trained on DX
        ("corrupt", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, 422, None),
    ],
)
def test_bad_input_gets_a_json_4xx_naming_the_problem(client, serving_inputs, name, data, status, error):
    if data is None:
        data = serving_inputs[name].read_bytes()
    r = client.post("/v1/predictions", files={"file": (f"{name}.bin", data)})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"] and (error is None or body["error"] == error)
    if name == "nifti3d":
        assert "3D" in body["detail"]
    if name == "ct_slice":
        assert "CT" in body["detail"]
    assert client.get("/healthz").status_code == 200


def test_raw_body_and_bad_requests(client, serving_inputs):
    r = client.post(
        "/v1/predictions", content=serving_inputs["png"].read_bytes(), headers={"Content-Type": "image/png"}
    )
    assert r.status_code == 200 and r.json()["source"]["kind"] == "png"
    assert client.post("/v1/predictions", content=b"x", headers={"Content-Type": "text/csv"}).status_code == 415
    r = client.post("/v1/predictions", files={"other": ("a.png", b"123")})
    assert r.status_code == 400 and r.json()["error"] == "no_file"
    assert (
        client.post("/v1/predictions", content=b"{no json", headers={"Content-Type": "application/json"}).status_code
        == 400
    )
    assert client.post("/v1/predictions", json={"study_instance_uid": "1.2.3"}).json()["error"] == "no_pacs"
    assert client.post("/v1/predictions", json={"study_instance_uid": "../etc"}).status_code == 422


def test_upload_limit_gives_413_with_and_without_content_length(tiny_run, tmp_path, predictor, serving_inputs):
    with make_client(tiny_run, tmp_path, predictor, max_upload_mb=0.01) as c:
        big = b"\x89PNG\r\n\x1a\n" + bytes(20_000)
        r = c.post("/v1/predictions", files={"file": ("big.png", big)})
        assert r.status_code == 413 and r.json()["error"] == "too_large" and "0.01 MB" in r.json()["detail"]

        def chunks():
            for _ in range(5):
                yield bytes(4096)

        r = c.post("/v1/predictions", content=chunks(), headers={"Content-Type": "application/dicom"})
        assert r.status_code == 413
        small = serving_inputs["png"].read_bytes()
        assert len(small) < 10_000
        assert (
            c.post("/v1/predictions", content=iter([small]), headers={"Content-Type": "image/png"}).status_code == 200
        )


def test_api_keys(tiny_run, tmp_path, predictor, serving_inputs, cli):
    keys = tmp_path / "keys.txt"
    code, out, err = cli("serve-keys", keys, "--id", "ward7")
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key not in keys.read_text() and hash_key(key) in keys.read_text() and "ward7:" in keys.read_text()
    assert oct(keys.stat().st_mode)[-3:] == "600"
    _, other = create_key(keys)
    with make_client(tiny_run, tmp_path, predictor, api_keys_file=keys) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/").status_code == 200  # the static page holds no data; it asks for the key
        for path in ("/readyz", "/v1/models", "/v1/predictions", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        assert c.get("/v1/models", headers={"X-API-Key": key + "x"}).status_code == 401
        r = upload(c, serving_inputs["png"])
        assert r.status_code == 401
        r = upload(c, serving_inputs["png"], headers={"X-API-Key": key})
        assert r.status_code == 200
        r2 = upload(c, serving_inputs["png"], headers={"Authorization": f"Bearer {other}"})
        assert r2.status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    audit = AuditLog(tmp_path / "audit.sqlite")
    assert audit.get(r.json()["id"])["key_id"] == "ward7" and audit.get(r2.json()["id"])["key_id"] == "key2"
    audit.close()


def test_cors_is_off_by_default_and_on_for_named_origins(tiny_run, tmp_path, predictor):
    origin = {"Origin": "https://evil.example"}
    with make_client(tiny_run, tmp_path, predictor) as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers
    with make_client(tiny_run, tmp_path, predictor, cors_origins=["https://ward.example"]) as c:
        assert (
            c.get("/v1/models", headers={"Origin": "https://ward.example"}).headers["access-control-allow-origin"]
            == "https://ward.example"
        )
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers


def test_models_health_openapi_and_page(client):
    m = client.get("/v1/models").json()[0]
    assert m["id"] == "cnn-small" and len(m["sha256"]) == 64
    assert client.get("/readyz").json()["status"] == "ready"
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/predictions",
        "/v1/predictions/{prediction_id}",
        "/v1/predictions/{prediction_id}/heatmap.png",
        "/v1/predictions/{prediction_id}/fhir",
        "/v1/predictions/{prediction_id}/sr",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert path in schema["paths"], path
    assert "multipart/form-data" in schema["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "opacity" in page.text and "Refer to a radiologist" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert ServeSettings(run_dir=".").host == "127.0.0.1" and ServeSettings(run_dir=".").cors_origins == []


def test_store_survives_a_restart_and_is_bounded(tiny_run, tmp_path, predictor, secret_dicom):
    with make_client(tiny_run, tmp_path, predictor, store_memory=1, store_disk=3) as c:
        first = upload(c, secret_dicom, explain=True).json()
        sr = c.get(f"/v1/predictions/{first['id']}/sr").content
        ids = [upload(c, secret_dicom).json()["id"] for _ in range(2)]
        assert c.get(f"/v1/predictions/{first['id']}").status_code == 200  # from disk (memory holds one)
    with make_client(tiny_run, tmp_path, predictor, store_memory=1, store_disk=3) as c:
        again = c.get(f"/v1/predictions/{first['id']}")
        assert (
            again.status_code == 200
            and again.json()["probabilities"] == first["probabilities"]
            and again.json()["has_heatmap"]
        )
        assert c.get(f"/v1/predictions/{first['id']}/heatmap.png").status_code == 200
        sr2 = pydicom.dcmread(io.BytesIO(c.get(f"/v1/predictions/{first['id']}/sr").content))
        assert sr2.Modality == "SR" and sr2.StudyInstanceUID == pydicom.dcmread(io.BytesIO(sr)).StudyInstanceUID
        upload(c, secret_dicom)
        c.app.state.service.store.flush()  # disk writes follow the answers in a background thread
        assert c.get(f"/v1/predictions/{first['id']}").status_code == 404  # fourth one pushed the oldest out
        assert all(c.get(f"/v1/predictions/{i}").status_code == 200 for i in ids)
    assert oct((tmp_path / "store").stat().st_mode)[-3:] == "700"


# ------------------------------------------------------------------------------------------------
# PACS over DICOMweb: a small fake DICOMweb server (QIDO-RS + WADO-RS) on 127.0.0.1
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_dicomweb(secret_dicom):
    import uvicorn
    from fastapi import FastAPI, Response

    from tests.serving._live_server import free_port

    ds = pydicom.dcmread(secret_dicom)
    study = str(ds.StudyInstanceUID)
    app = FastAPI()

    @app.get("/dicom-web/studies")
    def studies():
        return [
            {
                "0020000D": {"vr": "UI", "Value": [study]},
                "00080020": {"vr": "DA", "Value": ["20240101"]},
                "00080061": {"vr": "CS", "Value": ["DX"]},
            }
        ]

    @app.get("/dicom-web/studies/{uid}")
    def retrieve(uid: str):
        if uid != study:
            return Response(status_code=404)
        boundary = "medlens-test-boundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + secret_dicom.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return Response(body, media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/dicom-web", study
    server.should_exit = True
    thread.join(timeout=10)


def test_prediction_for_a_pacs_study(tiny_run, tmp_path, predictor, fake_dicomweb):
    url, study = fake_dicomweb
    with make_client(tiny_run, tmp_path, predictor, pacs_url=url) as c:
        assert c.get("/v1/config").json()["pacs"] is True
        assert c.get("/v1/pacs/studies").json()[0]["study_instance_uid"] == study
        r = c.post("/v1/predictions", json={"study_instance_uid": study, "explain": True})
        assert r.status_code == 200, r.text
        p = r.json()
        assert p["source"]["study_instance_uid"] == study and p["has_heatmap"]
        assert c.get(f"/v1/predictions/{p['id']}/sr").status_code == 200
        r = c.post("/v1/predictions", json={"study_instance_uid": "1.2.3.999"})
        assert r.status_code == 404 and r.json()["error"] == "not_in_pacs"


def test_every_torch_call_of_the_service_runs_on_its_network_thread(tiny_run, tmp_path, serving_inputs, monkeypatch):
    """Loading, preprocessing, forward passes and heatmaps all run on one thread: each thread that
    enters a torch parallel region gets its own OpenMP team, and two teams slow every pass."""
    import torch

    threads: list[str] = []
    module_call, interpolate = torch.nn.Module.__call__, torch.nn.functional.interpolate

    def call_spy(self, *a, **k):
        threads.append(threading.current_thread().name)
        return module_call(self, *a, **k)

    def interpolate_spy(*a, **k):
        threads.append(threading.current_thread().name)
        return interpolate(*a, **k)

    monkeypatch.setattr(torch.nn.Module, "__call__", call_spy)
    monkeypatch.setattr(torch.nn.functional, "interpolate", interpolate_spy)
    settings = ServeSettings(
        run_dir=tiny_run, audit_url=str(tmp_path / "audit.sqlite"), store_dir=tmp_path / "store", pseudonym_key=KEY
    )
    with TestClient(create_app(settings)) as client:  # the model is loaded by the service itself
        loaded = len(threads)
        for path, explain in (
            (serving_inputs["png"], False),
            (serving_inputs["png"], True),
            (serving_inputs["dicom"], False),
        ):
            assert upload(client, path, explain=explain).status_code == 200
    assert loaded > 0 and len(threads) > loaded  # the spies saw the load and the predictions
    assert set(threads) == {"medlens-network"}
