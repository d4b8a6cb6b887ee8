"""Outputs of a segmentation: TID 1500 SR referencing the SEG, FHIR Observations, NIfTI mask, round trip."""

from __future__ import annotations

import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from medlens.data.dicom import read_dicom
from medlens.data.masks import write_mask_nifti
from medlens.errors import MedlensError
from medlens.inference.measurements import measure_segments
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.fhir import PSEUDONYM_SYSTEM, diagnostic_report
from medlens.serving.seg import segmentation
from medlens.serving.sr import segmentation_report
from tests.conftest import need, shared_data_dir
from tests.serving.orthanc_fixture import orthanc, synthetic_ct_series  # noqa: F401 - fixture
from tests.serving.test_codes_outputs import _by_name
from tests.serving.test_outputs import STRIPPABLE, _dciodvfy_errors

HIPPO_CROP = shared_data_dir() / "dicom" / "tcia_brain_mr_study" / "11_HCropVolume"
NAMES = ["background", "nodule", "vessel"]  # "nodule": SNOMED CT 27925004 from the code table
CODES = {"vessel": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"}}  # as a card would carry


def _prediction(measurements, class_names=NAMES, *, abstain=False, pseudonym=None, study_uid=None) -> Prediction:
    return Prediction(
        model="unet-test",
        model_sha256="ab" * 32,
        task="segmentation",
        class_names=list(class_names),
        probabilities={},
        finding="",
        confidence=0.0,
        uncertainty=0.0,
        uncertainty_method="none",
        abstain=abstain,
        abstain_reason="uncertain segmentation" if abstain else None,
        source=SourceInfo(
            kind="dicom", input_sha256="cd" * 32, study_instance_uid=study_uid, patient_pseudonym=pseudonym
        ),
        codes=CODES if "vessel" in class_names else {},
        measurements=list(measurements),
    )


def _two_blobs(shape) -> np.ndarray:
    """Label 1 and label 2 in two boxes, with empty slices at both ends."""
    depth, rows, cols = shape
    mask = np.zeros(shape, np.uint8)
    mask[depth // 4 : depth // 2, rows // 4 : rows // 2, cols // 4 : cols // 2] = 1
    mask[depth // 2 : 3 * depth // 4, rows // 2 : rows // 2 + 5, cols // 2 : cols // 2 + 7] = 2
    return mask


def _volumes(sr_path) -> dict[int, dict[str, tuple[float, str]]]:
    """segment number -> {quantity meaning: (value, UCUM unit)}, read back with highdicom."""
    report = hd.sr.srread(sr_path)
    out = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        (number,) = group.referenced_segment.referenced_segment_numbers
        out[number] = {m.name.meaning: (float(m.value), m.unit.value) for m in group.get_measurements()}
    return out


def test_sr_has_one_group_per_segment_referencing_the_seg_and_the_sources(tmp_path):
    sources = synthetic_ct_series(4, 16)
    mask = _two_blobs((4, 16, 16))
    spacing = read_dicom_spacing(sources, tmp_path)
    pred = _prediction(measure_segments(mask, NAMES, spacing))
    seg = segmentation(mask, sources, NAMES[1:], model="unet-test")
    segmentation_report(pred, seg, sources).save_as(tmp_path / "sr.dcm")
    back = pydicom.dcmread(tmp_path / "sr.dcm")
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and back.StudyInstanceUID == sources[0].StudyInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    referenced = {i.ReferencedSOPInstanceUID for s in evidence for i in s.ReferencedSOPSequence}
    assert referenced == {seg.SOPInstanceUID, *(ds.SOPInstanceUID for ds in sources)}

    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert [g.referenced_segment.referenced_sop_instance_uid for g in groups] == [seg.SOPInstanceUID] * 2
    assert [g.finding_type.value for g in groups] == ["27925004", "59820001"]  # the card's codes
    source_uids = {s.referenced_sop_instance_uid for s in groups[0].referenced_segment.source_images_for_segmentation}
    assert source_uids <= {ds.SOPInstanceUID for ds in sources} and source_uids
    voxel = float(np.prod(spacing))
    volumes = _volumes(tmp_path / "sr.dcm")
    assert volumes[1]["Volume"] == (pytest.approx(np.count_nonzero(mask == 1) * voxel), "mm3")
    assert volumes[2]["Volume"] == (pytest.approx(np.count_nonzero(mask == 2) * voxel), "mm3")
    fraction = 100 * np.count_nonzero(mask == 2) / mask.size
    assert volumes[2]["Vessel fraction of field of view"] == (pytest.approx(fraction), "%")
    assert "Vessel fraction of field of view" not in volumes[1]
    named = _by_name(back)
    assert named["Device Observer Model Name"][0].TextValue == "unet-test"
    assert named["Device Observer Serial Number"][0].TextValue == "ab" * 32
    # TID 4019 on both groups and on each of their three measurements
    assert [i.TextValue for i in named["Algorithm Name"]] == ["medlens unet-test"] * 5
    assert {i.TextValue for i in named["Algorithm Parameters"]} == {f"weights sha256 {'ab' * 32}"}


def read_dicom_spacing(sources, folder) -> tuple[float, float, float]:
    """The (slice, row, column) spacing the DICOM reader finds for ``sources`` (written to ``folder``)."""
    series = folder / "series"
    series.mkdir()
    for i, ds in enumerate(sources):
        ds.save_as(series / f"{i}.dcm", enforce_file_format=True)
    return read_dicom(series).spacing


def test_sr_of_a_2d_image_reports_the_area(tmp_path):
    sources = synthetic_ct_series(1, 16)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 3:6] = 1
    pixel = [float(v) for v in sources[0].PixelSpacing]
    pred = _prediction(measure_segments(mask, NAMES[:2], pixel), NAMES[:2])
    seg = segmentation(mask, sources, ["nodule"], model="unet-test")
    segmentation_report(pred, seg, sources).save_as(tmp_path / "sr.dcm")
    assert _volumes(tmp_path / "sr.dcm") == {1: {"Area": (pytest.approx(12 * pixel[0] * pixel[1]), "mm2")}}
    assert _dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_sr_refuses_a_seg_of_other_segments_and_a_prediction_without_measurements():
    sources = synthetic_ct_series(2, 16)
    mask = np.zeros((2, 16, 16), np.uint8)
    pred = _prediction(measure_segments(mask, NAMES, (1.0, 1.0, 1.0)))
    other = segmentation(mask, sources, ["lesion", "vessel"], model="m")
    with pytest.raises(MedlensError, match="segment 1 of the SEG is 'lesion', the prediction's is 'nodule'"):
        segmentation_report(pred, other, sources)
    with pytest.raises(MedlensError, match="no measurements"):
        segmentation_report(_prediction([]), segmentation(mask, sources, NAMES[1:], model="m"), sources)


@pytest.mark.parametrize("stripped", [*[(kw,) for kw in STRIPPABLE], STRIPPABLE], ids=[*STRIPPABLE, "all"])
def test_seg_and_sr_from_a_series_without_optional_headers(stripped, tmp_path):
    """De-identified sources: the SEG and its SR are built, keep the stripped attributes present and
    empty, and pass dciodvfy (the abstaining case adds the referral flags)."""
    sources = synthetic_ct_series(3, 16)
    for ds in sources:
        for kw in stripped:
            delattr(ds, kw)
    mask = _two_blobs((3, 16, 16))
    seg = segmentation(mask, sources, NAMES[1:], model="unet-test")
    seg.save_as(tmp_path / "seg.dcm")
    pred = _prediction(measure_segments(mask, NAMES, (2.0, 0.5, 0.5)), abstain=True)
    segmentation_report(pred, seg, sources).save_as(tmp_path / "sr.dcm")
    assert _dciodvfy_errors(tmp_path / "seg.dcm") == [] and _dciodvfy_errors(tmp_path / "sr.dcm") == []
    out = pydicom.dcmread(tmp_path / "sr.dcm")
    assert out.StudyInstanceUID == sources[0].StudyInstanceUID
    assert all(kw in out and not out.get(kw) for kw in stripped)  # present and empty: "unknown"
    assert "Refer to radiologist" in str(out)


def test_fhir_report_has_one_observation_per_measurement():
    mask = _two_blobs((4, 16, 16))
    measurements = measure_segments(mask, NAMES, (2.0, 0.5, 0.5))
    report = diagnostic_report(_prediction(measurements, pseudonym="pseudo-1", study_uid="1.2.3"))
    DiagnosticReport.model_validate(report)
    observations = [o for o in report["contained"] if o["resourceType"] == "Observation"]
    assert len(observations) == len(report["result"]) == 3  # nodule volume, vessel volume, vessel fraction
    nodule, vessel, fraction = observations
    assert nodule["code"]["coding"][0]["code"] == "118565006"  # SNOMED CT Volume
    assert nodule["bodySite"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "27925004",
        "display": "Nodule",
    }
    assert nodule["valueQuantity"] == {
        "value": pytest.approx(np.count_nonzero(mask == 1) * 0.5),
        "unit": "cubic millimeter",
        "system": "http://unitsofmeasure.org",
        "code": "mm3",
    }
    assert vessel["bodySite"]["coding"][0]["code"] == "59820001"
    assert fraction["valueQuantity"]["code"] == "%" and fraction["code"]["coding"][0]["system"] == "urn:medlens:finding"
    assert all(
        o["device"] == {"reference": "#device"} and o["subject"]["reference"] == "#patient" for o in observations
    )
    patient = next(r for r in report["contained"] if r["resourceType"] == "Patient")
    assert patient["identifier"][0] == {"system": PSEUDONYM_SYSTEM, "value": "pseudo-1"}
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.3"
    assert "nodule: volume" in report["conclusion"] and "interpretation" not in nodule
    referred = diagnostic_report(_prediction(measurements, abstain=True))
    assert referred["conclusion"].startswith("REFER TO A RADIOLOGIST: uncertain segmentation")


def test_classification_json_is_unchanged_by_the_measurements_field():
    pred = _prediction([], ["normal", "nodule"])
    assert "measurements" not in pred.to_json()
    assert _prediction([{"segment": 1}]).to_json()["measurements"] == [{"segment": 1}]


def test_real_mr_series_round_trip_through_orthanc(orthanc, tmp_path):  # noqa: F811
    """Done-when of #12 (no model yet): the HippoCrop series with two synthetic blobs; SEG and SR
    stored in a real Orthanc and read back; the SEG's mask equals the NIfTI mask voxel for voxel in
    the source geometry; the SR's volumes are voxel count x voxel volume; dciodvfy is clean."""
    from medlens.serving.pacs import PacsTarget

    volume = read_dicom(need(HIPPO_CROP))
    sources = [pydicom.dcmread(p) for p in sorted(HIPPO_CROP.glob("*.dcm"))]  # file order, not slice order
    mask = _two_blobs(volume.shape)
    names = ["background", "anterior", "posterior"]
    pred = _prediction(measure_segments(mask, names, volume.spacing), names)
    seg = segmentation(mask, sources, names[1:], model="unet-test")
    sr = segmentation_report(pred, seg, sources)
    server = orthanc()
    PacsTarget(server.aet, "127.0.0.1", server.dicom_port, retries=0).store([seg, sr])
    with server.client() as client:
        ids = client.get("/instances").json()
        assert len(ids) == 2
        files = [tmp_path / f"back{i}.dcm" for i in range(2)]
        for path, instance in zip(files, ids):
            path.write_bytes(client.get(f"/instances/{instance}/file").content)
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
    seg_back, sr_back = by_uid[seg.SOPInstanceUID], by_uid[sr.SOPInstanceUID]

    back = hd.seg.segread(seg_back)
    assert np.array_equal(back.get_pixels_by_source_instance(volume.sop_instance_uids, combine_segments=True), mask)
    nifti = hd.Volume.from_nibabel(nib.load(write_mask_nifti(mask, volume, tmp_path / "mask.nii.gz", n_labels=2)))
    assert np.array_equal(back.get_volume(combine_segments=True).match_geometry(nifti).array, nifti.array)

    voxel = float(np.prod(volume.spacing))
    volumes = _volumes(sr_back)
    for number in (1, 2):
        assert volumes[number] == {"Volume": (pytest.approx(np.count_nonzero(mask == number) * voxel), "mm3")}
    groups = hd.sr.srread(sr_back).content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {seg.SOPInstanceUID}
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(seg_back) == [] and _dciodvfy_errors(sr_back) == []
