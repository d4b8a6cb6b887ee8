"""DICOM Comprehensive 3D SR (TID 1500 Measurement Report) for a prediction, built with highdicom.

The report holds one measurement group with a qualitative evaluation per finding (coded with
the model card's standard codes, :mod:`medlens.inference.codes`), the model's probability
(DCM 122157 "Probability") and uncertainty (private ``99MEDLENS``: DICOM has no code for it) as
numeric measurements, and references to every source SOP instance, so that a PACS shows the
result next to the images it was computed from. The observer is the device medlens (model name
as its model); the group and its measurements carry the Algorithm Identification (TID 4019):
model name, medlens version and weights sha256. An input outside what the model was made for
(:mod:`medlens.inference.ood`) is not assessed: the group holds "Outside the model's scope" with
one private code per reason (its meaning says which check failed) and "Refer to radiologist",
and no finding or probability.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes

from medlens import __version__
from medlens.errors import MedlensError
from medlens.inference.codes import PRIVATE_SCHEME
from medlens.inference.ood import CHECKS
from medlens.inference.prediction import Prediction
from medlens.serving.headers import complete_source

FINDING = CodedConcept("121071", "DCM", "Finding")
PROBABILITY = codes.DCM.Probability
UNCERTAINTY = CodedConcept("UNCERT", PRIVATE_SCHEME, "Model uncertainty")
REFER = CodedConcept("REFER", PRIVATE_SCHEME, "Refer to radiologist")
OUT_OF_SCOPE = CodedConcept("OUTSCOPE", PRIVATE_SCHEME, "Outside the model's scope")


def _scope_code(check: str) -> CodedConcept:
    """Why an input is outside the model's scope, as a private code with a readable meaning."""
    return CodedConcept(f"OOD-{check.upper()}"[:16], PRIVATE_SCHEME, CHECKS.get(check, check)[:64])


def _finding_codes(pred: Prediction) -> list[CodedConcept]:
    """The coded finding(s): one per positive label of a multi-label answer."""
    concepts = [pred.concept(label) for label in pred.finding.split("|")]
    return [CodedConcept(c.code, c.scheme, c.meaning) for c in concepts]


def algorithm(pred: Prediction) -> AlgorithmIdentification:
    """TID 4019: the model, the medlens version that ran it and the sha256 of its weights."""
    return AlgorithmIdentification(
        name=f"medlens {pred.model}",
        version=__version__,
        parameters=[f"weights sha256 {pred.model_sha256}"] if pred.model_sha256 else None,
        manufacturer="medlens",
    )


def structured_report(
    pred: Prediction,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9901,
    device_uid: str | None = None,
    previous_versions: Sequence[pydicom.Dataset] | None = None,
) -> Comprehensive3DSR:
    """Build the SR; ``sources`` are the DICOM instances the prediction was computed from.

    ``previous_versions``: earlier SRs this one supersedes (Predecessor Documents Sequence).
    """
    if not sources:
        raise MedlensError("a DICOM SR needs DICOM input (the prediction has no source DICOM instances)")
    sources = [complete_source(ds) for ds in sources]
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=device_uid or hd.UID(),
            name="medlens",
            manufacturer_name="medlens",
            model_name=pred.model,
            serial_number=pred.model_sha256 or None,  # the weights identify this model instance
        ),
    )
    unitless = CodedConcept("1", "UCUM", "no units")
    algorithm_id = algorithm(pred)
    uncertainty = Measurement(
        name=UNCERTAINTY, value=round(float(pred.uncertainty), 6), unit=unitless, algorithm_id=algorithm_id
    )
    if pred.out_of_scope:  # not assessed: the reasons, no finding and no probability of one
        qualitative = [QualitativeEvaluation(OUT_OF_SCOPE, _scope_code(r["check"])) for r in pred.out_of_scope]
        measurements = [uncertainty]
    else:
        qualitative = [QualitativeEvaluation(FINDING, code) for code in _finding_codes(pred)]
        probability = Measurement(
            name=PROBABILITY, value=round(float(pred.confidence), 6), unit=unitless, algorithm_id=algorithm_id
        )
        measurements = [probability, uncertainty]
    if pred.abstain:
        qualitative.append(QualitativeEvaluation(REFER, codes.SCT.Yes))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"medlens prediction {pred.id}"),
        algorithm_id=algorithm_id,
        qualitative_evaluations=qualitative,
        measurements=measurements,
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if sources[0].get("Modality") == "CT"
        else CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport,
    )
    return Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medlens",
        software_versions=__version__,
        is_complete=True,
        previous_versions=previous_versions,
        series_description="medlens AI result",
    )
