"""DICOM SR and FHIR outputs built from one Prediction."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medlens.errors import MedlensError
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.fhir import diagnostic_report
from medlens.serving.sr import structured_report


def _prediction(abstain: bool = False) -> Prediction:
    return Prediction(
        model="cnn-small",
        model_sha256="ab" * 32,
        task="multiclass",
        class_names=["normal", "nodule", "opacity"],
        probabilities={"normal": 0.1, "nodule": 0.8, "opacity": 0.1},
        finding="nodule",
        confidence=0.8,
        uncertainty=0.2,
        uncertainty_method="entropy",
        abstain=abstain,
        abstain_reason="uncertainty above threshold" if abstain else None,
        source=SourceInfo(kind="dicom", input_sha256="cd" * 32, study_instance_uid="1.2.3.4"),
        heatmap=np.zeros((8, 8)),
    )


def test_fhir_report_has_one_observation_per_class_and_flags_the_finding():
    report = diagnostic_report(_prediction())
    assert report["resourceType"] == "DiagnosticReport"
    observations = [o for o in report["contained"] if o["resourceType"] == "Observation"]
    assert len(observations) == 3 and len(report["result"]) == 3
    by_label = {o["code"]["text"].removeprefix("AI probability of "): o for o in observations}
    assert by_label["nodule"]["interpretation"][0]["coding"][0]["code"] == "POS"
    assert by_label["normal"]["interpretation"][0]["coding"][0]["code"] == "NEG"
    assert by_label["nodule"]["valueQuantity"]["value"] == pytest.approx(0.8)
    assert "REFER" not in report["conclusion"]


def test_fhir_report_says_refer_when_abstaining():
    assert "REFER TO A RADIOLOGIST" in diagnostic_report(_prediction(abstain=True))["conclusion"]


def test_sr_references_sources_and_codes_the_finding(tmp_path):
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    sr = structured_report(_prediction(abstain=True), [source])
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.StudyInstanceUID == source.StudyInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    text = str(back)
    assert "27925004" in text and "Refer to radiologist" in text  # SNOMED CT "Nodule"


def test_sr_needs_dicom_sources():
    with pytest.raises(MedlensError):
        structured_report(_prediction(), [])


STRIPPABLE = (
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
)


def _dciodvfy_errors(path) -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed: the output cannot be validated")
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("stripped", [*[(kw,) for kw in STRIPPABLE], STRIPPABLE], ids=[*STRIPPABLE, "all"])
def test_outputs_from_a_source_without_optional_headers(stripped, tmp_path):
    """De-identified sources lack birth date, sex, accession number...: SR, SC and FHIR are still
    built and valid (before: an AttributeError, and a 422 from the API)."""
    from medlens.serving.overlay import secondary_capture

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for kw in stripped:
        if kw in source:
            delattr(source, kw)
    kept = set(source.dir())
    sr = structured_report(_prediction(), [source])
    sr.save_as(tmp_path / "sr.dcm")
    sc = secondary_capture(np.zeros((64, 64, 3), np.uint8), _prediction(), source)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert _dciodvfy_errors(tmp_path / "sr.dcm") == [] and _dciodvfy_errors(tmp_path / "sc.dcm") == []
    for out in (pydicom.dcmread(tmp_path / "sr.dcm"), pydicom.dcmread(tmp_path / "sc.dcm")):
        assert out.StudyInstanceUID == source.StudyInstanceUID
        assert all(kw in out and not out.get(kw) for kw in stripped)  # present and empty: "unknown"
    assert set(source.dir()) == kept  # the caller's dataset is not changed
    assert diagnostic_report(_prediction())["resourceType"] == "DiagnosticReport"  # fhir.resources-validated


def test_a_source_without_its_uids_is_a_one_line_error():
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del source.StudyInstanceUID
    with pytest.raises(MedlensError, match="no StudyInstanceUID"):
        structured_report(_prediction(), [source])


# -- DICOM SEG from stripped headers ------------------------------------------------------------
@pytest.mark.parametrize("stripped", [*[(kw,) for kw in STRIPPABLE], STRIPPABLE], ids=[*STRIPPABLE, "all"])
def test_seg_from_a_series_without_optional_headers(stripped, tmp_path):
    """A SEG of a de-identified series is built, keeps the stripped attributes present and empty,
    and passes dciodvfy; the caller's datasets are not changed."""
    from medlens.serving.seg import segmentation
    from tests.serving.orthanc_fixture import synthetic_ct_series

    sources = synthetic_ct_series(3, 16)
    for ds in sources:
        for kw in stripped:
            delattr(ds, kw)
    kept = [set(ds.dir()) for ds in sources]
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[1, 4:9, 4:9] = 1
    segmentation(mask, sources, ["lesion"], model="m").save_as(tmp_path / "seg.dcm")
    assert _dciodvfy_errors(tmp_path / "seg.dcm") == []
    out = pydicom.dcmread(tmp_path / "seg.dcm")
    assert out.StudyInstanceUID == sources[0].StudyInstanceUID
    assert all(kw in out and not out.get(kw) for kw in stripped)  # present and empty: "unknown"
    assert [set(ds.dir()) for ds in sources] == kept
