"""Query/retrieve from a real PACS (Orthanc): `medlens predict RUN --pacs ...` and medlens.serving.retrieve.

Orthanc (Debian package) is started with a temporary configuration on free ports and knows our AE
title (MEDLENS) at a free port for C-MOVE; tests that need it skip when it is not installed, the
DICOMweb ones also when its DICOMweb plugin (Debian package orthanc-dicomweb) is absent.
A study holds one DX image (what the tiny chest model reads) and a 3-slice CT series (skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from medlens.errors import MedlensError
from medlens.serving.pacs import NotInPacsError, PacsError, PacsTarget, PacsUnreachableError
from medlens.serving.retrieve import DicomWebPacs, DimsePacs, Intake, Pacs, SeriesInfo, open_pacs
from tests.serving.conftest import SYNTH, tiny_run  # noqa: F401 - session fixture
from tests.serving.orthanc_fixture import (  # noqa: F401 - fixture
    free_port,
    orthanc,
    synthetic_ct_series,
    synthetic_dx_instance,
    to_bytes,
)

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian package orthanc-dicomweb


class Study:
    """A study stored in Orthanc: one DX image (series 1) and a CT series (series 2)."""

    def __init__(self, server, move_port: int):
        from medlens.data.sources.synthetic import open_synthetic

        self.server, self.move_port = server, move_port
        self.patient_id, self.accession = f"PAT-{generate_uid()[-8:]}", f"ACC-{generate_uid()[-8:]}"
        self.ct = synthetic_ct_series(3, size=32, seed=3)
        self.uid = str(self.ct[0].StudyInstanceUID)
        self.dx = synthetic_dx_instance(open_synthetic(SYNTH).load(0).image[0], study_uid=self.uid)
        self.dx.SeriesNumber = 1
        for ds in (*self.ct, self.dx):
            ds.PatientID, ds.AccessionNumber = self.patient_id, self.accession
        with server.client() as http:
            for ds in (self.dx, *self.ct):
                http.post("/instances", content=to_bytes(ds)).raise_for_status()

    @property
    def dimse(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.server.dicom_port}"

    def series_in_orthanc(self, modality: str) -> list[dict]:
        with self.server.client() as http:
            (study,) = http.post("/tools/lookup", content=self.uid).json()
            series = http.get(f"{study['Path']}/series").json()
        return [s for s in series if s["MainDicomTags"]["Modality"] == modality]

    def sr_in_orthanc(self) -> pydicom.Dataset:
        (series,) = self.series_in_orthanc("SR")
        with self.server.client() as http:
            data = http.get(f"/instances/{series['Instances'][0]}/file").content
        from io import BytesIO

        return pydicom.dcmread(BytesIO(data))


@pytest.fixture
def study(orthanc):  # noqa: F811
    move_port = free_port()
    plugins = [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else []
    server = orthanc({"medlens": ["MEDLENS", "127.0.0.1", move_port]}, plugins=plugins)
    return Study(server, move_port)


def _needs_dicomweb():
    if not DICOMWEB_PLUGIN.exists():
        pytest.skip(f"Orthanc's DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)")


# ------------------------------------------------------------------------------------------------
# the one command
# ------------------------------------------------------------------------------------------------
def test_predict_finds_by_patient_retrieves_predicts_and_sends_the_sr_back(cli, tiny_run, study, tmp_path):  # noqa: F811
    code, out, err = cli(
        "predict", tiny_run, "--pacs", study.dimse, "--patient-id", study.patient_id, "--send-back", "--out", tmp_path
    )
    assert code == 0, err
    assert f"found study {study.uid}" in err
    assert "skipped series 2 (CT)" in err and "the model does not take CT images" in err
    doc = json.loads((tmp_path / f"{study.dx.SeriesInstanceUID}.json").read_text())
    assert doc["source"]["study_instance_uid"] == study.uid
    assert doc["source"]["sop_instance_uids"] == [study.dx.SOPInstanceUID]
    assert doc["finding"] in doc["class_names"]

    sr = study.sr_in_orthanc()
    assert sr.StudyInstanceUID == study.uid and sr.PatientID == study.patient_id
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == study.dx.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence] == [study.dx.SOPInstanceUID]

    # found again by accession: the SR series now in the study is skipped (no images), nothing stored twice
    code, out, err = cli(
        "predict", tiny_run, "--pacs", study.dimse, "--accession", study.accession, "--move-port", study.move_port
    )
    assert code == 0, err
    assert "SR series hold no images" in err
    assert json.loads(out)["source"]["sop_instance_uids"] == [study.dx.SOPInstanceUID]
    assert len(study.series_in_orthanc("SR")) == 1


def test_predict_over_dicomweb_sends_the_sr_back_with_stow(cli, tiny_run, study, tmp_path):  # noqa: F811
    _needs_dicomweb()
    url = f"{study.server.url}/dicom-web"
    code, out, err = cli(
        "predict", tiny_run, "--pacs", url, "--study-uid", study.uid, "--format", "sr", "--out", tmp_path, "--send-back"
    )
    assert code == 0, err
    written = pydicom.dcmread(tmp_path / f"{study.dx.SeriesInstanceUID}.sr.dcm")
    assert written.StudyInstanceUID == study.uid
    stored = study.sr_in_orthanc()
    evidence = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == study.dx.SOPInstanceUID


def test_unknown_patient_and_unreachable_pacs_are_one_line_errors(cli, tiny_run, study):  # noqa: F811
    code, out, err = cli("predict", tiny_run, "--pacs", study.dimse, "--patient-id", "NOBODY")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"error: PACS {study.dimse} has no study with patient id 'NOBODY'"]
    closed = free_port()
    code, out, err = cli("predict", tiny_run, "--pacs", f"ORTHANC@127.0.0.1:{closed}", "--accession", "A1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot be reached" in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "give INPUT files or folders, or --pacs"),
        (("x.dcm", "--pacs", "ORTHANC@127.0.0.1:4242", "--patient-id", "P"), "not both"),
        (("--pacs", "ORTHANC@127.0.0.1:4242"), "--pacs needs --patient-id, --accession or --study-uid"),
        (("x.dcm", "--send-back"), "--send-back needs --pacs"),
        (("--pacs", "ORTHANC:4242", "--patient-id", "P"), "--pacs must look like AET@HOST:PORT"),
        (("--pacs", "ORTHANC@127.0.0.1:4242", "--patient-id", "P*"), "must be an exact value"),
    ],
)
def test_pacs_options_that_do_not_go_together(cli, tiny_run, args, message):  # noqa: F811
    code, out, err = cli("predict", tiny_run, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------------------
# medlens.serving.retrieve against Orthanc: complete retrieval three ways, limits, failed sub-operations
# ------------------------------------------------------------------------------------------------
def test_a_series_is_retrieved_completely_by_c_get_c_move_and_wado(study):
    ways = [open_pacs(study.dimse), open_pacs(study.dimse, move_port=study.move_port)]
    if DICOMWEB_PLUGIN.exists():
        ways.append(open_pacs(f"{study.server.url}/dicom-web"))
    expected = {str(ds.SOPInstanceUID) for ds in study.ct}
    for pacs in ways:
        (found,) = pacs.find_studies(accession=study.accession)
        assert found.study_uid == study.uid and set(found.modalities) == {"CT", "DX"}
        series = pacs.find_series(study.uid)
        assert [(s.number, s.modality) for s in series] == [("1", "DX"), ("2", "CT")]
        got = pacs.retrieve(series[1])
        assert {str(ds.SOPInstanceUID) for ds in got} == expected, pacs
        assert all(ds.pixel_array.shape == (32, 32) for ds in got)


def test_retrieval_is_bounded_by_the_size_limits(study, monkeypatch):
    pacs = open_pacs(study.dimse)
    ct = pacs.find_series(study.uid)[1]
    monkeypatch.setenv("MEDLENS_MAX_FRAMES", "2")
    with pytest.raises(PacsError, match=r"too large: 3 instances, over the limit of 2 \(set \$MEDLENS_MAX_FRAMES"):
        pacs.retrieve(ct)
    monkeypatch.delenv("MEDLENS_MAX_FRAMES")
    monkeypatch.setenv("MEDLENS_MAX_BYTES", "3000")  # one 32x32 16-bit slice is ~2 KB pixels + header
    with pytest.raises(PacsError, match=r"too large: more than 3000 bytes"):
        pacs.retrieve(ct)


def test_failed_sub_operations_are_counted(study):
    """A series of CT and Secondary Capture instances, retrieved with a context for CT only."""
    sc = synthetic_ct_series(1, size=32, study_uid=study.uid)[0]
    sc.SeriesInstanceUID = study.ct[0].SeriesInstanceUID
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.PatientID, sc.AccessionNumber = study.patient_id, study.accession
    with study.server.client() as http:
        http.post("/instances", content=to_bytes(sc)).raise_for_status()
    pacs = open_pacs(study.dimse)
    assert isinstance(pacs, DimsePacs)
    ct = pacs.find_series(study.uid)[1]
    intake = Intake(ct.label)
    with pytest.raises(PacsError, match=r"1 instance\(s\) failed to transfer, \d arrived"):
        pacs.fetch(ct, {str(study.ct[0].SOPClassUID)}, intake)  # Orthanc 1.10 stops at the failed one
    assert len(pacs.retrieve(ct)) == 4  # both SOP classes offered: complete


def test_an_unreachable_pacs_is_named(tiny_run):  # noqa: F811
    with pytest.raises(PacsUnreachableError, match="cannot be reached"):
        DimsePacs(PacsTarget("ORTHANC", "127.0.0.1", free_port(), timeout=2)).find_studies(patient_id="P")
    with pytest.raises(PacsUnreachableError, match="did not answer"):
        DicomWebPacs(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2).find_series("1.2.3")


# ------------------------------------------------------------------------------------------------
# without a PACS: an instance that never arrives is an error, never dropped
# ------------------------------------------------------------------------------------------------
class LossyPacs(Pacs):
    """Lists three instances and delivers two of them."""

    def __init__(self):
        self.instances = synthetic_ct_series(3, size=8)

    def __str__(self) -> str:
        return "LOSSY"

    def query(self, level, filters, fields):
        return self.instances

    def fetch(self, series, sop_classes, intake):
        for ds in self.instances[:2]:
            intake.add(ds, 100)

    def store(self, datasets):
        raise AssertionError("not used")


def test_an_instance_that_does_not_arrive_is_an_error():
    series = SeriesInfo("1.2.3", "1.2.3.4", "CT", "2")
    with pytest.raises(
        PacsError, match=r"PACS LOSSY: 1 of 3 instances of series 2 \(CT\) of study 1.2.3 did not arrive"
    ):
        LossyPacs().retrieve(series)


def test_exact_identifiers_only():
    with pytest.raises(MedlensError, match="exact value"):
        LossyPacs().find_studies(accession="A?")
    with pytest.raises(NotInPacsError):
        EmptyPacs().find_studies(patient_id="P")


class EmptyPacs(LossyPacs):
    def query(self, level, filters, fields):
        return []


def test_the_service_lists_studies_and_fetches_the_largest_image_series_over_dicomweb(study):
    _needs_dicomweb()
    pacs = DicomWebPacs(f"{study.server.url}/dicom-web")
    listed = {s["study_instance_uid"]: s for s in pacs.recent_studies(10)}
    assert sorted(listed[study.uid]["modalities"]) == ["CT", "DX"]
    assert {str(ds.SOPInstanceUID) for ds in pacs.fetch_image_series(study.uid)} == {
        str(ds.SOPInstanceUID) for ds in study.ct
    }
    dx = pacs.fetch_image_series(study.uid, str(study.dx.SeriesInstanceUID))
    assert [str(ds.SOPInstanceUID) for ds in dx] == [study.dx.SOPInstanceUID]
    with pytest.raises(NotInPacsError):
        pacs.fetch_image_series("1.2.3.999")
