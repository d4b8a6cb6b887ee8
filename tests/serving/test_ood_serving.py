"""Out of scope, said everywhere: an image the model was not made for is referred with its reasons
in the CLI, the Python API and the REST API (issue #11: a retinal photograph given to a chest
X-ray model was answered "pneumonia, 99.98%" without a referral)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.api import load_model
from medlens.errors import ChecksumError
from medlens.inference.bundle import Bundle
from medlens.serving.app import create_app
from medlens.serving.settings import ServeSettings

REAL_PHOTO = Path(__file__).resolve().parents[3] / "shared" / "data" / "chasedb1" / "Image_01L.jpg"
COLOUR_REASON = "colour image; model trained on grayscale DX (X-ray) images"
COLOUR = {"check": "colour", "reason": COLOUR_REASON}


@pytest.fixture(scope="module")
def colour_photo(tmp_path_factory) -> Path:
    """A 96 x 96 colour photograph-like image (reddish disc on black), nothing like a chest X-ray."""
    yy, xx = np.mgrid[:96, :96]
    disc = ((yy - 48) ** 2 + (xx - 48) ** 2) < 40**2
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[disc] = (200, 90, 30)
    path = tmp_path_factory.mktemp("ood") / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def test_the_cli_refers_a_colour_photograph_and_says_why(cli, tiny_run, colour_photo):
    code, out, err = cli("predict", tiny_run, colour_photo)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["abstain"] is True and doc["scope_checked"] is True
    assert COLOUR in doc["out_of_scope"]
    size = {"check": "size", "reason": "image 96 x 96 px; model trained on 32 x 32 px DX (X-ray) images"}
    assert size in doc["out_of_scope"]
    assert doc["abstain_reason"].startswith("outside what the model was made for: ")
    assert "warning: referred" in err and COLOUR_REASON in err


def test_an_image_like_the_training_images_is_not_referred_for_scope(cli, tiny_run, serving_inputs):
    code, out, err = cli("predict", tiny_run, serving_inputs["png"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["scope_checked"] is True and doc["out_of_scope"] == []
    assert "referred" not in err


@pytest.mark.skipif(not REAL_PHOTO.is_file(), reason="shared data (chasedb1) not present")
def test_the_retinal_photograph_of_the_issue_is_referred(tiny_run):
    pred = load_model(tiny_run).predict(REAL_PHOTO).prediction
    assert pred.abstain and COLOUR in pred.out_of_scope


def test_the_python_api_and_the_rest_api_say_the_same(tiny_run, tmp_path, colour_photo):
    api = load_model(tiny_run).predict(colour_photo).prediction
    settings = ServeSettings(run_dir=tiny_run, audit_url=str(tmp_path / "audit.sqlite"), store_dir=tmp_path / "store")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/predictions", files={"file": ("photo.png", colour_photo.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["abstain"] is True
    assert body["out_of_scope"] == api.out_of_scope and body["abstain_reason"] == api.abstain_reason


def test_a_classical_model_has_its_guard_on_its_features(tiny_classical_run, colour_photo):
    bundle = load_model(tiny_classical_run).bundle
    assert bundle.card.ood["feature_source"].startswith("classical pipeline before")
    pred = load_model(tiny_classical_run).predict(colour_photo).prediction
    assert pred.scope_checked and COLOUR in pred.out_of_scope


def test_a_bundle_trained_before_the_guard_says_it_was_not_checked(tiny_run, serving_inputs):
    loaded = Bundle.load(tiny_run)
    old = Bundle(loaded.card.model_copy(update={"ood": None}), net=loaded.net)
    x = old.preprocess(np.asarray(Image.open(serving_inputs["png"]), np.float32)[None])
    _, features = old.raw_proba_and_features(x[None])
    (scope,) = old.scopes([x], x[None], features)
    assert scope.checked is False and scope.inside


def test_a_changed_guard_file_is_refused(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    guard = run / "models" / "cnn-small" / "ood.safetensors"
    data = bytearray(guard.read_bytes())
    data[-1] ^= 0xFF
    guard.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="ood.safetensors"):
        Bundle.load(run)


@pytest.fixture(scope="module")
def large_dicom(serving_inputs, tmp_path_factory) -> Path:
    """The DX test image upscaled to 128 x 128: 4x the 32 px the tiny model was trained on."""
    import pydicom

    ds = pydicom.dcmread(serving_inputs["dicom"])
    big = np.kron(ds.pixel_array, np.ones((4, 4), dtype=ds.pixel_array.dtype))
    ds.Rows, ds.Columns = big.shape
    ds.PixelData = big.tobytes()
    path = tmp_path_factory.mktemp("ood-dicom") / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_sr_of_an_image_outside_the_scope_says_why_and_names_no_finding(cli, tiny_run, large_dicom, tmp_path):
    import pydicom

    from tests.serving.test_outputs import _dciodvfy_errors

    code, _, err = cli("predict", tiny_run, large_dicom, "--format", "sr", "--out", tmp_path)
    assert code == 0, err
    (path,) = tmp_path.glob("*.sr.dcm")
    text = str(pydicom.dcmread(path))
    assert "OUTSCOPE" in text and "Image size outside the training range" in text and "REFER" in text
    assert "121071" not in text and "122157" not in text  # no finding, no probability of one
    assert _dciodvfy_errors(path) == []


def test_the_fhir_report_of_an_image_outside_the_scope_is_not_assessed(cli, tiny_run, large_dicom):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    code, out, err = cli("predict", tiny_run, large_dicom, "--format", "fhir")
    assert code == 0, err
    report = json.loads(out)
    DiagnosticReport.model_validate(report)
    assert report["conclusion"].startswith("NOT ASSESSED, REFER TO A RADIOLOGIST: outside what the model was made for")
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    assert observations and all("interpretation" not in o for o in observations)
