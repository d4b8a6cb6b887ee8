"""medlens.data.dicom: series assembly, geometry, rescale, windowing, errors, and dcm2niix agreement."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medlens.data import dicom
from medlens.errors import BadInputError
from tests.conftest import need

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

# An oblique orientation: rows rotated 20 degrees about z, columns tilted 10 degrees out of plane.
_A, _B = np.deg2rad(20), np.deg2rad(10)
OBLIQUE = [np.cos(_A), np.sin(_A), 0.0, -np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)]


def stored_slice(index: int, rows: int, cols: int, time: int = 0) -> np.ndarray:
    """Distinct stored values per slice (and time point) so order mistakes show."""
    return (np.arange(rows * cols).reshape(rows, cols) + 100 * index + 5000 * time).astype(np.uint16)


def make_ct_slice(
    index: int,
    *,
    series_uid: str,
    study_uid: str,
    iop=(1, 0, 0, 0, 1, 0),
    origin=(-10.0, -20.0, 30.0),
    step: float = 2.5,
    pixel_spacing=(0.8, 0.6),
    rows: int = 8,
    cols: int = 6,
    slope: float = 2.0,
    intercept: float = -1024.0,
    instance: int | None = None,
    time: int = 0,
    photometric: str = "MONOCHROME2",
    patient_id: str = "PAT-001",
    description: str = "Synthetic CT",
) -> Dataset:
    """One CT slice at ``origin + index * step * normal`` (a valid Part 10 dataset)."""
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    normal = np.cross(row, col)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = CT_STORAGE
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.InstanceNumber = index + 1 if instance is None else instance
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array(origin) + index * step * normal]
    ds.PixelSpacing = [str(v) for v in pixel_spacing]
    ds.SliceThickness = str(step)
    ds.RescaleSlope = str(slope)
    ds.RescaleIntercept = str(intercept)
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = stored_slice(index, rows, cols, time).tobytes()
    return ds


def write_series(folder: Path, n: int = 5, *, shuffle_names: bool = True, seed: int = 0, **kw) -> list[Dataset]:
    """Write ``n`` slices of one series with shuffled file names and scrambled InstanceNumbers."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = kw.pop("series_uid", generate_uid()), kw.pop("study_uid", generate_uid())
    rng = random.Random(seed)
    instances = list(range(1, n + 1))
    rng.shuffle(instances)
    names = [f"img{k:03d}.dcm" for k in range(n)]
    if shuffle_names:
        rng.shuffle(names)
    out = []
    for i in range(n):
        ds = make_ct_slice(i, series_uid=series_uid, study_uid=study_uid, instance=instances[i], **kw)
        ds.save_as(folder / names[i], enforce_file_format=True)
        out.append(ds)
    return out


# -- ordering, geometry, rescale ----------------------------------------------------------------


def test_slices_ordered_by_position_along_normal_not_name_or_instance(tmp_path):
    written = write_series(tmp_path / "s", n=6, iop=OBLIQUE, step=2.5, seed=3)
    vol = dicom.read_dicom(tmp_path / "s")
    assert vol.shape == (6, 8, 6)
    for d in range(6):
        np.testing.assert_array_equal(vol.array[d], stored_slice(d, 8, 6) * 2.0 - 1024.0)
    assert vol.sop_instance_uids == [ds.SOPInstanceUID for ds in written]
    assert vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.6), abs=1e-5)
    # affine: (k, i, j) -> LPS; k along the normal, i along the column cosines, j along the row cosines
    row, col = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    np.testing.assert_allclose(vol.affine[:3, 0], np.cross(row, col) * 2.5, atol=1e-5)
    np.testing.assert_allclose(vol.affine[:3, 1], col * 0.8, atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 2], row * 0.6, atol=1e-6)
    np.testing.assert_allclose(vol.affine[:3, 3], [-10, -20, 30], atol=1e-5)
    assert vol.modality == "CT" and vol.series_description == "Synthetic CT"
    assert vol.window == (40.0, 400.0)
    assert not vol.meta["uneven_slice_spacing"]


def test_reversed_positions_still_ascend_along_normal(tmp_path):
    # slices written going *down* the normal: the first index must be the lowest position
    write_series(tmp_path / "s", n=4, step=-3.0)
    vol = dicom.read_dicom(tmp_path / "s")
    np.testing.assert_array_equal(vol.array[0], stored_slice(3, 8, 6) * 2.0 - 1024.0)
    assert vol.affine[2, 0] == pytest.approx(3.0)
    assert vol.spacing[0] == pytest.approx(3.0)


def test_metadata_summary_is_phi_free(tmp_path):
    write_series(tmp_path / "s", n=2)
    vol = dicom.read_dicom(tmp_path / "s")
    text = json.dumps(vol.meta)
    assert "Doe" not in text and "PAT-001" not in text and vol.series_uid not in text
    assert vol.meta["modality"] == "CT" and vol.meta["rows"] == 8 and vol.meta["slices"] == 2


def test_monochrome1_is_inverted(tmp_path):
    write_series(tmp_path / "m", n=2, photometric="MONOCHROME1", slope=1.0, intercept=0.0)
    vol = dicom.read_dicom(tmp_path / "m")
    np.testing.assert_array_equal(vol.array[1], 65535.0 - stored_slice(1, 8, 6))
    assert vol.meta["monochrome1_inverted"]


def test_time_series_becomes_4d_ordered_by_instance(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    su, st = generate_uid(), generate_uid()
    for t in range(2):
        for i in range(3):
            ds = make_ct_slice(i, series_uid=su, study_uid=st, instance=1 + t * 3 + i, time=t)
            ds.save_as(folder / f"f{(i * 7 + t * 5) % 11:02d}_{t}{i}.dcm", enforce_file_format=True)
    vol = dicom.read_dicom(folder)
    assert vol.shape == (2, 3, 8, 6)
    np.testing.assert_array_equal(vol.array[1, 2], stored_slice(2, 8, 6, time=1) * 2.0 - 1024.0)


def test_missing_slice_at_one_position_is_an_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    su, st = generate_uid(), generate_uid()
    for i, t in [(0, 0), (1, 0), (0, 1)]:  # position 1 has one image, position 0 two
        make_ct_slice(i, series_uid=su, study_uid=st, time=t, instance=10 * t + i).save_as(
            folder / f"{i}{t}.dcm", enforce_file_format=True
        )
    with pytest.raises(BadInputError, match="inconsistent series"):
        dicom.read_dicom(folder)


def test_enhanced_multiframe_uses_per_frame_positions(tmp_path):
    su, st = generate_uid(), generate_uid()
    ds = make_ct_slice(0, series_uid=su, study_uid=st)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, kw)
    z_of_frame = [6.0, 0.0, 3.0]  # frames stored out of spatial order
    frames = [stored_slice(k, 8, 6) for k in range(3)]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack(frames).tobytes()
    shared = Dataset()
    ori, meas, pvt = Dataset(), Dataset(), Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    meas.PixelSpacing, meas.SliceThickness = [0.5, 0.5], 3.0
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1000, "HU"
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [ori], [meas]
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for z in z_of_frame:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, z]
        item.PlanePositionSequence = [pos]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    path = tmp_path / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    vol = dicom.read_dicom(path)
    assert vol.shape == (3, 8, 6) and not vol.is_2d
    order = np.argsort(z_of_frame)
    for d, k in enumerate(order):
        np.testing.assert_array_equal(vol.array[d], frames[k].astype(np.float32) - 1000)
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.5))


def test_single_file_is_2d(tmp_path):
    write_series(tmp_path / "one", n=1)
    path = next((tmp_path / "one").iterdir())
    vol = dicom.read_dicom(path)
    assert vol.is_2d and vol.shape == (1, 8, 6)
    array, spacing, _ = dicom.read_dicom_array(path)
    assert array.shape == (8, 6) and spacing == pytest.approx((0.8, 0.6))


def test_to_ras_maps_the_same_point(tmp_path):
    write_series(tmp_path / "s", n=3, iop=OBLIQUE)
    vol = dicom.read_dicom(tmp_path / "s")
    data, ras = vol.to_ras()
    assert data.shape == (6, 8, 3)
    k, i, j = 2, 5, 1
    lps = vol.affine @ [k, i, j, 1]
    np.testing.assert_allclose(ras @ [j, i, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-9)
    assert data[j, i, k] == vol.array[k, i, j]
    img = vol.to_nifti()
    assert img.shape == (6, 8, 3)
    np.testing.assert_allclose(img.affine, ras, atol=1e-4)


# -- compressed transfer syntaxes ---------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless"])
def test_compressed_series_decodes_to_the_same_values(tmp_path, syntax):
    import pydicom.uid

    if syntax == "JPEGLSLossless":
        pytest.importorskip("jpeg_ls", reason="JPEG-LS encoding needs pyjpegls")
    written = write_series(tmp_path / "raw", n=3, shuffle_names=False)
    (tmp_path / "zip").mkdir()
    for k, ds in enumerate(written):
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(tmp_path / "zip" / f"{k}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(tmp_path / "zip" / "0.dcm").file_meta.TransferSyntaxUID.is_compressed
    a, b = dicom.read_dicom(tmp_path / "raw"), dicom.read_dicom(tmp_path / "zip")
    np.testing.assert_array_equal(a.array, b.array)


def test_pydicom_bundled_compressed_files():
    rle, raw = PYDICOM_TEST_FILES / "MR_small_RLE.dcm", PYDICOM_TEST_FILES / "MR_small.dcm"
    if not (rle.exists() and raw.exists()):
        pytest.skip("pydicom's bundled test files are absent")
    np.testing.assert_array_equal(dicom.read_dicom(rle).array, dicom.read_dicom(raw).array)
    j2k = PYDICOM_TEST_FILES / "JPEG2000.dcm"
    if j2k.exists():  # JPEG 2000 through pylibjpeg-openjpeg
        vol = dicom.read_dicom(j2k)
        assert vol.array.shape[-2:] == (1024, 256) and np.isfinite(vol.array).all()


# -- bad input ----------------------------------------------------------------------------------


def test_truncated_pixel_data_names_file_and_sizes(tmp_path):
    write_series(tmp_path / "s", n=1)
    src = next((tmp_path / "s").iterdir())
    bad = tmp_path / "trunc.dcm"
    bad.write_bytes(src.read_bytes()[:-40])
    with pytest.raises(BadInputError, match=r"truncated pixel data: expected 96 bytes") as e:
        dicom.read_dicom(bad)
    assert e.value.path == str(bad)
    with pytest.raises(BadInputError, match="truncated pixel data"):  # headers only, too
        dicom.scan([bad])


def test_not_dicom_and_truncated_header(tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    with pytest.raises(BadInputError, match="not a DICOM file") as e:
        dicom.read_dicom(png)
    assert str(png) in str(e.value) and "\n" not in str(e.value)
    write_series(tmp_path / "s", n=1)
    head = tmp_path / "head.dcm"
    head.write_bytes(next((tmp_path / "s").iterdir()).read_bytes()[:300])
    with pytest.raises(BadInputError, match="header is truncated|truncated or corrupt"):
        dicom.read_dicom(head)


def test_folder_with_two_series_is_refused_by_read_dicom(tmp_path):
    write_series(tmp_path / "a" / "1", n=2)
    write_series(tmp_path / "a" / "2", n=2)
    with pytest.raises(BadInputError, match="2 series"):
        dicom.read_dicom(tmp_path / "a")
    assert len(dicom.scan(dicom.dicom_files(tmp_path / "a")[0])) == 2


# -- windowing ----------------------------------------------------------------------------------


def test_apply_window_and_presets():
    x = np.array([-2000, -1350, -600, 150, 1000], dtype=np.float32)
    out = dicom.apply_window(x, *dicom.WINDOW_PRESETS["lung"])
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])
    assert out.dtype == np.float32
    assert dicom.WINDOW_PRESETS["mediastinum"] == (50, 350) and dicom.WINDOW_PRESETS["brain"] == (40, 80)
    assert dicom.apply_window(np.array([40.0]), *dicom.WINDOW_PRESETS["brain"])[0] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        dicom.apply_window(x, 0, 0)


def test_window_of_uses_dicom_window(tmp_path):
    write_series(tmp_path / "s", n=2)
    vol = dicom.read_dicom(tmp_path / "s")
    assert dicom.window_of(vol) == (40.0, 400.0)
    assert dicom.window_of(vol, "bone") == dicom.WINDOW_PRESETS["bone"]
    with pytest.raises(ValueError, match="unknown window preset"):
        dicom.window_of(vol, "liverish")


# -- real data ----------------------------------------------------------------------------------


def _qa_cases(root: Path) -> list[tuple[Path, Path]]:
    """(DICOM series folder, dcm2niix reference NIfTI) matched by manufacturer + SeriesNumber."""
    refs = {}
    for sidecar in sorted((root / "Ref").glob("*.json")):
        meta = json.loads(sidecar.read_text())
        refs[(meta["Manufacturer"].upper()[:2], int(meta["SeriesNumber"]))] = sidecar.with_suffix(".nii")
    cases = []
    for folder in sorted((root / "In").glob("*/mr_*")):
        first = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        cases.append((folder, refs[(str(ds.Manufacturer).upper()[:2], int(ds.SeriesNumber))]))
    return cases


def test_dcm_qa_nih_matches_dcm2niix_reference(shared_data):
    """Every series equals dcm2niix's NIfTI: voxel values exactly, affine within 1e-3 mm.

    Compared in nibabel's closest canonical (RAS+) orientation. dcm2niix stored raw int16 values
    with scl_slope unset (NaN) here, i.e. stored == real values; the test checks that.
    """
    root = need(shared_data / "dicom" / "dcm_qa_nih")
    cases = _qa_cases(root)
    assert len(cases) == 8  # 4 GE (150 files, 15 slices x 10 volumes) + 4 Siemens mosaics
    for folder, ref_path in cases:
        ref = nib.load(ref_path)
        slope = ref.header["scl_slope"]
        assert np.isnan(slope) or slope in (0, 1), f"{ref_path.name}: scaled reference"
        vol = dicom.read_dicom(folder)
        data, affine = vol.to_ras()
        mine = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
        theirs = nib.as_closest_canonical(ref)
        assert mine.shape == theirs.shape, folder
        np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj), err_msg=str(folder))
        np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-3, err_msg=str(folder))


def test_real_series_shapes_and_spacings(shared_data):
    base = need(shared_data / "dicom")
    ct17 = dicom.read_dicom(need(base / "ct_series_17"))
    assert ct17.shape == (17, 128, 88) and ct17.modality == "CT"
    assert ct17.spacing == pytest.approx((2.0, 2.0, 2.0), abs=1e-3)
    ct4 = dicom.read_dicom(need(base / "ct_series_4"))
    assert ct4.shape == (4, 16, 16)
    assert ct4.meta["uneven_slice_spacing"]  # positions -99.48, 103.02, 104.27, 105.52: a gap, reported
    assert ct4.array.min() < -900  # rescale intercept -1024 applied: air in HU
    series = dicom.scan(dicom.dicom_files(need(base / "tcia_brain_mr_study"))[0])
    assert len(series) == 5
    by_desc = {s.series_description: s for s in series}
    assert set(by_desc) == {"T1post", "T1pre_reg", "FLAIR_reg", "T2_reg", "HippoCrop"}
    assert by_desc["T2_reg"].shape == (22, 320, 280)
    assert by_desc["T2_reg"].spacing == pytest.approx((6.5, 0.6875, 0.6875), abs=1e-3)
    assert by_desc["HippoCrop"].shape == (40, 50, 34)


def test_real_series_shuffled_file_names_give_the_same_volume(shared_data, tmp_path):
    src = need(shared_data / "dicom" / "tcia_brain_mr_study" / "11-T1post-18670")
    files = sorted(src.iterdir())
    names = [f"x{k:02d}.dcm" for k in range(len(files))]
    random.Random(7).shuffle(names)
    for f, name in zip(files, names):
        shutil.copy(f, tmp_path / name)
    a, b = dicom.read_dicom(src), dicom.read_dicom(tmp_path)
    np.testing.assert_array_equal(a.array, b.array)
    assert a.sop_instance_uids == b.sop_instance_uids
    np.testing.assert_allclose(a.affine, b.affine)
    # positions along the normal strictly increase in volume order
    normal = np.cross(*np.reshape(pydicom.dcmread(files[0], stop_before_pixels=True).ImageOrientationPatient, (2, 3)))
    z = [np.dot(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, normal) for f in a.files]
    assert np.all(np.diff(z) > 0)


@pytest.mark.parametrize("signed", [0, 1])
def test_unused_high_bits_are_ignored_like_pydicom(tmp_path, signed):
    """12 of 16 bits stored, junk in the 4 high bits: same values as pydicom's pixel_array."""
    ds = make_ct_slice(0, series_uid=generate_uid(), study_uid=generate_uid(), slope=1.0, intercept=0.0)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
    raw = (np.arange(48, dtype=np.uint16) * 97) & 0x0FFF | 0xA000  # junk above bit 11
    ds.PixelData = raw.astype("<u2").tobytes()
    path = tmp_path / "bits.dcm"
    ds.save_as(path, enforce_file_format=True)
    expected = pydicom.dcmread(path).pixel_array.astype(np.float32)
    got = dicom.read_dicom(path).array[0]
    np.testing.assert_array_equal(got, expected)
    assert got.max() <= 4095 and (got.min() < 0) == bool(signed)


def test_corrupt_headers_give_bad_input_errors_not_library_exceptions(tmp_path):
    """Seeded byte flips in the header: read_file either reads the file or raises BadInputError naming it
    (pydicom parses values lazily, so corrupt ones used to escape as ValueError/BytesLengthException)."""
    import numpy as np
    from pydicom.data import get_testdata_file

    from medlens.data.dicom import read_file
    from medlens.errors import BadInputError

    original = bytearray(open(get_testdata_file("CT_small.dcm"), "rb").read())
    rng = np.random.default_rng(0)
    rejected = 0
    for trial in range(60):
        data = bytearray(original)
        for i in rng.integers(132, 800, 6):
            data[int(i)] = int(rng.integers(0, 256))
        path = tmp_path / f"corrupt-{trial}.dcm"
        path.write_bytes(bytes(data))
        try:
            read_file(path, full=True)
        except BadInputError as e:
            assert e.path == str(path)
            rejected += 1
        finally:
            path.unlink()
    assert rejected > 0  # the mutations do hit parsed values
