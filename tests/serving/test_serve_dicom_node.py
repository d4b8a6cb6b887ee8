"""`medlens serve --dicom-port`: the REST service and the DICOM node run in one process, share the
predictor and the audit log, and the node sends SR + overlay to the PACS given by --pacs-dicom."""

from __future__ import annotations

import sqlite3

from pynetdicom import AE

from tests.serving._live_server import free_port, start_server
from tests.serving.orthanc_fixture import CollectingSCP, synthetic_dx_instance


def test_serve_runs_the_dicom_node_with_the_shared_audit_log(tiny_run, tmp_path):
    from medlens.data.sources.synthetic import open_synthetic

    pacs = CollectingSCP(ae_title="PACS").start()
    dicom_port = free_port()
    server = start_server(
        tiny_run,
        tmp_path / "serve",
        "--dicom-port",
        str(dicom_port),
        "--allow-aet",
        "MODALITY",
        "--pacs-dicom",
        f"PACS@127.0.0.1:{pacs.port}",
        "--series-quiet-seconds",
        "1",
        "--max-associations",
        "1",
        "--retention-hours",
        "0.5",
    )
    try:
        dx = synthetic_dx_instance(open_synthetic("chest2d@32").load(0).image[0])
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(dx.SOPClassUID)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", dicom_port, ae_title="MEDLENS")
        assert assoc.is_established, server.log()[-2000:]
        second = ae.associate("127.0.0.1", dicom_port, ae_title="MEDLENS")  # over --max-associations 1
        assert second.is_rejected
        assert assoc.send_c_echo().Status == 0x0000
        assert assoc.send_c_store(dx).Status == 0x0000
        assoc.release()

        received = {str(d.Modality): d for d in pacs.wait_for(2, timeout=90)}
        assert set(received) == {"SR", "OT"}, server.log()[-2000:]
        assert received["SR"].StudyInstanceUID == dx.StudyInstanceUID

        rows = sqlite3.connect(server.audit_path).execute("SELECT input_ids_hashed FROM predictions").fetchall()
        assert len(rows) == 1
        assert dx.SOPInstanceUID not in rows[0][0]  # identifiers are stored hashed
        assert str(dx.PatientID) not in server.log()
    finally:
        server.stop()
        pacs.stop()


def test_pacs_without_dicom_port_is_a_clear_error(tiny_run):
    from tests.conftest import run_medlens

    result = run_medlens("serve", tiny_run, "--pacs-dicom", "PACS@127.0.0.1:4242", "--port", str(free_port()))
    assert result.returncode == 2
    assert "--pacs-dicom needs --dicom-port" in result.stderr and "Traceback" not in result.stderr
