"""`medlens predict` with a segmentation bundle: the mask in the source's geometry, its SEG, SR, FHIR and NIfTI.

A tiny 3D U-Net is trained once per module on generated balls (a few seconds) and applied to DICOM
series whose geometry is not trivial (slice positions descending along the instance numbers,
rotated rows and columns, rows != columns, files in shuffled order) and to the real HippoCrop MR
series when the shared data is there. The round trip of issue #12's Done-when: `predict --format
seg` -> stored in a real Orthanc -> read back -> equal voxel for voxel to `predict --format
nifti`'s mask in the DICOM reader's volume order; dciodvfy reports no errors. A pixel forest on
generated fundus photographs checks the vessel fraction inside the derived field of view.
"""

from __future__ import annotations

import json
import math
import shutil
from io import BytesIO
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from medlens.data.dicom import read_dicom
from medlens.data.masks import mask_nifti
from medlens.data.synth_writer import nifti_image
from medlens.inference.bundle import Bundle
from medlens.serving.pacs import PacsTarget
from medlens.serving.predictor import Predictor
from tests.conftest import need, shared_data_dir
from tests.serving.conftest import serving_inputs, tiny_run  # noqa: F401 - session fixtures
from tests.serving.orthanc_fixture import free_port, orthanc  # noqa: F401 - fixture
from tests.serving.test_outputs import _dciodvfy_errors
from tests.training.test_segmentation import blob

HIPPO_CROP = shared_data_dir() / "dicom" / "tcia_brain_mr_study" / "11_HCropVolume"
HIPPOCAMPUS = "5366008"  # SNOMED CT, the card's code for the class "hippocampus"
SHAPE = (12, 20, 24)  # slices, rows, columns of the synthetic series


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """A 3D U-Net trained for 12 epochs on eight 16^3 volumes with one ball each, class "hippocampus"."""
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    root = tmp_path_factory.mktemp("segdata")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        image, mask = blob(rng, (16, 16, 16))
        nib.save(nifti_image(image * 100 + 500), root / "images" / f"case_{i}.nii.gz")
        nib.save(nifti_image(mask, dtype=np.uint8), root / "labels" / f"case_{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "hippocampus"}}))
    out = tmp_path_factory.mktemp("segrun") / "run"
    config = TrainConfig(
        source=str(root), model="unet", out=str(out), epochs=12, progress=False, accelerator="cpu", seed=0, threads=1
    )
    train(config)
    return out


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def write_mr_series(folder: Path, seed: int = 5) -> np.ndarray:
    """An MR series of SHAPE in instance order with a ball off-centre; returns the ball (instance order).

    Instance k lies at -2k mm along the slice normal (descending), rows and columns are rotated by
    30 degrees about the normal, pixels are 0.8 x 0.9 mm, files are named in a shuffled order.
    """
    rng = np.random.default_rng(seed)
    inside = ball(SHAPE, (3.5, 12.0, 8.0), 3.2)
    pixels = np.clip(rng.normal(0.0, 0.3, SHAPE) * 100 + 500 + 200 * inside, 0, 4095).astype(np.uint16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    row, col = [c, s, 0.0], [-s, c, 0.0]
    folder.mkdir(parents=True)
    for k, name in enumerate(rng.permutation(SHAPE[0])):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MRImageStorage, uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Seg", "PID-SEG", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240517"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "103000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "ACC-SEG", "1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "MR", "medlens-tests", 3, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "GR", "SP", "", "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 3.0, 8.0, 1, 3.0
        ds.PositionReferenceIndicator, ds.PatientPosition = "", "HFS"
        ds.ImageOrientationPatient = row + col
        ds.ImagePositionPatient = [10.0, -5.0, -2.0 * k]
        ds.SliceThickness, ds.SpacingBetweenSlices, ds.PixelSpacing = 2.0, 2.0, [0.8, 0.9]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = SHAPE[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels[k].tobytes()
        ds.save_as(folder / f"im{name:03d}.dcm", enforce_file_format=True)
    return inside


@pytest.fixture(scope="module")
def mr_series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mr") / "mr"
    write_mr_series(folder)
    return folder


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


# ------------------------------------------------------------------------------------------------
# the predictor
# ------------------------------------------------------------------------------------------------
def test_the_mask_is_in_the_dicom_readers_geometry_with_its_measurements(seg_run, mr_series):
    result = Predictor.from_run(seg_run).predict_path(mr_series)
    volume = read_dicom(mr_series)
    pred = result.prediction
    assert result.mask is not None and result.mask.dtype == np.uint8 and result.mask.shape == SHAPE
    bright = volume.array > 600  # the ball, in the reader's slice order (not the instance order)
    assert dice(result.mask == 1, bright) > 0.7
    bundle = Bundle.load(seg_run)  # one path: the bundle's preprocessing and sliding window
    expected = bundle.segment(bundle.preprocess(volume.array[None])).argmax(axis=0)
    np.testing.assert_array_equal(result.mask, expected)
    assert pred.task == "segmentation" and pred.finding == "hippocampus" and pred.class_names[0] == "background"
    assert pred.scope_checked is False and pred.abstain is False and 0.5 < pred.confidence <= 1.0
    assert pred.codes["hippocampus"]["code"] == HIPPOCAMPUS
    assert volume.spacing == pytest.approx((2.0, 0.8, 0.9))
    (size,) = pred.measurements
    voxels = int(np.count_nonzero(result.mask == 1))
    assert size == {
        "segment": 1,
        "label": "hippocampus",
        "quantity": "volume",
        "value": pytest.approx(voxels * 2.0 * 0.8 * 0.9),
        "unit": "mm3",
        "voxels": voxels,
    }
    assert result.slice_uids == volume.sop_instance_uids[: SHAPE[0]]


def test_a_nifti_input_gets_a_mask_with_its_exact_affine(seg_run, cli, tmp_path):
    rng = np.random.default_rng(3)
    image, truth = blob(rng, (14, 18, 16))  # (slice, row, column) = NIfTI (z, y, x)
    angle = math.pi / 7
    affine = np.array(
        [
            [0.7 * math.cos(angle), -0.9 * math.sin(angle), 0.0, -31.5],
            [0.7 * math.sin(angle), 0.9 * math.cos(angle), 0.0, 12.25],
            [0.0, 0.0, -1.5, 40.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    source = nib.Nifti1Image(np.ascontiguousarray((image * 100 + 500).transpose(2, 1, 0)), affine)
    nib.save(source, tmp_path / "case.nii.gz")
    code, out, err = cli("predict", seg_run, tmp_path / "case.nii.gz", "--format", "nifti", "--out", tmp_path / "o")
    assert code == 0, err
    written = nib.load(tmp_path / "o" / "case.mask.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(tmp_path / "case.nii.gz").affine, atol=1e-6)
    assert written.get_data_dtype() == np.uint8 and written.shape == source.shape
    assert dice(np.asarray(written.dataobj).transpose(2, 1, 0) == 1, truth == 1) > 0.7


def write_fundus_set(root: Path, n: int = 8, side: int = 48) -> None:
    """CHASE_DB1-like photographs (a bright disc on black, dark straight vessels) with ``_1stHO`` masks."""
    from PIL import Image

    rng = np.random.default_rng(0)
    disc = ball((side, side), (side / 2, side / 2), side / 2 - 2)
    root.mkdir(parents=True)
    for i in range(n):
        vessel = np.zeros((side, side), bool)
        for _ in range(3):
            r, c = rng.integers(8, side - 8, size=2)
            vessel[r : r + 2, 6:-6] = vessel[6:-6, c : c + 2] = True
        vessel &= disc
        image = np.zeros((side, side, 3), np.float32)
        image[disc], image[vessel] = (180, 90, 40), (90, 30, 10)
        image += rng.normal(0, 5, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / f"eye{i}.jpg", quality=95)
        Image.fromarray(vessel.astype(np.uint8) * 255).save(root / f"eye{i}_1stHO.png")


def test_a_vessel_model_measures_the_vessel_fraction_inside_the_derived_field_of_view(tmp_path):
    from medlens.data.imageio import read_image_file
    from medlens.data.sources.maskfolder import derive_fov
    from medlens.training.config import TrainConfig
    from medlens.training.run import train

    write_fundus_set(tmp_path / "eyes")
    config = TrainConfig(
        source=str(tmp_path / "eyes"), model="pixel-forest", out=str(tmp_path / "run"), progress=False, seed=0
    )
    train(config)
    photo = tmp_path / "eyes" / "eye0.jpg"
    result = Predictor.from_run(tmp_path / "run").predict_path(photo)
    assert result.mask.shape == (48, 48) and result.prediction.finding == "vessel"
    area, fraction = result.prediction.measurements
    vessels = result.mask == 1
    assert area["quantity"] == "area" and area["unit"] == "{pixel}" and area["voxels"] == np.count_nonzero(vessels)
    fov = derive_fov(read_image_file(photo).array)
    assert 0 < np.count_nonzero(fov) < fov.size  # the disc, not the whole photograph
    assert fraction["quantity"] == "vessel fraction" and fraction["region"] == "field of view"
    assert fraction["value"] == pytest.approx(100 * np.count_nonzero(vessels & fov) / np.count_nonzero(fov))


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def test_json_sr_and_fhir_agree_on_segments_codes_and_measurements(seg_run, mr_series, cli, tmp_path):
    code, out, err = cli("predict", seg_run, mr_series)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["task"] == "segmentation" and doc["finding"] == "hippocampus" and doc["scope_checked"] is False
    (volume,) = doc["measurements"]
    assert volume["quantity"] == "volume" and volume["unit"] == "mm3" and volume["voxels"] > 0

    code, out, err = cli("predict", seg_run, mr_series, "--format", "sr", "--out", tmp_path)
    assert code == 0, err
    seg, sr = pydicom.dcmread(tmp_path / "mr.seg.dcm"), tmp_path / "mr.sr.dcm"
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "hippocampus"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == HIPPOCAMPUS
    (group,) = hd.sr.srread(sr).content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert group.finding_type.value == HIPPOCAMPUS
    (measured,) = group.get_measurements()
    assert float(measured.value) == pytest.approx(volume["value"]) and measured.unit.value == "mm3"
    assert f"wrote {tmp_path / 'mr.seg.dcm'}" in err and f"wrote {tmp_path / 'mr.sr.dcm'}" in err

    code, out, err = cli("predict", seg_run, mr_series, "--format", "fhir")
    assert code == 0, err
    (observation,) = [r for r in json.loads(out)["contained"] if r["resourceType"] == "Observation"]
    assert observation["bodySite"]["coding"][0]["code"] == HIPPOCAMPUS
    assert observation["valueQuantity"]["value"] == pytest.approx(volume["value"])


def test_outputs_a_model_cannot_give_are_one_line_errors(seg_run, tiny_run, serving_inputs, mr_series, cli):  # noqa: F811
    for fmt in ("seg", "nifti"):
        code, out, err = cli("predict", tiny_run, serving_inputs["png"], "--format", fmt)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"--format {fmt} needs a segmentation model" in err
    code, out, err = cli("predict", seg_run, mr_series, "--explain")
    assert code == 2 and "has no heatmap" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = cli("predict", seg_run, serving_inputs["nifti3d"], "--format", "seg")
    assert code == 2 and "--format seg needs DICOM input" in err, err


# ------------------------------------------------------------------------------------------------
# the round trip through a real PACS
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("series", ["synthetic", "hippocrop"])
def test_seg_through_orthanc_equals_the_nifti_mask(series, seg_run, mr_series, orthanc, cli, tmp_path):  # noqa: F811
    folder = mr_series if series == "synthetic" else need(HIPPO_CROP)
    volume = read_dicom(folder)
    code, _, err = cli("predict", seg_run, folder, "--format", "seg", "--out", tmp_path / "seg")
    assert code == 0, err
    code, _, err = cli("predict", seg_run, folder, "--format", "nifti", "--out", tmp_path / "nifti")
    assert code == 0, err
    nifti = nib.load(tmp_path / "nifti" / f"{folder.name}.mask.nii.gz")
    mask = np.asarray(nifti.dataobj).transpose(2, 1, 0)  # NIfTI (x, y, z) -> the reader's (slice, row, column)
    assert mask.shape == volume.array.shape[-3:] and 0 < np.count_nonzero(mask) < mask.size  # not trivially equal
    np.testing.assert_allclose(nifti.affine, mask_nifti(mask, volume).affine, atol=1e-6)  # the series' NIfTI geometry
    if series == "synthetic":
        assert dice(mask == 1, volume.array > 600) > 0.7

    server = orthanc()
    PacsTarget(server.aet, "127.0.0.1", server.dicom_port, retries=0).store(
        [pydicom.dcmread(tmp_path / "seg" / f"{folder.name}.seg.dcm")]
    )
    with server.client() as client:
        (instance,) = client.get("/instances").json()
        stored = tmp_path / "back.seg.dcm"
        stored.write_bytes(client.get(f"/instances/{instance}/file").content)
    back = hd.seg.segread(stored)
    assert back.number_of_frames == mask.shape[0]  # every slice, empty ones included
    by_slice = back.get_pixels_by_source_instance(volume.sop_instance_uids, combine_segments=True)
    np.testing.assert_array_equal(by_slice, mask)
    in_space = hd.Volume.from_nibabel(nifti)
    np.testing.assert_array_equal(back.get_volume(combine_segments=True).match_geometry(in_space).array, in_space.array)
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(stored) == []


def test_send_back_stores_the_seg_and_the_sr_in_the_pacs(seg_run, mr_series, orthanc, cli):  # noqa: F811
    server = orthanc({"medlens": ["MEDLENS", "127.0.0.1", free_port()]})  # Orthanc answers known AE titles only
    with server.client() as http:
        for path in sorted(mr_series.glob("*.dcm")):
            http.post("/instances", content=path.read_bytes()).raise_for_status()
    study_uid = pydicom.dcmread(next(mr_series.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    pacs = f"{server.aet}@127.0.0.1:{server.dicom_port}"
    code, out, err = cli("predict", seg_run, "--pacs", pacs, "--study-uid", study_uid, "--send-back")
    assert code == 0, err
    assert "stored the SEG and SR" in err
    with server.client() as http:
        (study,) = http.post("/tools/lookup", content=study_uid).json()
        series = http.get(f"{study['Path']}/series").json()
        by_modality = {s["MainDicomTags"]["Modality"]: s["Instances"] for s in series}
        assert set(by_modality) == {"MR", "SEG", "SR"}
        seg, sr = (
            pydicom.dcmread(BytesIO(http.get(f"/instances/{by_modality[m][0]}/file").content)) for m in ("SEG", "SR")
        )
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
    evidence = {
        item.ReferencedSOPInstanceUID
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence and len(evidence) == SHAPE[0] + 1
