"""write_synthetic: every format reads back through open_source with labels, masks and pixel values."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medlens.data.sources import open_source
from medlens.data.sources.synthetic import open_synthetic
from medlens.data.synth_writer import write_synthetic
from medlens.errors import MedlensError

N = 2  # per class


def _by_class(ds):
    """{(patient, class name): sorted pixel sums} - order-free identity of the samples."""
    out = {}
    for r in ds.records:
        s = ds.load(r.id)
        out.setdefault(ds.class_names[s.label], []).append(
            (
                s.patient_id if not s.patient_id.startswith(("train/", "val/", "test/")) else "",
                float(s.image.sum()),
                int(0 if s.mask is None else (s.mask > 0).sum()),
            )
        )
    return {k: sorted(v) for k, v in out.items()}


def _check(read, spec, *, same_patients=True):
    src = open_synthetic(spec, seed=1, n_per_class=N)
    assert len(read) == len(src)
    a, b = _by_class(src), _by_class(read)
    assert sorted(a) == sorted(b)
    for k in a:
        if same_patients:
            assert a[k] == b[k]
        else:
            assert [x[1:] for x in a[k]] == sorted(x[1:] for x in b[k])


@pytest.mark.parametrize("fmt", ["png", "nifti", "dicom"])
def test_chest2d_round_trip(tmp_path, fmt):
    out = tmp_path / fmt
    assert write_synthetic("chest2d@32", out, fmt, seed=1, n_per_class=N, show_progress=False) == 3 * N
    assert (out / "manifest.csv").is_file()
    _check(open_source(str(out)), "chest2d@32")


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_nodule3d_round_trip_with_geometry(tmp_path, fmt):
    out = tmp_path / fmt
    write_synthetic("nodule3d@16", out, fmt, seed=1, n_per_class=N, show_progress=False)
    read = open_source(str(out))
    _check(read, "nodule3d@16")
    src = open_synthetic("nodule3d@16", seed=1, n_per_class=N)
    s_src = src.load(0)
    s_read = read.load(next(r.id for r in read.records if r.patient_id == s_src.patient_id))
    np.testing.assert_allclose(s_read.spacing, s_src.spacing, rtol=1e-5)
    np.testing.assert_allclose(s_read.affine, s_src.affine, atol=1e-3)


def test_npz_medmnist_layout(tmp_path):
    out = tmp_path / "chest.npz"
    write_synthetic("chest2d@32", out, "npz", seed=1, n_per_class=N, show_progress=False)
    with np.load(out) as z:
        assert {"train_images", "train_labels", "train_masks", "class_names"} <= set(z.files)
        assert z["train_labels"].dtype == np.uint8 and z["train_labels"].shape[1] == 1
        assert z["class_names"].tolist() == ["normal", "nodule", "opacity"]
    read = open_source(str(out))
    assert read.has_source_splits
    src = open_synthetic("chest2d@32", seed=1, n_per_class=N)
    sums = sorted((int(r.label), float(read.load(r.id).image.sum())) for r in read.records)
    assert sums == sorted((int(s.label), float(s.image.sum())) for s in src)


def test_dicom_headers_are_valid(tmp_path):
    write_synthetic("chest2d@32", tmp_path / "d2", "dicom", seed=1, n_per_class=1, show_progress=False)
    write_synthetic("nodule3d@16", tmp_path / "d3", "dicom", seed=1, n_per_class=1, show_progress=False)
    ds2 = pydicom.dcmread(next((tmp_path / "d2" / "images").glob("*.dcm")))
    assert (
        ds2.Modality == "DX" and ds2.PatientID and ds2.PixelSpacing and ds2.PhotometricInterpretation == "MONOCHROME2"
    )
    files = sorted((tmp_path / "d3" / "series").glob("*/*.dcm"))
    assert len(files) == 2 * 16
    cts = [pydicom.dcmread(f) for f in files[:16]]
    assert {c.SeriesInstanceUID for c in cts} == {cts[0].SeriesInstanceUID}
    assert cts[0].SOPClassUID == pydicom.uid.CTImageStorage and cts[0].RescaleIntercept == -1024
    z = [float(c.ImagePositionPatient[2]) for c in cts]
    assert np.allclose(np.diff(z), float(cts[0].SliceThickness))
    assert cts[0].pixel_array.shape == (16, 16)


def test_refuses_png_3d_and_non_empty_folder(tmp_path):
    with pytest.raises(MedlensError, match="2D"):
        write_synthetic("nodule3d@16", tmp_path / "x", "png", n_per_class=1, show_progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("x")
    with pytest.raises(MedlensError, match="not empty"):
        write_synthetic("chest2d@16", tmp_path / "full", "png", n_per_class=1, show_progress=False)
