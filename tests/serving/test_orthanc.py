"""Round trip with a real PACS: Orthanc -> medlens node -> SR + overlay SC back into the study in Orthanc.

Orthanc (Debian package) is started by the test with a temporary configuration on free ports;
the test skips when it is not installed. A synthetic CT study is uploaded over Orthanc's REST API,
Orthanc forwards it to the node by C-STORE (``POST /modalities/medlens/store``), the node
analyzes the series after its quiet period and C-STOREs the results to Orthanc.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import pydicom
import pytest

from medlens.inference.bundle import Bundle
from medlens.serving.dicom_node import DicomNode
from medlens.serving.pacs import PacsTarget
from medlens.serving.predictor import Predictor
from tests.serving.orthanc_fixture import orthanc, synthetic_ct_series, to_bytes  # noqa: F401 - fixture
from tests.serving.test_dicom_node import FakeAnalyzer
from tests.serving.test_source_geometry import SIDE, bright_spots, dx_with_blob, hot_and_cold

pytestmark = pytest.mark.slow


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_study_forwarded_by_orthanc_comes_back_with_sr_and_overlay(orthanc, tmp_path):  # noqa: F811
    analyzer = FakeAnalyzer()
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        0,
        {"ORTHANC"},
        analyzer,
        None,
        tmp_path / "node",
        quiet_period=1.5,
        pseudonym_key="test-key",
    )
    with node:
        pacs = orthanc({"medlens": ["MEDLENS", "127.0.0.1", node.port]})
        node.pacs = PacsTarget("ORTHANC", "127.0.0.1", pacs.dicom_port, timeout=10, retries=2, retry_delay=0.5)
        node.pacs.echo()
        series = synthetic_ct_series(4, size=32, seed=7)
        with pacs.client() as http:
            study_ids = set()
            for ds in series:
                r = http.post("/instances", content=to_bytes(ds), headers={"Content-Type": "application/dicom"})
                r.raise_for_status()
                study_ids.add(r.json()["ParentStudy"])
            (study_id,) = study_ids

            # Orthanc forwards the study to medlens (its C-STORE SCU)
            r = http.post("/modalities/medlens/store", json={"Resources": [study_id], "Synchronous": True})
            assert r.status_code == 200, r.text
            (result,) = node.wait_for_results(1, timeout=60)
            assert result.error is None and result.stored, result
            assert len(analyzer.calls) == 1 and len(analyzer.calls[0][1]) == 4

            def all_series():
                found = http.get(f"/studies/{study_id}/series").json()
                return found if len(found) == 3 else None

            found = _wait_for(all_series, 30, "the SR and SC series in Orthanc")
            by_modality = {s["MainDicomTags"]["Modality"]: s for s in found}
            assert set(by_modality) == {"CT", "SR", "OT"}
            assert by_modality["OT"]["MainDicomTags"]["SeriesDescription"] == "medlens overlay"

            sr_instance = by_modality["SR"]["Instances"][0]
            sr_path = tmp_path / "sr-from-orthanc.dcm"
            sr_path.write_bytes(http.get(f"/instances/{sr_instance}/file").content)
            sc_instance = by_modality["OT"]["Instances"][0]
            sc_tags = http.get(f"/instances/{sc_instance}/simplified-tags").json()

    sr = pydicom.dcmread(sr_path)
    source_uids = {str(ds.SOPInstanceUID) for ds in series}
    assert sr.StudyInstanceUID == series[0].StudyInstanceUID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == series[0].SeriesInstanceUID
    assert {str(item.ReferencedSOPInstanceUID) for item in evidence.ReferencedSOPSequence} == source_uids
    assert sc_tags["BurnedInAnnotation"] == "YES"
    assert sc_tags["StudyInstanceUID"] == series[0].StudyInstanceUID

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed: the SR round trip passed, validation skipped")
    out = subprocess.run(["dciodvfy", str(sr_path)], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert "Comprehensive3DSR" in report
    assert errors == [], report


def test_the_overlay_read_back_from_orthanc_is_the_source_resolution_with_the_heatmap_on_it(
    orthanc,  # noqa: F811
    tiny_run,
    monkeypatch,
    tmp_path,
):
    """A 512 x 512 DX through the real predictor: the Secondary Capture stored in Orthanc is 512 x 512,
    keeps the source's ImagerPixelSpacing, and is red where the blob is (heatmap stand-in:
    tests/serving/test_source_geometry.py)."""
    monkeypatch.setattr(Bundle, "explain", bright_spots)
    predictor = Predictor.from_run(tiny_run)
    node = DicomNode(
        "MEDLENS",
        "127.0.0.1",
        0,
        {"ORTHANC"},
        lambda datasets: predictor.predict_dicom(datasets, explain=True),
        None,
        tmp_path / "node",
        quiet_period=1.0,
        pseudonym_key="test-key",
    )
    with node:
        pacs = orthanc({"medlens": ["MEDLENS", "127.0.0.1", node.port]})
        node.pacs = PacsTarget("ORTHANC", "127.0.0.1", pacs.dicom_port, timeout=10, retries=2, retry_delay=0.5)
        with pacs.client() as http:
            r = http.post("/instances", content=to_bytes(dx_with_blob()), headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            study_id = r.json()["ParentStudy"]
            r = http.post("/modalities/medlens/store", json={"Resources": [study_id], "Synchronous": True})
            assert r.status_code == 200, r.text
            (result,) = node.wait_for_results(1, timeout=60)
            assert result.error is None and result.stored, result

            def overlay_series():
                found = [
                    s for s in http.get(f"/studies/{study_id}/series").json() if s["MainDicomTags"]["Modality"] == "OT"
                ]
                return found[0] if found else None

            series = _wait_for(overlay_series, 30, "the overlay series in Orthanc")
            sc = pydicom.dcmread(io.BytesIO(http.get(f"/instances/{series['Instances'][0]}/file").content))
    assert (sc.Rows, sc.Columns) == (SIDE, SIDE) and [float(v) for v in sc.ImagerPixelSpacing] == [0.5, 0.5]
    hot, cold = hot_and_cold(sc.pixel_array.astype(np.float32))
    assert hot[0] > hot[2] + 30 and cold[2] > cold[0] + 40  # jet: red on the blob, blue far from it
