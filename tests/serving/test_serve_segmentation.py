"""Segmentations through the service: the store, the REST API (mask PNG per slice, NIfTI, SEG, SR, FHIR)
and the DICOM node (SEG + SR to the PACS), with a threshold "segmenter" standing in for a trained model.

The CT series has descending slice positions and comes shuffled, so that the reader's slice order,
the file order and the creation order all differ: every check compares per source instance.
"""

from __future__ import annotations

import gzip
import io
import random
import tempfile
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from medlens.data.dicom import read_series, sample_affine
from medlens.data.masks import mask_nifti
from medlens.inference.geometry import source_view
from medlens.inference.measurements import measure_segments
from medlens.inference.prediction import Prediction, SourceInfo
from medlens.serving.app import create_app
from medlens.serving.overlay import SEGMENT_COLOURS
from medlens.serving.predictor import PredictionResult
from medlens.serving.settings import ServeSettings
from medlens.serving.store import PredictionStore, StoredMask
from tests.serving.orthanc_fixture import CollectingSCP, synthetic_ct_series

HU_THRESHOLD = 200.0  # the blob is 400 HU, the rest about -100
CLASSES = ["background", "lesion"]
SLICES, BLOB = 6, 4  # the blob on the 5th slice created, i.e. the 2nd from the top once positions descend


def ct_series(seed: int = 0) -> list[pydicom.Dataset]:
    """A shuffled 6-slice CT series whose slice positions descend with the instance number."""
    datasets = synthetic_ct_series(SLICES, blob_slice=BLOB, seed=seed)
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [-16.0, -16.0, 20.0 - 2.5 * k]
        ds.SliceLocation = 20.0 - 2.5 * k
    random.Random(seed).shuffle(datasets)
    return datasets


def expected_plane(ds: pydicom.Dataset) -> np.ndarray:
    """What the segmenter must find on one instance, from its own pixels (independent of any order)."""
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return (hu > HU_THRESHOLD).astype(np.uint8)


def segment(datasets: list[pydicom.Dataset]) -> PredictionResult:
    """Threshold the series read as the predictor reads it: a PredictionResult as a segmentation bundle gives."""
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, ds in enumerate(datasets):
            files.append(Path(tmp) / f"{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        volume = read_series(files)
    mask = (volume.array > HU_THRESHOLD).astype(np.uint8)
    pred = Prediction(
        model="threshold-unet",
        model_sha256="ab" * 32,
        task="segmentation",
        class_names=CLASSES,
        probabilities={},
        finding="lesion" if mask.any() else "none",
        confidence=0.9,
        uncertainty=0.0,
        uncertainty_method="none",
        abstain=False,
        abstain_reason=None,
        source=SourceInfo(
            kind="dicom",
            input_sha256="cd" * 32,
            study_instance_uid=str(datasets[0].StudyInstanceUID),
            series_instance_uid=str(datasets[0].SeriesInstanceUID),
            sop_instance_uids=[str(d.SOPInstanceUID) for d in datasets],
            modality="CT",
        ),
        measurements=[dict(m) for m in measure_segments(mask, CLASSES, volume.spacing)],
    )
    return PredictionResult(
        pred,
        list(datasets),
        source_view(volume.array[None], None, window=volume.window),
        slice_uids=list(volume.sop_instance_uids),
        model_input=volume.array[None],
        mask=mask,
        spacing=volume.spacing,
        affine=sample_affine(volume),
    )


class FakeSegmenter:
    """What the service needs of a Predictor: the model's description, and an answer for every upload
    (the segmentation of ``series``: the upload only triggers it)."""

    def __init__(self, series: list[pydicom.Dataset]):
        self.series = series
        self.model_id, self.model_sha256 = "threshold-unet", "ab" * 32
        self.card = SimpleNamespace(
            kind="deep", task="segmentation", class_names=CLASSES, dims=3, img_size=32, modality="CT"
        )
        self.bundle = SimpleNamespace(abstention=SimpleNamespace(method="none"))

    def read_bytes(self, data, filename):
        return data

    def prepare(self, inp):
        return inp

    def answer(self, batch, *, explain=False):
        return [segment(self.series) for _ in batch]

    def predict_dicom(self, datasets, *, explain=False):
        return segment(list(datasets))


@pytest.fixture(scope="module")
def series():
    return ct_series()


def make_client(tmp_path: Path, series) -> TestClient:
    settings = ServeSettings(
        run_dir=tmp_path,
        audit_url=str(tmp_path / "audit.sqlite"),
        store_dir=tmp_path / "store",
        pseudonym_key="k",
    )
    return TestClient(create_app(settings, predictor=FakeSegmenter(series)))


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def frames_by_instance(seg: pydicom.Dataset, datasets) -> dict[str, np.ndarray]:
    uids = [str(d.SOPInstanceUID) for d in datasets]
    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(uids, combine_segments=True)
    return dict(zip(uids, pixels))


def test_segmentation_over_rest_mask_per_slice_nifti_seg_sr_and_fhir(tmp_path, series):
    with make_client(tmp_path, series) as client:
        r = client.post("/v1/predictions", files={"file": ("ct.dcm", b"ignored")})
        assert r.status_code == 200, r.text
        p = r.json()
        truth = segment(series).mask  # the label map in the reader's slice order
        shown = int(np.argmax(truth.reshape(SLICES, -1).sum(axis=1)))
        assert p["task"] == "segmentation" and p["slices"] == SLICES and p["slice"] == shown == 1
        assert p["measurements"][0]["voxels"] == int(truth.sum()) and p["measurements"][0]["unit"] == "mm3"
        assert p["segments"] == [{"segment": 1, "label": "lesion", "colour": "#e6194b"}]
        assert client.get(f"/v1/predictions/{p['id']}").json()["slices"] == SLICES
        base = f"/v1/predictions/{p['id']}"
        assert set(p["links"]) >= {"mask", "mask_nifti", "seg"} and "heatmap" not in p["links"]

        # every slice: the grey image and the mask layer, the segment's colour exactly where the mask is
        for k in range(SLICES):
            grey, layer = png(client.get(f"{base}/image.png?slice={k}")), png(client.get(f"{base}/mask.png?slice={k}"))
            assert grey.shape[:2] == layer.shape[:2] == truth.shape[1:] and layer.shape[2] == 4
            assert np.array_equal(layer[..., 3] > 0, truth[k] > 0)
            assert (layer[truth[k] > 0][:, :3] == SEGMENT_COLOURS[0]).all()
        assert np.array_equal(png(client.get(f"{base}/image.png")), png(client.get(f"{base}/image.png?slice={shown}")))
        blended = png(client.get(f"{base}/mask.png?slice={shown}&alpha=1"))
        assert (blended[truth[shown] > 0] == SEGMENT_COLOURS[0]).all()
        grey = png(client.get(f"{base}/image.png?slice={shown}"))
        outside = truth[shown] == 0
        assert np.array_equal(blended[outside][:, 0], grey[outside] if grey.ndim == 2 else grey[outside][:, 0])
        for bad in ("mask.png?slice=6", "image.png?slice=-1", "mask.png?alpha=2"):
            answer = client.get(f"{base}/{bad}")
            assert answer.status_code == 422 and "\n" not in answer.json()["detail"], bad

        # NIfTI: the label map with the affine the series' own NIfTI conversion has
        nifti = client.get(f"{base}/mask.nii.gz")
        assert nifti.status_code == 200
        image = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
        with tempfile.TemporaryDirectory() as tmp:
            for i, ds in enumerate(series):
                ds.save_as(Path(tmp) / f"{i}.dcm", enforce_file_format=True)
            volume = read_series(sorted(Path(tmp).glob("*.dcm")))
            reference = mask_nifti(truth, volume)
        assert np.allclose(image.affine, reference.affine)
        assert np.array_equal(np.asarray(image.dataobj), np.asarray(reference.dataobj))

        # the SEG: each source instance's frame is what was found on that instance's pixels
        seg = pydicom.dcmread(io.BytesIO(client.get(f"{base}/seg").content))
        assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "lesion"
        for uid, frame in frames_by_instance(seg, series).items():
            source = next(d for d in series if str(d.SOPInstanceUID) == uid)
            assert np.array_equal(frame, expected_plane(source)), uid
        # the SR references that very SEG
        sr = pydicom.dcmread(io.BytesIO(client.get(f"{base}/sr").content))
        evidence = {
            str(item.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for s in study.ReferencedSeriesSequence
            for item in s.ReferencedSOPSequence
        }
        assert str(seg.SOPInstanceUID) in evidence and str(series[0].SOPInstanceUID) in evidence

        fhir = client.get(f"{base}/fhir").json()
        observations = [o for o in fhir["contained"] if o["resourceType"] == "Observation"]
        assert len(observations) == len(p["measurements"])
        assert observations[0]["valueQuantity"]["value"] == pytest.approx(p["measurements"][0]["value"])

        # a new service on the same store reads all of it back from disk
    with make_client(tmp_path, series) as again:
        assert again.get(f"{base}/mask.nii.gz").content == nifti.content
        assert np.array_equal(png(again.get(f"{base}/mask.png?slice=1"))[..., 3] > 0, truth[1] > 0)
        assert again.get(base).json()["slice"] == shown


def test_a_classification_has_no_mask_and_a_non_dicom_segmentation_no_seg(tmp_path):
    store = PredictionStore(tmp_path / "store")
    result = segment(ct_series(seed=1))
    png_source = SourceInfo(kind="png", input_sha256="ef" * 32)
    flat = Prediction(**{**vars(result.prediction), "source": png_source, "id": "1" * 32})
    store.put(flat, result.view.image, mask=StoredMask(result.mask[1], None, (1.0, 1.0), None))
    plain = Prediction(**{**vars(flat), "task": "binary", "measurements": [], "id": "2" * 32})
    store.put(plain, result.view.image)
    store.close()  # the disk writes are done
    settings = ServeSettings(run_dir=tmp_path, audit_url=str(tmp_path / "a.sqlite"), store_dir=tmp_path / "store")
    with TestClient(create_app(settings, predictor=FakeSegmenter([]))) as client:
        seg = client.get(f"/v1/predictions/{'1' * 32}/seg")
        assert seg.status_code == 409 and seg.json()["error"] == "not_dicom"
        one = client.get(f"/v1/predictions/{'1' * 32}")
        assert one.json()["slices"] == 1 and one.json()["slice"] == 0
        layer = png(client.get(f"/v1/predictions/{'1' * 32}/mask.png"))
        assert np.array_equal(layer[..., 3] > 0, result.mask[1] > 0)
        nifti = nib.Nifti1Image.from_bytes(
            gzip.decompress(client.get(f"/v1/predictions/{'1' * 32}/mask.nii.gz").content)
        )
        assert np.array_equal(np.asarray(nifti.dataobj).T, result.mask[1])
        for path in ("mask.png", "mask.nii.gz", "seg"):
            r = client.get(f"/v1/predictions/{'2' * 32}/{path}")
            assert r.status_code == 404 and r.json()["error"] == "no_mask", path
        assert client.get(f"/v1/predictions/{'2' * 32}/image.png?slice=1").status_code == 422


def test_the_dicom_node_answers_a_segmentation_with_seg_and_sr_in_the_pacs(tmp_path):
    from medlens.serving.dicom_node import DicomNode
    from medlens.serving.pacs import PacsTarget

    pacs = CollectingSCP(ae_title="PACS").start()
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        0,
        {"MODALITY"},
        segment,
        PacsTarget("PACS", "127.0.0.1", pacs.port, retries=1, retry_delay=0.2),
        tmp_path / "node",
        quiet_period=0.5,
        pseudonym_key="k",
    ).start()
    try:
        series = ct_series(seed=2)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDLENS")
        assert assoc.is_established
        for ds in series:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        (result,) = node.wait_for_results(1, timeout=60)
        assert result.error is None and result.stored and result.sc_sop_instance_uid is None
        received = {str(ds.Modality): ds for ds in pacs.wait_for(2)}
        assert set(received) == {"SEG", "SR"}
        seg, sr = received["SEG"], received["SR"]
        assert str(seg.SOPInstanceUID) == result.seg_sop_instance_uid and seg.SeriesNumber == 9903
        assert seg.StudyInstanceUID == series[0].StudyInstanceUID
        for uid, frame in frames_by_instance(seg, series).items():
            source = next(d for d in series if str(d.SOPInstanceUID) == uid)
            assert np.array_equal(frame, expected_plane(source)), uid
        referenced = [
            item.ReferencedSOPInstanceUID
            for item in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for item in item.ReferencedSOPSequence
        ]
        assert seg.SOPInstanceUID in referenced and str(sr.SOPInstanceUID) == result.sr_sop_instance_uid
    finally:
        node.stop()
        pacs.stop()
