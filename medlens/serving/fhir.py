"""FHIR R4 DiagnosticReport with one Observation per finding (validated by fhir.resources R4B,
whose DiagnosticReport and Observation match R4's)."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from medlens.inference.prediction import Prediction

MEDLENS_SYSTEM = "urn:medlens:finding"
LOINC = "http://loinc.org"
# LOINC 18748-4 "Diagnostic imaging study"; DICOM DCM 121071 "Finding".
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def _observation(pred: Prediction, label: str, probability: float, index: int) -> dict[str, Any]:
    is_finding = label in pred.finding.split("|")
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{pred.id}-obs{index}",
        "status": "preliminary",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
        ],
        "code": {
            "coding": [{"system": MEDLENS_SYSTEM, "code": label, "display": label}],
            "text": f"AI probability of {label}",
        },
        "valueQuantity": {
            "value": round(float(probability), 6),
            "unit": "probability",
            "system": "http://unitsofmeasure.org",
            "code": "1",
        },
        "interpretation": [
            {
                "coding": [
                    {
                        "system": INTERPRETATION_SYSTEM,
                        "code": "POS" if is_finding else "NEG",
                        "display": "Positive" if is_finding else "Negative",
                    }
                ]
            }
        ],
        "method": {"text": f"medlens model {pred.model} (sha256 {pred.model_sha256[:16]})"},
        "note": [{"text": f"uncertainty ({pred.uncertainty_method}) = {pred.uncertainty:.4f}"}],
        "effectiveDateTime": pred.created,
    }
    return obs


def diagnostic_report(pred: Prediction) -> dict[str, Any]:
    """Build and validate the DiagnosticReport (with contained Observations) as a JSON dict."""
    observations = [_observation(pred, label, p, i) for i, (label, p) in enumerate(pred.probabilities.items())]
    conclusion = (
        f"REFER TO A RADIOLOGIST: the model abstained ({pred.abstain_reason}). Most likely: {pred.finding} "
        f"(p={pred.confidence:.3f})."
        if pred.abstain
        else f"{pred.finding} (p={pred.confidence:.3f}, uncertainty {pred.uncertainty:.3f}). AI result, to be confirmed."
    )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": pred.id,
        "status": "preliminary",
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD", "display": "Radiology"}
                ]
            }
        ],
        "code": {"coding": [REPORT_CODE], "text": "AI image analysis"},
        "effectiveDateTime": pred.created,
        "issued": pred.created,
        "contained": observations,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": conclusion,
    }
    if pred.source.study_instance_uid:
        report["identifier"] = [{"system": "urn:dicom:uid", "value": f"urn:oid:{pred.source.study_instance_uid}"}]
    # Validation: raises pydantic.ValidationError when the resource is not valid FHIR.
    for o in observations:
        Observation.model_validate(o)
    return DiagnosticReport.model_validate(report).model_dump(mode="json", exclude_none=True)
