"""DICOM SEG and NIfTI mask of a label map: geometry round trips, real data, Orthanc, errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes

from medlens.data.dicom import read_dicom, read_series
from medlens.data.masks import write_mask_nifti
from medlens.errors import MedlensError
from medlens.serving.seg import Segment, segmentation
from tests.conftest import need, shared_data_dir
from tests.serving.orthanc_fixture import orthanc, synthetic_ct_series  # noqa: F401 - fixture

HIPPO_CROP = shared_data_dir() / "dicom" / "tcia_brain_mr_study" / "11_HCropVolume"  # the "HippoCrop" series


def _oblique_descending_series(tmp_path: Path, n: int = 5, rows: int = 12, cols: int = 16) -> list[Path]:
    """A CT series tilted about two axes whose positions fall as InstanceNumber rises, written under
    file names in neither slice nor instance order; rows != columns and anisotropic pixels."""
    a, b = np.radians(30), np.radians(20)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx
    row, col, normal = rot[:, 0], rot[:, 1], rot[:, 2]
    names = ["c", "a", "e", "b", "d", "f", "g"][:n]
    paths = []
    for k, ds in enumerate(synthetic_ct_series(n, 16)):
        ds.Rows, ds.Columns, ds.PixelSpacing = rows, cols, [0.8, 0.7]
        ds.PixelData = np.full((rows, cols), 1024 + 10 * k, np.int16).tobytes()
        ds.ImageOrientationPatient = [*row, *col]
        ds.ImagePositionPatient = list(np.array([10.0, -5.0, 30.0]) - 3.0 * k * normal)
        paths.append(tmp_path / f"{names[k]}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _labels(shape, n_labels: int, empty_slices=(1,), seed: int = 0) -> np.ndarray:
    mask = np.random.default_rng(seed).integers(0, n_labels + 1, shape).astype(np.uint8)
    mask[list(empty_slices)] = 0
    return mask


def _seg_volume(seg: hd.seg.Segmentation, like: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The SEG's label map laid out on the voxel grid of ``affine`` (by patient coordinates, not frame order)."""
    return seg.get_volume(combine_segments=True).match_geometry(hd.Volume(like, affine, "PATIENT")).array


def _dciodvfy_errors(path: Path) -> list[str]:
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]


def test_seg_of_a_shuffled_descending_oblique_series_keeps_the_source_geometry(tmp_path):
    files = _oblique_descending_series(tmp_path)
    volume = read_series(files)
    assert [Path(f).name for f in volume.files] != sorted(Path(f).name for f in files)  # the order is not file order
    mask = _labels(volume.shape, 2)
    sources = [pydicom.dcmread(p) for p in files]  # file order, neither slice nor instance order
    segments = ["lesion", Segment("oedema", codes.SCT.Organ, codes.SCT.Brain)]
    seg = segmentation(mask, sources, segments, model="unet-test")
    seg.save_as(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")

    by_reference = back.get_pixels_by_source_instance(volume.sop_instance_uids, combine_segments=True)
    assert np.array_equal(by_reference, mask)
    assert np.array_equal(_seg_volume(back, mask, volume.affine), mask)  # by plane positions too
    assert back.SegmentationType == "BINARY" and back.SeriesInstanceUID != volume.series_uid
    assert back.StudyInstanceUID == volume.study_uid
    assert back.NumberOfFrames == 2 * volume.shape[0]  # empty slice 1 is kept, for both segments
    orientation = back.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orientation], sources[0].ImageOrientationPatient)
    referenced = back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == volume.series_uid
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == set(volume.sop_instance_uids)
    first, second = back.SegmentSequence
    assert (first.SegmentLabel, second.SegmentLabel) == ("lesion", "oedema")
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes.SCT.MorphologicallyAbnormalStructure.value
    assert second.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Brain.value
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "medlens" and algorithm.AlgorithmVersion
    assert "unet-test" in str(algorithm.AlgorithmParameters) and back.ManufacturerModelName == "unet-test"


def test_seg_of_a_multiframe_source_maps_slices_to_its_frames(tmp_path):
    series = synthetic_ct_series(4, 16)
    multiframe = hd.legacy.LegacyConvertedEnhancedCTImage([series[i] for i in (2, 0, 3, 1)], hd.UID(), 5, hd.UID(), 1)
    multiframe.save_as(tmp_path / "mf.dcm")
    volume = read_dicom(tmp_path / "mf.dcm")
    mask = _labels(volume.shape, 1, empty_slices=(2,))
    seg = segmentation(mask, [pydicom.dcmread(tmp_path / "mf.dcm")], ["lesion"], model="m")
    assert np.array_equal(_seg_volume(seg, mask, volume.affine), mask)


def test_seg_of_one_2d_image():
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mask = np.zeros((source.Rows, source.Columns), np.uint8)
    mask[10:20, 30:50] = 1
    seg = segmentation(mask, [source], ["nodule"], model="m")
    back = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)
    assert np.array_equal(back[0], mask)


def test_nifti_mask_has_the_conversion_affine_and_its_voxels(tmp_path):
    from medlens.data.convert import convert_dataset
    from medlens.data.sources import open_source

    series = tmp_path / "series"
    series.mkdir()
    files = _oblique_descending_series(series)
    volume = read_series(files)
    mask = _labels(volume.shape, 3)
    written = write_mask_nifti(mask, volume, tmp_path / "mask.nii.gz", n_labels=3)
    converted = convert_dataset(open_source(str(series)), tmp_path / "nifti", "nifti", show_progress=False)
    image = nib.load(converted[0])
    back = nib.load(written)
    assert np.allclose(back.affine, image.affine) and back.shape == image.shape
    assert np.array_equal(np.asanyarray(back.dataobj).transpose(2, 1, 0), mask)


def test_real_mr_series_seg_equals_its_nifti_mask_voxel_for_voxel(tmp_path):
    volume = read_dicom(need(HIPPO_CROP))
    sources = [pydicom.dcmread(p) for p in sorted(HIPPO_CROP.glob("*.dcm"))]  # 1, 10, 11, ...: not slice order
    mask = np.zeros(volume.shape, np.uint8)
    bright = volume.array > np.percentile(volume.array, 80)
    mask[bright] = 1
    mask[volume.array > np.percentile(volume.array, 95)] = 2
    mask[: volume.shape[0] // 4] = 0  # empty slices at one end
    seg = segmentation(mask, sources, ["bright", "brightest"], model="threshold")
    seg.save_as(tmp_path / "seg.dcm")
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert np.array_equal(back.get_pixels_by_source_instance(volume.sop_instance_uids, combine_segments=True), mask)
    nifti = nib.load(write_mask_nifti(mask, volume, tmp_path / "mask.nii.gz"))
    from_nifti = hd.Volume.from_nibabel(nifti)  # the NIfTI's own geometry, RAS -> LPS by highdicom
    from_seg = back.get_volume(combine_segments=True).match_geometry(from_nifti)
    assert np.array_equal(from_seg.array, np.asanyarray(from_nifti.array))
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(tmp_path / "seg.dcm") == []


def test_seg_stored_in_orthanc_reads_back_identical(orthanc, tmp_path):  # noqa: F811
    from medlens.serving.pacs import PacsTarget

    files = _oblique_descending_series(tmp_path)
    volume = read_series(files)
    mask = _labels(volume.shape, 2)
    seg = segmentation(mask, [pydicom.dcmread(p) for p in files], ["a", "b"], model="m")
    server = orthanc()
    PacsTarget(server.aet, "127.0.0.1", server.dicom_port, retries=0).store([seg])
    with server.client() as client:
        ids = client.get("/instances").json()
        assert len(ids) == 1
        (tmp_path / "back.dcm").write_bytes(client.get(f"/instances/{ids[0]}/file").content)
    back = hd.seg.segread(tmp_path / "back.dcm")
    assert back.SOPInstanceUID == seg.SOPInstanceUID
    assert np.array_equal(back.get_pixels_by_source_instance(volume.sop_instance_uids, combine_segments=True), mask)


@pytest.mark.parametrize(
    "mask, segments, message",
    [
        (np.zeros((4, 16, 15), np.uint8), ["a"], r"shape \(4, 16, 15\) does not match the source volume \(4, 16, 16\)"),
        (np.zeros((4, 16, 16), np.float32), ["a"], "integer labels"),
        (np.full((4, 16, 16), 3, np.int64), ["a", "b"], "label values 3 outside the declared segments 1..2"),
        (np.full((4, 16, 16), -1, np.int16), ["a"], "label values -1 outside"),
        (np.zeros((4, 16, 16), np.uint8), [], "at least one segment"),
    ],
    ids=["shape", "float", "label-too-high", "negative", "no-segments"],
)
def test_bad_masks_are_one_line_errors(mask, segments, message):
    with pytest.raises(MedlensError, match=message) as error:
        segmentation(mask, synthetic_ct_series(4, 16), segments, model="m")
    assert "\n" not in str(error.value)


def test_sources_of_two_series_are_a_one_line_error():
    sources = synthetic_ct_series(2, 16) + synthetic_ct_series(2, 16)
    with pytest.raises(MedlensError, match="2 series"):
        segmentation(np.zeros((4, 16, 16), np.uint8), sources, ["a"], model="m")
    with pytest.raises(MedlensError, match="needs the DICOM instances"):
        segmentation(np.zeros((4, 16, 16), np.uint8), [], ["a"], model="m")
