"""`medlens predict`: JSON, DICOM SR and FHIR outputs, heatmaps, studies, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from tests.conftest import run_medlens
from tests.serving.conftest import serving_inputs, tiny_classical_run, tiny_run  # noqa: F401  (shared session fixtures)


def test_json_to_stdout_for_a_png(cli, tiny_run, serving_inputs):
    code, out, err = cli("predict", tiny_run, serving_inputs["png"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "cnn-small" and doc["finding"] in doc["class_names"]
    assert doc["source"]["kind"] == "png" and doc["has_heatmap"] is False
    assert sum(doc["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_sr_for_dicom_references_the_input_instance(cli, tiny_run, serving_inputs, tmp_path):
    src = pydicom.dcmread(serving_inputs["dicom"])
    code, out, err = cli("predict", tiny_run, serving_inputs["dicom"], "--format", "sr", "--explain", "--out", tmp_path)
    assert code == 0, err
    name = serving_inputs["dicom"].name[: -len(".dcm")]
    sr = pydicom.dcmread(tmp_path / f"{name}.sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and sr.StudyInstanceUID == src.StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    from PIL import Image

    with Image.open(tmp_path / f"{name}.heatmap.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)


def test_fhir_output_validates(cli, tiny_classical_run, serving_inputs, tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    code, out, err = cli("predict", tiny_classical_run, serving_inputs["nifti"], "--format", "fhir", "--out", tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "chest.fhir.json").read_text())
    DiagnosticReport.model_validate(report)
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    assert report["resourceType"] == "DiagnosticReport" and len(observations) == 3


def test_sr_needs_dicom_input(cli, tiny_run, serving_inputs, tmp_path):
    code, out, err = cli("predict", tiny_run, serving_inputs["png"], "--format", "sr", "--out", tmp_path)
    assert code == 2
    assert "chest.png" in err and "needs DICOM input" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".predict"]  # the journal holds the failure, no output
    (entry,) = [json.loads(line) for line in (tmp_path / ".predict" / "rank0.jsonl").read_text().splitlines()]
    assert entry["ok"] is False and "needs DICOM input" in entry["error"]


def test_a_study_gives_one_prediction_per_series_and_failures_are_named(cli, tiny_run, serving_inputs, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(serving_inputs["study"], study)
    (study / "zz_truncated.dcm").write_bytes(serving_inputs["dicom"].read_bytes()[:400])
    out = tmp_path / "out"
    code, stdout, err = cli("predict", tiny_run, study, serving_inputs["nifti3d"], "--out", out)
    assert code == 2
    written = sorted(p.name for p in out.glob("*.json"))
    assert len(written) == 3, written  # three series, each its own prediction
    assert "zz_truncated.dcm" in err and "volume.nii.gz" in err and "3D volume" in err


def test_bad_inputs_are_one_line_errors(cli, tiny_run, tmp_path):
    code, out, err = cli("predict", tmp_path / "no-run", tmp_path / "x.png")
    assert code == 2 and "no such run directory" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("predict", tiny_run, tmp_path / "x.png", "--format", "xml")
    assert code == 2 and "--format must be one of" in err


def test_no_traceback_in_a_real_process(tiny_run, serving_inputs):
    res = run_medlens("predict", tiny_run, serving_inputs["text"])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "notes.txt" in res.stderr


def test_a_batch_goes_past_every_bad_input_and_lists_them_all(cli, tiny_classical_run, serving_inputs, tmp_path):
    """Issue 10: predict stopped after 3 of many inputs (a corrupt DICOM header raised ValueError) and never
    printed the errors it had collected."""
    from tests.fuzz import hostile

    bad = [
        hostile.dicom_with_is(tmp_path / "bad_is.dcm"),
        hostile.png_bomb(tmp_path / "bomb.png", side=12500),
        hostile.dicom_with_vr(tmp_path / "bad_vr.dcm"),
        tmp_path / "missing.png",
    ]
    odd = tmp_path / "odd\x1bname.png"
    odd.write_bytes(b"not a png")
    good = [serving_inputs["png"], serving_inputs["jpeg"], serving_inputs["nifti"]]
    inputs = [good[0], *bad[:2], good[1], bad[2], odd, bad[3], good[2]]
    out = tmp_path / "out"
    code, stdout, err = cli("predict", tiny_classical_run, *inputs, "--out", out)
    assert code == 2, err
    assert len(list(out.glob("*.json"))) == len(good)
    for path in (*bad, "odd\\x1bname.png"):
        assert str(getattr(path, "name", path)) in err
    assert "\x1b" not in err and "Traceback" not in err
    assert "5 input(s) failed, 3 predicted" in err


def test_a_fault_of_medlens_in_one_input_does_not_stop_the_batch(cli, tiny_classical_run, serving_inputs, monkeypatch):
    from medlens.serving.predictor import Predictor

    real = Predictor.read_item

    def flaky(self, item):
        if str(item.path).endswith(".jpg"):
            raise ZeroDivisionError("boom")
        return real(self, item)

    monkeypatch.setattr(Predictor, "read_item", flaky)
    code, stdout, err = cli("predict", tiny_classical_run, serving_inputs["jpeg"], serving_inputs["png"])
    assert code == 1
    assert json.loads(stdout)["source"]["kind"] == "png"
    assert "chest.jpg: unexpected ZeroDivisionError (boom)" in err
