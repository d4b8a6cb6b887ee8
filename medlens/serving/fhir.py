"""FHIR R4 DiagnosticReport with one Observation per class (validated by fhir.resources R4B,
whose DiagnosticReport, Observation, Patient and Device match R4's).

Each Observation is coded with the model card's standard code of its class
(:mod:`medlens.inference.codes`: SNOMED CT, LOINC, RadLex or the declared private system
``urn:medlens:finding``). The report names what it is about by reference:

* ``subject``: a contained Patient identified only by the prediction's patient pseudonym
  (system :data:`PSEUDONYM_SYSTEM`); the source's patient id never appears. An input without a
  patient id (de-identified DICOM, PNG, NIfTI) has no pseudonym, and the report no subject:
  medlens does not guess a patient.
* ``imagingStudy``: the DICOM study, by identifier ``urn:oid:<StudyInstanceUID>`` (when known).
* an input outside what the model was made for (:mod:`medlens.inference.ood`) is "not assessed":
  the conclusion says why, and no Observation carries a positive or negative interpretation.
* the Observations' ``device``: a contained Device naming medlens, the model, the medlens
  version and the weights' sha256.

A segmentation has one Observation per measurement instead
(:mod:`medlens.inference.measurements`): coded with the quantity (SNOMED CT "Volume"/"Area", the
private vessel fraction), a UCUM ``valueQuantity`` (``mm3``, ``mm2``, ``%``) and the segment's
code from the model card as ``bodySite``; the conclusion lists the measurements.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from medlens import __version__
from medlens.inference.codes import Concept
from medlens.inference.measurements import QUANTITIES, UNITS, describe_measurement
from medlens.inference.ood import describe
from medlens.inference.prediction import Prediction

LOINC = "http://loinc.org"
# LOINC 18748-4 "Diagnostic imaging study".
REPORT_CODE = {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PSEUDONYM_SYSTEM = "urn:medlens:patient-pseudonym"
DICOM_UID_SYSTEM = "urn:dicom:uid"
PATIENT_ID = "patient"
DEVICE_ID = "device"
UCUM = "http://unitsofmeasure.org"


def _coding(concept: Concept) -> dict[str, str]:
    return {"system": concept.fhir_system, "code": concept.code, "display": concept.meaning}


def _observation_base(pred: Prediction, index: int, subject: dict | None) -> dict[str, Any]:
    """What every Observation of the report holds: id, status, category, method, device, time, subject."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"{pred.id}-obs{index}",
        "status": "preliminary",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}]}
        ],
        "method": {"text": f"medlens model {pred.model} (sha256 {pred.model_sha256[:16]})"},
        "device": {"reference": f"#{DEVICE_ID}"},
        "effectiveDateTime": pred.created,
    }
    if subject:
        obs["subject"] = subject
    return obs


def _observation(pred: Prediction, label: str, probability: float, index: int, subject: dict | None) -> dict[str, Any]:
    is_finding = label in pred.finding.split("|")
    obs = _observation_base(pred, index, subject)
    obs["code"] = {"coding": [_coding(pred.concept(label))], "text": f"AI probability of {label}"}
    obs["valueQuantity"] = {"value": round(float(probability), 6), "unit": "probability", "system": UCUM, "code": "1"}
    obs["note"] = [{"text": f"uncertainty ({pred.uncertainty_method}) = {pred.uncertainty:.4f}"}]
    if pred.out_of_scope:  # no positive or negative call on an image the model was not made for
        obs["note"].append({"text": f"not assessed: {describe(pred.out_of_scope)}"})
    else:
        code, display = ("POS", "Positive") if is_finding else ("NEG", "Negative")
        obs["interpretation"] = [{"coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}]}]
    return obs


def _measurement_observation(pred: Prediction, m: dict[str, Any], index: int, subject: dict | None) -> dict[str, Any]:
    """One measurement of a segmentation: the quantity as code, the segment's code as body site."""
    obs = _observation_base(pred, index, subject)
    obs["code"] = {"coding": [_coding(QUANTITIES[m["quantity"]])], "text": f"{m['quantity']} of {m['label']}"}
    obs["bodySite"] = {"coding": [_coding(pred.concept(m["label"]))], "text": m["label"]}
    obs["valueQuantity"] = {"value": float(m["value"]), "unit": UNITS[m["unit"]], "system": UCUM, "code": m["unit"]}
    notes = [f"segment {m['segment']}, {m['voxels']} voxels"] + ([f"inside the {m['region']}"] if "region" in m else [])
    if pred.out_of_scope:
        notes.append(f"outside the model's scope: {describe(pred.out_of_scope)}")
    obs["note"] = [{"text": "; ".join(notes)}]
    return obs


def _conclusion(pred: Prediction) -> str:
    if pred.measurements:
        listed = "; ".join(describe_measurement(m) for m in pred.measurements)
        if pred.out_of_scope or pred.abstain:
            return f"REFER TO A RADIOLOGIST: {pred.abstain_reason}. Segmentation: {listed}. AI result, to be confirmed."
        return f"Segmentation: {listed}. AI result, to be confirmed."
    if pred.out_of_scope:
        return f"NOT ASSESSED, REFER TO A RADIOLOGIST: {pred.abstain_reason}. The model gives no finding here."
    if pred.abstain:
        return (
            f"REFER TO A RADIOLOGIST: the model abstained ({pred.abstain_reason}). Most likely: {pred.finding} "
            f"(p={pred.confidence:.3f})."
        )
    return f"{pred.finding} (p={pred.confidence:.3f}, uncertainty {pred.uncertainty:.3f}). AI result, to be confirmed."


def _device(pred: Prediction) -> dict[str, Any]:
    """The algorithm as a Device: medlens, the model, the medlens version, the weights' sha256."""
    versions = [{"type": {"text": "medlens"}, "value": __version__}]
    if pred.model_sha256:
        versions.append({"type": {"text": "weights sha256"}, "value": pred.model_sha256})
    return {
        "resourceType": "Device",
        "id": DEVICE_ID,
        "manufacturer": "medlens",
        "deviceName": [
            {"name": "medlens", "type": "manufacturer-name"},
            {"name": pred.model, "type": "model-name"},
        ],
        "modelNumber": pred.model,
        "version": versions,
    }


def _patient(pseudonym: str) -> dict[str, Any]:
    """A Patient known only by the pseudonym the prediction carries."""
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "identifier": [{"system": PSEUDONYM_SYSTEM, "value": pseudonym}],
    }


def diagnostic_report(pred: Prediction) -> dict[str, Any]:
    """Build and validate the DiagnosticReport (with contained Observations, Patient and Device) as a JSON dict."""
    pseudonym = pred.source.patient_pseudonym
    subject = {"reference": f"#{PATIENT_ID}", "type": "Patient"} if pseudonym else None
    if pred.measurements:
        observations = [_measurement_observation(pred, m, i, subject) for i, m in enumerate(pred.measurements)]
    else:
        probabilities = enumerate(pred.probabilities.items())
        observations = [_observation(pred, label, p, i, subject) for i, (label, p) in probabilities]
    device = _device(pred)
    contained = [*observations, device, *([_patient(pseudonym)] if pseudonym else [])]
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
        "contained": contained,
        "result": [{"reference": f"#{o['id']}"} for o in observations],
        "conclusion": _conclusion(pred),
    }
    if subject:
        report["subject"] = subject
    study_uid = pred.source.study_instance_uid
    if study_uid:
        study = {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}
        report["identifier"] = [study]
        report["imagingStudy"] = [{"type": "ImagingStudy", "identifier": study}]
    # Validation: raises pydantic.ValidationError when a resource is not valid FHIR.
    for o in observations:
        Observation.model_validate(o)
    Device.model_validate(device)
    if pseudonym:
        Patient.model_validate(_patient(pseudonym))
    return DiagnosticReport.model_validate(report).model_dump(mode="json", exclude_none=True)
