"""DICOM SEG as input: the label map in the DICOM reader's volume order, alone and as a folder source."""

from __future__ import annotations

import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medlens.data.dicom import read_dicom, read_series
from medlens.data.dicom_seg import read_seg
from medlens.data.sample import Task
from medlens.data.sources import open_source
from medlens.errors import BadInputError
from medlens.serving.seg import segmentation
from tests.serving.orthanc_fixture import synthetic_ct_series
from tests.serving.test_seg import _labels, _oblique_descending_series


def test_seg_round_trip_in_the_readers_slice_order_whatever_the_file_order(tmp_path):
    files = _oblique_descending_series(tmp_path)  # slice order is neither file nor instance order
    volume = read_series(files)
    mask = _labels(volume.shape, 2, empty_slices=(1, 3))
    segmentation(mask, [pydicom.dcmread(p) for p in files], ["lesion", "oedema"], model="m").save_as(tmp_path / "s")
    labels, names = read_seg(tmp_path / "s", list(reversed(files)))
    assert names == ["lesion", "oedema"] and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, mask)


def test_seg_of_a_multiframe_source(tmp_path):
    series = synthetic_ct_series(4, 16)
    multiframe = hd.legacy.LegacyConvertedEnhancedCTImage([series[i] for i in (2, 0, 3, 1)], hd.UID(), 5, hd.UID(), 1)
    multiframe.save_as(tmp_path / "mf.dcm")
    mask = _labels(read_dicom(tmp_path / "mf.dcm").shape, 1, empty_slices=(2,))
    segmentation(mask, [pydicom.dcmread(tmp_path / "mf.dcm")], ["lesion"], model="m").save_as(tmp_path / "seg.dcm")
    labels, _ = read_seg(tmp_path / "seg.dcm", [tmp_path / "mf.dcm"])
    np.testing.assert_array_equal(labels, mask)


def test_seg_of_another_series_or_not_a_seg_is_a_one_line_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    files_a = _oblique_descending_series(a)
    files_b = _oblique_descending_series(b)
    mask = _labels(read_series(files_a).shape, 1)
    segmentation(mask, [pydicom.dcmread(p) for p in files_a], ["x"], model="m").save_as(tmp_path / "seg.dcm")
    with pytest.raises(BadInputError, match="seg.dcm: the SEG does not reference series"):
        read_seg(tmp_path / "seg.dcm", files_b)
    with pytest.raises(BadInputError, match="not a readable DICOM SEG"):
        read_seg(files_a[0], files_a)


def test_a_folder_with_a_series_and_its_seg_is_a_segmentation_source(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    files = _oblique_descending_series(study)
    mask = _labels(read_series(files).shape, 2)
    segmentation(mask, [pydicom.dcmread(p) for p in files], ["lesion", "oedema"], model="m").save_as(study / "z.dcm")
    ds = open_source(str(study))
    assert ds.task is Task.SEGMENTATION and ds.class_names == ["background", "lesion", "oedema"]
    assert len(ds) == 1 and not ds.problems
    sample = ds.load(0)
    assert sample.image.shape == (1, *mask.shape)
    np.testing.assert_array_equal(sample.mask, mask)

    other = study / "other"  # a second series without a SEG, and a SEG whose series is absent
    other.mkdir()
    _oblique_descending_series(other)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    lonely_files = _oblique_descending_series(lonely)
    shutil.copy(study / "z.dcm", study / "z2.dcm")  # a second SEG of the same series
    segmentation(
        _labels(read_series(lonely_files).shape, 1), [pydicom.dcmread(p) for p in lonely_files], ["x"], model="m"
    ).save_as(study / "orphan.dcm")
    ds = open_source(str(study))
    assert len(ds) == 1 and ds.task is Task.SEGMENTATION
    problems = "\n".join(str(p) for p in ds.problems)
    assert "orphan.dcm: DICOM SEG without its referenced series" in problems
    assert "z2.dcm: a second DICOM SEG" in problems
    assert "without a mask (no DICOM SEG references it)" in problems


def test_data_info_on_a_series_with_its_seg_reports_the_segments(tmp_path, cli):
    study = tmp_path / "study"
    study.mkdir()
    files = _oblique_descending_series(study)
    mask = _labels(read_series(files).shape, 1)
    segmentation(mask, [pydicom.dcmread(p) for p in files], ["lesion"], model="m").save_as(study / "seg.dcm")
    code, out, _ = cli("data", "info", study, "--json")
    fp = json.loads(out)
    assert code == 0 and fp["task"] == "segmentation" and fp["class_names"] == ["background", "lesion"]
    lesion = fp["masks"]["classes"]["lesion"]
    assert lesion["cases"] == 1 and lesion["foreground_fraction"]["mean"] == pytest.approx(mask.mean(), abs=1e-6)
