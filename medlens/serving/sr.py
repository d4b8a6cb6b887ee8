"""DICOM Comprehensive 3D SR (TID 1500 Measurement Report) for a prediction, built with highdicom.

The report holds one measurement group with a qualitative evaluation (the finding, coded),
the model's probability as a numeric measurement, and references to every source SOP instance,
so that a PACS shows the result next to the images it was computed from.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import pydicom
from highdicom.sr import (
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
from medlens.inference.prediction import Prediction
from medlens.serving.headers import complete_source

FINDING = CodedConcept("121071", "DCM", "Finding")
PROBABILITY = CodedConcept("PROB", "99MEDLENS", "Probability of finding")
UNCERTAINTY = CodedConcept("UNCERT", "99MEDLENS", "Model uncertainty")
REFER = CodedConcept("REFER", "99MEDLENS", "Refer to radiologist")


def _finding_code(label: str) -> CodedConcept:
    # Class names are project-specific; coded in a private scheme with the name as meaning.
    return CodedConcept(label[:16].upper().replace(" ", "_"), "99MEDLENS", label)


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
            uid=device_uid or hd.UID(), name="medlens", manufacturer_name="medlens", model_name=pred.model
        ),
    )
    qualitative = [QualitativeEvaluation(FINDING, _finding_code(pred.finding))]
    if pred.abstain:
        qualitative.append(QualitativeEvaluation(REFER, codes.SCT.Yes))
    unitless = CodedConcept("1", "UCUM", "no units")
    measurements = [
        Measurement(name=PROBABILITY, value=round(float(pred.confidence), 6), unit=unitless),
        Measurement(name=UNCERTAINTY, value=round(float(pred.uncertainty), 6), unit=unitless),
    ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"medlens prediction {pred.id}"),
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
