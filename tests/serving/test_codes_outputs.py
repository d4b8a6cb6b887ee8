"""Standard codes and references in the SR and FHIR outputs (issue #11, item 5), and FHIR from
DICOM sources with stripped headers."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from pydicom.data import get_testdata_file

from medlens import __version__
from medlens.inference.codes import concepts_for
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.fhir import PSEUDONYM_SYSTEM, diagnostic_report
from medlens.serving.sr import structured_report
from tests.serving.conftest import serving_inputs, tiny_classical_run  # noqa: F401  (shared session fixtures)
from tests.serving.test_outputs import STRIPPABLE, _dciodvfy_errors

CLASSES = ["normal", "nodule", "opacity"]


def _prediction(finding: str = "nodule", pseudonym: str | None = "p53ud0nym") -> Prediction:
    return Prediction(
        model="cnn-small",
        model_sha256="ab" * 32,
        task="multiclass",
        class_names=CLASSES,
        probabilities={"normal": 0.1, "nodule": 0.8, "opacity": 0.1},
        finding=finding,
        confidence=0.8,
        uncertainty=0.2,
        uncertainty_method="entropy",
        abstain=False,
        abstain_reason=None,
        source=SourceInfo(
            kind="dicom", input_sha256="cd" * 32, study_instance_uid="1.2.3.4", patient_pseudonym=pseudonym
        ),
        codes={c: v.model_dump() for c, v in concepts_for(CLASSES).items()},
        heatmap=np.zeros((8, 8)),
    )


def _content(items) -> list[pydicom.Dataset]:
    """Every content item of an SR content tree, depth first."""
    out = []
    for item in items:
        out.append(item)
        out.extend(_content(item.get("ContentSequence", [])))
    return out


def _by_name(sr: pydicom.Dataset) -> dict[str, list[pydicom.Dataset]]:
    named: dict[str, list[pydicom.Dataset]] = {}
    for item in _content(sr.ContentSequence):
        if "ConceptNameCodeSequence" in item:
            named.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item)
    return named


def test_sr_codes_the_finding_in_snomed_and_names_the_algorithm(tmp_path):
    sr = structured_report(_prediction(), [pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    sr.save_as(tmp_path / "sr.dcm")
    assert _dciodvfy_errors(tmp_path / "sr.dcm") == []
    named = _by_name(pydicom.dcmread(tmp_path / "sr.dcm"))
    finding = named["Finding"][0].ConceptCodeSequence[0]
    assert (finding.CodingSchemeDesignator, finding.CodeValue, finding.CodeMeaning) == ("SCT", "27925004", "Nodule")
    probability = named["Probability"][0].ConceptNameCodeSequence[0]
    assert (probability.CodingSchemeDesignator, probability.CodeValue) == ("DCM", "122157")
    assert named["Device Observer Model Name"][0].TextValue == "cnn-small"
    assert named["Device Observer Serial Number"][0].TextValue == "ab" * 32
    # TID 4019 on the measurement group and on each of its two measurements
    assert [i.TextValue for i in named["Algorithm Name"]] == ["medlens cnn-small"] * 3
    assert {i.TextValue for i in named["Algorithm Version"]} == {__version__}
    assert {i.TextValue for i in named["Algorithm Parameters"]} == {f"weights sha256 {'ab' * 32}"}


def test_sr_declares_a_private_code_for_an_uncoded_finding():
    sr = structured_report(_prediction("opacity"), [pydicom.dcmread(get_testdata_file("CT_small.dcm"))])
    finding = _by_name(sr)["Finding"][0].ConceptCodeSequence[0]
    assert (finding.CodingSchemeDesignator, finding.CodeValue) == ("99MEDLENS", "OPACITY")


def test_fhir_codes_subject_study_and_device():
    report = diagnostic_report(_prediction())
    contained = {r["id"]: r for r in report["contained"]}
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    codings = {o["code"]["text"]: o["code"]["coding"][0] for o in observations}
    assert codings["AI probability of nodule"] == {
        "system": "http://snomed.info/sct",
        "code": "27925004",
        "display": "Nodule",
    }
    assert codings["AI probability of normal"]["code"] == "17621005"
    assert codings["AI probability of opacity"]["system"] == "urn:medlens:finding"  # declared private
    assert report["subject"]["reference"] == "#patient"
    assert contained["patient"]["identifier"] == [{"system": PSEUDONYM_SYSTEM, "value": "p53ud0nym"}]
    assert all(o["subject"] == report["subject"] and o["device"]["reference"] == "#device" for o in observations)
    assert report["imagingStudy"][0]["identifier"] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}
    device = contained["device"]
    assert {n["name"] for n in device["deviceName"]} == {"medlens", "cnn-small"}
    assert {v["type"]["text"]: v["value"] for v in device["version"]} == {
        "medlens": __version__,
        "weights sha256": "ab" * 32,
    }


def test_fhir_without_a_patient_pseudonym_has_no_subject():
    report = diagnostic_report(_prediction(pseudonym=None))
    assert "subject" not in report and all(r["resourceType"] != "Patient" for r in report["contained"])
    assert all("subject" not in r for r in report["contained"])


def test_prediction_records_made_before_codes_use_the_table():
    pred = _prediction()
    pred.codes = {}
    assert diagnostic_report(pred)["contained"][1]["code"]["coding"][0]["code"] == "27925004"


@pytest.mark.parametrize("stripped", [*[(kw,) for kw in STRIPPABLE], STRIPPABLE], ids=[*STRIPPABLE, "all"])
def test_fhir_from_a_dicom_source_without_optional_headers(stripped, tiny_classical_run, serving_inputs, tmp_path):  # noqa: F811
    """Predict from a real DICOM file with headers removed: the report validates, carries the card's
    codes, references the study, and names a pseudonymous subject only when the source has a patient id."""
    from medlens.serving.predictor import Predictor

    source = pydicom.dcmread(serving_inputs["dicom"])
    patient_id = str(source.get("PatientID", ""))
    assert patient_id  # the test input has one to strip
    for kw in stripped:
        if kw in source:
            delattr(source, kw)
    path = tmp_path / "stripped.dcm"
    source.save_as(path)
    predictor = Predictor.from_run(tiny_classical_run, pseudonym_key="k")
    report = diagnostic_report(predictor.predict_path(path).prediction)
    DiagnosticReport.model_validate(report)
    text = json.dumps(report)
    assert patient_id not in text  # never the raw patient id
    assert ("subject" in report) == ("PatientID" not in stripped)
    assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{source.StudyInstanceUID}"
    card_codes = {c.code for c in predictor.card.codes.values()}
    observed = {o["code"]["coding"][0]["code"] for o in report["contained"] if o["resourceType"] == "Observation"}
    assert observed == card_codes and "17621005" in observed  # chest2d's "normal" is SNOMED CT Normal


def test_training_writes_the_codes_and_a_config_override_wins(tiny_classical_run, tmp_path):  # noqa: F811
    from medlens.runs import RunDir, read_json, read_yaml
    from medlens.training.config import TrainConfig
    from medlens.training.run import train
    from tests.serving.conftest import SOURCE

    written = read_json(RunDir(tiny_classical_run).model("elm").info)["codes"]  # in the file, not filled on read
    assert written["nodule"]["code"] == "27925004" and written["opacity"]["fallback"] is True
    lesion = {"scheme": "SCT", "code": "52988006", "meaning": "Lesion"}
    config = TrainConfig(
        source=SOURCE, model="elm", out=str(tmp_path / "run"), max_samples=24, progress=False, codes={"opacity": lesion}
    )
    run = train(config)
    codes = read_json(run.model("elm").info)["codes"]
    assert codes["opacity"] == {**lesion, "fallback": False} and codes["normal"]["code"] == "17621005"
    assert read_yaml(run.config)["codes"] == {"opacity": lesion}
