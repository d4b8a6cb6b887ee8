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

:func:`segmentation_report` reports a segmentation the same way, one ROI measurement group per
segment: the group references the segment in the DICOM SEG of the prediction's label map
(Referenced Segment, TID 1411 "Volumetric ROI", also for one 2D image), which in turn references
its source images; its finding type is the segment's code from the model card; its
measurements are the prediction's (:mod:`medlens.inference.measurements`: volume in mm3, area
in mm2, vessel fraction in %). The SEG and the source images are the SR's evidence.
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
    ReferencedSegment,
    SourceImageForMeasurementGroup,
    SourceImageForSegmentation,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.sr.codedict import codes

from medlens import __version__
from medlens.errors import MedlensError
from medlens.inference.codes import PRIVATE_SCHEME, Concept
from medlens.inference.measurements import QUANTITIES, UNITS
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


def _coded(concept: Concept) -> CodedConcept:
    return CodedConcept(concept.code, concept.scheme, concept.meaning)


def _finding_codes(pred: Prediction) -> list[CodedConcept]:
    """The coded finding(s): one per positive label of a multi-label answer."""
    return [_coded(pred.concept(label)) for label in pred.finding.split("|")]


def _referral(pred: Prediction) -> list[QualitativeEvaluation]:
    """Why the input is outside the model's scope (one code per failed check), and "Refer" when abstaining."""
    flags = [QualitativeEvaluation(OUT_OF_SCOPE, _scope_code(r["check"])) for r in pred.out_of_scope]
    if pred.abstain:
        flags.append(QualitativeEvaluation(REFER, codes.SCT.Yes))
    return flags


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
    unitless = CodedConcept("1", "UCUM", "no units")
    algorithm_id = algorithm(pred)
    uncertainty = Measurement(
        name=UNCERTAINTY, value=round(float(pred.uncertainty), 6), unit=unitless, algorithm_id=algorithm_id
    )
    if pred.out_of_scope:  # not assessed: the reasons, no finding and no probability of one
        qualitative = _referral(pred)
        measurements = [uncertainty]
    else:
        qualitative = [QualitativeEvaluation(FINDING, code) for code in _finding_codes(pred)] + _referral(pred)
        probability = Measurement(
            name=PROBABILITY, value=round(float(pred.confidence), 6), unit=unitless, algorithm_id=algorithm_id
        )
        measurements = [probability, uncertainty]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"medlens prediction {pred.id}"),
        algorithm_id=algorithm_id,
        qualitative_evaluations=qualitative,
        measurements=measurements,
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources],
    )
    return _document(pred, [group], sources, series_number, device_uid, previous_versions)


def segmentation_report(
    pred: Prediction,
    seg: pydicom.Dataset,
    sources: Sequence[pydicom.Dataset],
    *,
    series_number: int = 9904,
    device_uid: str | None = None,
    previous_versions: Sequence[pydicom.Dataset] | None = None,
) -> Comprehensive3DSR:
    """Build the SR of a segmentation ``pred`` whose label map ``seg`` holds (:func:`medlens.serving.seg.segmentation`)
    over ``sources``: one group per segment with its measurements, referencing the SEG's segment."""
    if not sources:
        raise MedlensError("a DICOM SR needs DICOM input (the prediction has no source DICOM instances)")
    if not pred.measurements:
        raise MedlensError("the prediction has no measurements: a segmentation SR reports them")
    sources = [complete_source(ds) for ds in sources]
    seg_labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.get("SegmentSequence", [])}
    by_segment: dict[int, list[dict]] = {}
    for m in pred.measurements:
        by_segment.setdefault(int(m["segment"]), []).append(m)
    algorithm_id = algorithm(pred)
    images = [SourceImageForSegmentation.from_source_image(ds) for ds in sources]  # every segment spans them all
    groups = []
    for number, items in by_segment.items():
        label = str(items[0]["label"])
        if seg_labels.get(number) != label[:64]:
            raise MedlensError(
                f"segment {number} of the SEG is {seg_labels.get(number)!r}, the prediction's is {label!r}: "
                "not the SEG of this prediction"
            )
        measurements = [
            Measurement(
                name=_coded(QUANTITIES[m["quantity"]]),
                value=float(m["value"]),
                unit=CodedConcept(m["unit"], "UCUM", UNITS[m["unit"]]),
                algorithm_id=algorithm_id,
            )
            for m in items
        ]
        # TID 1411 for one 2D image too: highdicom 0.28's TID 1410 frame reference writes both the
        # frame and the segment number (dciodvfy: an error) and gives a single-frame source a frame
        # number. Built directly: ReferencedSegment.from_segmentation fails on a one-frame SEG.
        groups.append(
            VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=hd.UID(), identifier=f"medlens segment {number} {label}"[:64]
                ),
                referenced_segment=ReferencedSegment(seg.SOPClassUID, seg.SOPInstanceUID, number, source_images=images),
                finding_type=_coded(pred.concept(label)),
                algorithm_id=algorithm_id,
                measurements=measurements,
                qualitative_evaluations=_referral(pred) or None,
            )
        )
    return _document(pred, groups, [*sources, seg], series_number, device_uid, previous_versions)


def _document(
    pred: Prediction,
    groups: Sequence,
    evidence: Sequence[pydicom.Dataset],
    series_number: int,
    device_uid: str | None,
    previous_versions: Sequence[pydicom.Dataset] | None,
) -> Comprehensive3DSR:
    """The TID 1500 document around ``groups``: observer device medlens, procedure, evidence."""
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
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion
        if evidence[0].get("Modality") == "CT"
        else CodedConcept("363679005", "SCT", "Imaging"),
        imaging_measurements=list(groups),
        title=codes.DCM.ImagingMeasurementReport,
    )
    return Comprehensive3DSR(
        evidence=list(evidence),
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
