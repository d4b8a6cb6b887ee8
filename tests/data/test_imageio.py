"""read_image_file: rasters (8/16-bit, gray/RGB, TIFF stacks), NIfTI axis order, DICOM, bad files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medlens.data.imageio import choose_channels, read_image_file, read_mask_file
from medlens.errors import BadInputError, MedlensError


def test_png_gray_and_16bit(tmp_path):
    a = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "g.png")
    d = read_image_file(tmp_path / "g.png")
    assert d.array.shape == (1, 6, 8) and d.array.dtype == np.float32
    np.testing.assert_array_equal(d.array[0], a)
    b = (np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(b).save(tmp_path / "w.png")
    d16 = read_image_file(tmp_path / "w.png")
    assert d16.array.max() == 47000  # 16-bit values kept
    np.testing.assert_array_equal(d16.array[0], b)


def test_rgb_equal_channels_is_gray_else_rgb(tmp_path):
    g = np.random.default_rng(0).integers(0, 255, (5, 7), dtype=np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "gray_rgb.png")
    assert read_image_file(tmp_path / "gray_rgb.png").array.shape == (1, 5, 7)
    c = np.stack([g, g // 2, 255 - g], -1)
    Image.fromarray(c).save(tmp_path / "c.bmp")
    d = read_image_file(tmp_path / "c.bmp")
    assert d.array.shape == (3, 5, 7)
    np.testing.assert_array_equal(d.array[2], 255 - g)
    Image.fromarray(np.dstack([c, np.full((5, 7), 9, np.uint8)])).save(tmp_path / "rgba.png")
    assert read_image_file(tmp_path / "rgba.png").array.shape == (3, 5, 7)  # alpha dropped
    assert read_image_file(tmp_path / "c.bmp", channels=1).array.shape == (1, 5, 7)
    conv = read_image_file(tmp_path / "gray_rgb.png", channels=3)
    assert conv.array.shape == (3, 5, 7) and conv.meta["converted"] == "gray->rgb"


def test_jpeg_and_tiff_stack(tmp_path):
    Image.fromarray(np.full((4, 4), 100, np.uint8)).save(tmp_path / "x.jpg")
    assert read_image_file(tmp_path / "x.jpg").array.shape == (1, 4, 4)
    frames = [Image.fromarray(np.full((3, 5), i, np.uint8)) for i in range(4)]
    frames[0].save(tmp_path / "s.tif", save_all=True, append_images=frames[1:])
    d = read_image_file(tmp_path / "s.tif")
    assert d.array.shape == (1, 4, 3, 5) and d.array[0, 3, 0, 0] == 3


def test_not_an_image_and_corrupt(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(BadInputError, match=r"notes.png: not an image"):
        read_image_file(tmp_path / "notes.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "trunc.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
    with pytest.raises(BadInputError, match=r"trunc.png: corrupt image"):
        read_image_file(tmp_path / "trunc.png")
    (tmp_path / "blob").write_bytes(b"\x00" * 300)
    with pytest.raises(BadInputError, match="not an image"):
        read_image_file(tmp_path / "blob")
    (tmp_path / "bad.nii.gz").write_bytes(b"garbage")
    with pytest.raises(BadInputError, match="bad.nii.gz"):
        read_image_file(tmp_path / "bad.nii.gz")
    with pytest.raises(MedlensError, match="file not found"):
        read_image_file(tmp_path / "nope.png")


def test_nifti_axis_order_spacing_affine(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (x, y, z)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    d = read_image_file(tmp_path / "v.nii.gz")
    assert d.array.shape == (1, 4, 3, 2) and d.spacing == (2.0, 0.7, 0.5)
    assert d.array[0, 3, 2, 1] == data[1, 2, 3]
    # the permuted affine maps the (z, y, x) index to the same world point as nibabel's (x, y, z)
    np.testing.assert_allclose(d.affine @ [3, 2, 1, 1], affine @ [1, 2, 3, 1])
    nib.save(nib.Nifti1Image(np.zeros((2, 3, 4, 5), np.float32), affine), tmp_path / "t.nii")
    assert read_image_file(tmp_path / "t.nii").array.shape == (5, 4, 3, 2)


def test_dicom_single_file(tmp_path):
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    d = read_image_file(src)
    assert d.modality == "CT" and d.array.shape == (1, 128, 128) and d.spacing is not None
    assert d.array.min() < 0  # rescale intercept applied (Hounsfield units)
    (tmp_path / "fake.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(BadInputError, match=r"fake.dcm: not an image"):
        read_image_file(tmp_path / "fake.dcm")
    (tmp_path / "cut.dcm").write_bytes(open(src, "rb").read()[:5000])
    with pytest.raises(BadInputError, match=r"cut.dcm: corrupt image"):
        read_image_file(tmp_path / "cut.dcm")


def test_image_data_is_the_one_class_of_the_readers():
    """imageio re-exports ImageData from medlens.data.sample, the class the DICOM reader makes too."""
    from pydicom.data import get_testdata_file

    from medlens.data import dicom, imageio, sample

    assert imageio.ImageData is sample.ImageData
    assert type(dicom.read_series_folder(get_testdata_file("CT_small.dcm"))) is sample.ImageData


def test_dicom_series_folder(shared_data):
    from tests.conftest import need

    d = read_image_file(need(shared_data / "dicom" / "ct_series_4"))
    assert d.array.shape[:2] == (1, 4) and d.dims == 3 and d.modality == "CT" and d.affine.shape == (4, 4)


def test_masks(tmp_path):
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 1:4] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    mask = read_mask_file(tmp_path / "m.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask.shape == (4, 5)
    p = Image.fromarray(np.array([[0, 1], [2, 2]], np.uint8), mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    p.save(tmp_path / "p.png")
    assert read_mask_file(tmp_path / "p.png").tolist() == [[0, 1], [2, 2]]  # palette indices kept


def test_choose_channels(tmp_path):
    g = np.zeros((4, 4), np.uint8)
    Image.fromarray(g).save(tmp_path / "a.png")
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "b.png")
    assert choose_channels([tmp_path / "a.png", tmp_path / "b.png"]) == 1
    Image.fromarray(np.dstack([g, g + 5, g])).save(tmp_path / "c.png")
    assert choose_channels([tmp_path / "a.png", tmp_path / "c.png"]) == 3
