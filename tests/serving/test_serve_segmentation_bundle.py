"""A real (tiny) segmentation bundle served: the REST API answers a NIfTI volume with its mask, and the
DICOM node answers a received MR series (descending positions, rotated rows, shuffled files) with a
SEG whose frames are the predicted label map and an SR referencing that SEG, both stored in the PACS
(a local Storage SCP)."""

from __future__ import annotations

import gzip
import io

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from fastapi.testclient import TestClient
from PIL import Image
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from medlens.data.synth_writer import nifti_image
from medlens.serving.app import create_app
from medlens.serving.dicom_node import DicomNode
from medlens.serving.pacs import PacsTarget
from medlens.serving.predictor import Predictor
from medlens.serving.settings import ServeSettings
from tests.serving.orthanc_fixture import CollectingSCP
from tests.serving.test_predict_segmentation import mr_series, seg_run  # noqa: F401 - module fixtures


def test_a_received_series_is_answered_with_its_seg_and_sr(seg_run, mr_series, tmp_path):  # noqa: F811
    predictor = Predictor.from_run(seg_run)
    expected = predictor.predict_path(mr_series)  # the same model on the same series, read from its folder
    by_uid = dict(zip(expected.slice_uids, expected.mask))
    assert any(plane.any() for plane in by_uid.values())
    pacs = CollectingSCP(ae_title="PACS").start()
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        0,
        {"MODALITY"},
        lambda datasets: predictor.predict_dicom(datasets, explain=True),  # as `medlens serve --dicom-port`
        PacsTarget("PACS", "127.0.0.1", pacs.port, retries=1, retry_delay=0.2),
        tmp_path / "node",
        quiet_period=0.5,
        pseudonym_key="k",
    ).start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="MEDLENS")
        for path in sorted(mr_series.glob("*.dcm")):
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        assoc.release()
        (result,) = node.wait_for_results(1, timeout=120)
        assert result.error is None and result.stored, result
        received = {str(ds.Modality): ds for ds in pacs.wait_for(2)}
        seg, sr = received["SEG"], received["SR"]
        frames = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
            list(by_uid), combine_segments=True
        )
        for uid, frame in zip(by_uid, frames):
            np.testing.assert_array_equal(frame, by_uid[uid], err_msg=uid)
        assert seg.SegmentSequence[0].SegmentLabel == "hippocampus"
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence
        }
        assert str(seg.SOPInstanceUID) in referenced and set(by_uid) <= referenced
    finally:
        node.stop()
        pacs.stop()


def test_a_nifti_volume_over_rest_gives_its_mask_per_slice_and_as_nifti(seg_run, tmp_path):  # noqa: F811
    from tests.training.test_segmentation import blob

    image, _ = blob(np.random.default_rng(7), (10, 16, 16))
    affine = np.array([[0.0, 0.0, -1.5, 20.0], [0.0, 1.2, 0.0, -8.0], [2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]])
    path = tmp_path / "case.nii.gz"
    nib.save(nifti_image(image * 100 + 500, affine), path)
    predictor = Predictor.from_run(seg_run)
    expected = predictor.predict_path(path)
    assert expected.mask.any()
    settings = ServeSettings(run_dir=seg_run, audit_url=str(tmp_path / "audit.sqlite"), store_dir=tmp_path / "store")
    with TestClient(create_app(settings, predictor=predictor)) as client:
        r = client.post("/v1/predictions", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 200, r.text
        p = r.json()
        assert (
            p["task"] == "segmentation" and p["slices"] == 10 and p["measurements"] == expected.prediction.measurements
        )
        base = f"/v1/predictions/{p['id']}"
        for k in range(10):
            layer = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/mask.png?slice={k}").content)))
            np.testing.assert_array_equal(layer[..., 3] > 0, expected.mask[k] > 0)
        mask = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(f"{base}/mask.nii.gz").content))
        reference = expected.mask_nifti()
        np.testing.assert_allclose(mask.affine, reference.affine)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(reference.dataobj))
        assert client.get(f"{base}/seg").status_code == 409  # NIfTI input: no DICOM SEG
