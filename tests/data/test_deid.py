"""medlens.data.deid: PS3.15 Annex E basic profile on top of dicognito, pseudonyms, PHI-free summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medlens.data import dicom
from medlens.data.deid import deidentify, phi_free_summary, pseudonym
from tests.data.test_dicom import make_ct_slice

KEY = "test-secret"


def phi_slice(index: int, series_uid: str, study_uid: str) -> Dataset:
    ds = make_ct_slice(index, series_uid=series_uid, study_uid=study_uid, patient_id="MRN-778899")
    ds.PatientName = "Smith^John^Q"
    ds.PatientBirthDate = "19610412"
    ds.PatientSex = "M"
    ds.PatientAge = "063Y"
    ds.PatientAddress = "12 Elm Street, Springfield"
    ds.OtherPatientIDs = "SSN-123-45-6789"
    ds.InstitutionName = "St. Example Hospital"
    ds.InstitutionAddress = "1 Hospital Road"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.AccessionNumber = "ACC0042"
    ds.StudyDescription = "CT chest for John Smith"
    ds.SeriesDescription = "Smith follow-up"
    ds.ImageComments = "patient John Smith, call 555-0100"
    ds.StudyDate = "20240102"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.add_new(0x00091001, "LO", "private John Smith")  # private tag (no creator: still private)
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "MRN-778899")
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ref.PerformingPhysicianName = "Grey^Meredith"
    ds.ReferencedImageSequence = [ref]
    return ds


@pytest.fixture
def series():
    su, st = generate_uid(), generate_uid()
    return [phi_slice(i, su, st) for i in range(3)]


def test_identifiers_and_free_text_are_removed_or_replaced(series):
    src = series[0]
    out = deidentify(src, key=KEY)
    text = str(out)
    for secret in (
        "Smith",
        "John",
        "19610412",
        "MRN-778899",
        "SSN-123",
        "Example Hospital",
        "Elm Street",
        "House",
        "ACC0042",
        "555-0100",
        "Grey",
        "063Y",
    ):
        assert secret not in text, secret
    assert "PatientAddress" not in out and "OtherPatientIDs" not in out and "ImageComments" not in out
    assert "StudyDescription" not in out and "SeriesDescription" not in out and "PatientAge" not in out
    assert out.PatientBirthDate == "" and out.PatientSex == "" and out.AccessionNumber == ""
    assert out.PatientID == pseudonym("MRN-778899", KEY)
    assert out.PatientIdentityRemoved == "YES"
    assert "Annex E" in " ".join(out.DeidentificationMethod)
    assert {c.CodeValue for c in out.DeidentificationMethodCodeSequence} == {"113100", "113107"}
    assert out.StudyDate != "20240102"  # shifted by a key-derived offset (dicognito)


def test_input_is_untouched_and_pixels_identical(series):
    src = series[0]
    before = str(src)
    out = deidentify(src, key=KEY)
    assert str(src) == before
    assert out.PixelData == src.PixelData
    np.testing.assert_array_equal(out.pixel_array, src.pixel_array)


def test_private_tags_removed(series):
    out = deidentify(series[0], key=KEY)
    assert not any(elem.tag.is_private for elem in out.iterall())


def test_uids_remapped_consistently_across_a_series(series):
    outs = [deidentify(ds, key=KEY) for ds in series]
    assert len({o.SeriesInstanceUID for o in outs}) == 1
    assert len({o.StudyInstanceUID for o in outs}) == 1
    assert outs[0].SeriesInstanceUID != series[0].SeriesInstanceUID
    assert len({o.SOPInstanceUID for o in outs}) == 3
    assert all(o.SOPInstanceUID != s.SOPInstanceUID for o, s in zip(outs, series))
    assert all(o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID for o in outs)
    # references inside sequences follow the same map
    assert outs[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == outs[0].SOPInstanceUID
    assert outs[0].SOPClassUID == series[0].SOPClassUID  # class UIDs are not identifiers
    # deterministic for a key, different for another
    again = deidentify(series[0], key=KEY)
    assert again.SeriesInstanceUID == outs[0].SeriesInstanceUID and again.PatientID == outs[0].PatientID
    other = deidentify(series[0], key="another-key")
    assert other.SeriesInstanceUID != outs[0].SeriesInstanceUID and other.PatientID != outs[0].PatientID


def test_deidentified_series_still_reads_as_one_volume(series, tmp_path):
    for k, ds in enumerate(series):
        deidentify(ds, key=KEY).save_as(tmp_path / f"{k}.dcm", enforce_file_format=True)
    vol = dicom.read_dicom(tmp_path)
    original = np.stack([ds.pixel_array for ds in series]).astype(np.float32) * 2 - 1024
    np.testing.assert_array_equal(vol.array, original)
    assert vol.patient_id == pseudonym("MRN-778899", KEY)


def test_keep_descriptions_option(series):
    out = deidentify(series[0], key=KEY, keep_descriptions=True)
    assert out.SeriesDescription == "Smith follow-up"
    assert "descriptions kept" in out.DeidentificationMethod


def test_pseudonym():
    a = pseudonym("MRN-778899", KEY)
    assert a == pseudonym("MRN-778899", KEY) and len(a) == 16
    assert a != pseudonym("MRN-778899", "other") and a != pseudonym("MRN-778898", KEY)
    assert "778899" not in a
    with pytest.raises(ValueError):
        pseudonym("x", "")
    with pytest.raises(ValueError):
        deidentify(Dataset(), key="")


def test_phi_free_summary(series):
    src = series[0]
    summary = phi_free_summary(src)
    text = json.dumps(summary)
    for secret in ("Smith", "MRN-778899", "Example", src.SeriesInstanceUID, src.SOPInstanceUID, src.StudyInstanceUID):
        assert secret not in text
    assert summary["modality"] == "CT" and summary["rows"] == 8 and summary["columns"] == 6
    assert summary["series_uid_hash"] == phi_free_summary(series[1])["series_uid_hash"]
    assert summary["sop_uid_hash"] != phi_free_summary(series[1])["sop_uid_hash"]
