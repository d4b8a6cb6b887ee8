"""convert_dataset: NIfTI (geometry kept), npz (stacked or a clear error), PNG."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.convert import convert_dataset
from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.data.sources import open_source
from medlens.data.sources.synthetic import open_synthetic
from medlens.errors import MedlensError
from tests.conftest import need


def test_nodule3d_to_nifti_reads_back_equal(tmp_path):
    src = open_synthetic("nodule3d@16", seed=2, n_per_class=1)
    files = convert_dataset(src, tmp_path / "nii", "nifti", show_progress=False)
    assert (tmp_path / "nii" / "manifest.csv") in files
    read = open_source(str(tmp_path / "nii"))
    assert len(read) == len(src) and read.class_names == src.class_names  # classes.txt keeps the order
    for s in src:
        r = read.load(next(x.id for x in read.records if x.patient_id == s.patient_id))
        np.testing.assert_array_equal(r.image, s.image)
        np.testing.assert_array_equal(r.mask, s.mask)
        np.testing.assert_allclose(r.affine, s.affine, atol=1e-4)
        assert read.class_names[r.label] == src.class_names[s.label]


def test_chest2d_to_png_and_npz(tmp_path):
    src = open_synthetic("chest2d@24", seed=0, n_per_class=1)
    convert_dataset(src, tmp_path / "png", "png", show_progress=False)
    read = open_source(str(tmp_path / "png"))
    assert sorted(float(s.image.sum()) for s in read) == sorted(float(s.image.sum()) for s in src)
    [npz] = convert_dataset(src, tmp_path / "npz", "npz", show_progress=False)
    with np.load(npz) as z:
        assert z["images"].shape == (3, 1, 24, 24) and z["masks"].shape == (3, 24, 24)
        assert z["labels"].tolist() == src.labels().tolist()


class _Mixed(Dataset):
    def __init__(self):
        super().__init__(
            "mixed",
            [Record("a", None, "a", "a.png"), Record("b", None, "b", "b.png")],
            task=Task.NONE,
            class_names=[],
            dims=2,
        )

    def _load(self, r):
        shape = (1, 4, 4) if r.id == "a" else (1, 5, 4)
        return Sample(r.id, np.zeros(shape, np.float32), None, r.patient_id, r.origin)


def test_npz_of_mixed_shapes_is_a_clear_error(tmp_path):
    with pytest.raises(MedlensError, match="images of mixed shapes.*b.png"):
        convert_dataset(_Mixed(), tmp_path / "x", "npz", show_progress=False)


def test_float_2d_png_is_16_bit(tmp_path):
    class F(_Mixed):
        def _load(self, r):
            return Sample(r.id, np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 4, 4), None, r.id, r.origin)

    from PIL import Image

    files = convert_dataset(F(), tmp_path / "p", "png", show_progress=False)
    with Image.open(files[0]) as im:
        a = np.asarray(im)
    assert a.dtype == np.uint16 or im.mode.startswith("I")
    assert a.min() == 0 and a.max() == 65535


def test_3d_to_png_slices(tmp_path):
    src = open_synthetic("nodule3d@16", n_per_class=1)
    files = convert_dataset(src.subset([src.records[0].id]), tmp_path / "p", "png", show_progress=False)
    assert len(files) == 16 and all(f.suffix == ".png" for f in files)


def test_tcia_series_to_nifti_keeps_shape_and_spacing(shared_data, tmp_path):
    study = need(shared_data / "dicom" / "tcia_brain_mr_study")
    ds = open_source(str(study))
    first = ds.load(0)
    files = convert_dataset(ds.subset([ds.records[0].id]), tmp_path / "n", "nifti", show_progress=False)
    import nibabel as nib

    img = nib.load(str(files[0]))
    assert img.shape == first.image.shape[1:][::-1]
    np.testing.assert_allclose(img.header.get_zooms(), first.spacing[::-1], rtol=1e-4)
    read = open_source(str(files[0])).load(0)
    np.testing.assert_allclose(read.affine, first.affine, atol=1e-3)
    np.testing.assert_array_equal(read.image, first.image)


def test_dicom_series_are_named_like_dcm2niix_with_a_bids_sidecar(shared_data, tmp_path):
    import json

    study = need(shared_data / "dicom" / "tcia_brain_mr_study")
    ds = open_source(str(study))
    files = convert_dataset(ds, tmp_path / "n", "nifti", show_progress=False)
    volumes = sorted(f.name for f in files if f.name.endswith(".nii.gz"))
    sidecars = sorted(f.name for f in files if f.suffix == ".json")
    assert len(volumes) == len(ds) == len(sidecars)
    assert "011_T1post.nii.gz" in volumes and "HippoCrop.nii.gz" in volumes  # a series without a number
    assert [v.replace(".nii.gz", "") for v in volumes] == [s.replace(".json", "") for s in sidecars]
    for name in sidecars:
        side = json.loads((tmp_path / "n" / name).read_text())
        assert side["Modality"] == "MR" and side["ConversionSoftware"] == "medlens"
        expected = "_".join(
            p for p in (f"{side['SeriesNumber']:03d}" if "SeriesNumber" in side else "", side["SeriesDescription"]) if p
        )
        assert name == f"{expected}.json" and len(side["VoxelSize"]) == 3
        assert not any("UID" in key or "Patient" in key for key in side)
        assert ds.records[0].id not in json.dumps(side)  # no series UID
