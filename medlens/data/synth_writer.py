"""Write a synthetic dataset to disk in a format the project's own readers open with its labels.

``medlens data synth synthetic:chest2d OUT --format png|dicom|nifti|npz``:

``png``    (2D only) ``images/ID.png`` (8-bit gray, lossless for chest2d) + ``masks/ID.png``
           (0/255) + ``manifest.csv`` (path,label,patient_id,mask).
``dicom``  2D: one Secondary Capture file per image built with highdicom (PatientID, a
           StudyInstanceUID per patient, a series per image, pixel spacing, MONOCHROME2,
           patient orientation L\\F, modality DX) + PNG masks. 3D: one CT series per volume
           (``series/ID/0001.dcm`` ...) built with pydicom, with ImagePositionPatient,
           ImageOrientationPatient, PixelSpacing, SliceThickness and Rescale (HU = stored - 1024),
           so the DICOM reader rebuilds the geometry + NIfTI masks. ``manifest.csv`` points at the
           files (2D) or series folders (3D).
``nifti``  ``images/ID.nii.gz`` + ``masks/ID.nii.gz`` (RAS affine for 3D) + ``manifest.csv``.
``npz``    OUT.npz (or OUT/NAME.npz when OUT is a folder) in the MedMNIST layout (``train_images``, ``train_labels`` (N, 1) uint8, ``val_*``,
           ``test_*``) with a seeded patient-level split (:func:`medlens.data.splits.assign_splits`),
           plus ``*_masks``, ``*_patient_ids`` and ``class_names``. chest2d is stored as uint8,
           nodule3d as int16 HU.

Pixel values round-trip exactly: chest2d is 8-bit, nodule3d integer HU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medlens import progress
from medlens.data.sample import Dataset, Sample
from medlens.errors import MedlensError

FORMATS = ("png", "dicom", "nifti", "npz")
MANIFEST = "manifest.csv"
UID_ROOT = "1.2.826.0.1.3680043.10.1426."  # deterministic UIDs: pydicom.uid.generate_uid(prefix, entropy)


def write_synthetic(
    spec: str,
    out: str | Path,
    fmt: str,
    *,
    seed: int = 0,
    n_per_class: int | None = None,
    size: int | None = None,
    show_progress: bool = True,
) -> int:
    """Generate ``synthetic:SPEC`` and write it to ``out`` as ``fmt``; returns the number of samples."""
    from medlens.data.sources.synthetic import open_synthetic

    if fmt not in FORMATS:
        raise MedlensError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    dataset = open_synthetic(spec, seed=seed, n_per_class=n_per_class, size=size)
    return write_dataset(dataset, out, fmt, seed=seed, show_progress=show_progress)


def write_dataset(dataset: Dataset, out: str | Path, fmt: str, *, seed: int = 0, show_progress: bool = True) -> int:
    """Write a labelled dataset with masks (e.g. a synthetic one) in ``fmt``; returns the sample count.

    ``out`` is a new or empty folder; for ``npz`` it may also be a file name ending in ``.npz``."""
    out = Path(out)
    if fmt == "npz" and out.suffix.lower() == ".npz":
        if out.exists():
            raise MedlensError("output file exists", out)
        out.parent.mkdir(parents=True, exist_ok=True)
        return _write_npz(dataset, progress.track(dataset, desc="writing npz", disable=not show_progress), out, seed)
    if out.exists() and not out.is_dir():
        raise MedlensError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()):
        raise MedlensError("output folder is not empty", out)
    if fmt == "png" and dataset.dims != 2:
        raise MedlensError(f"png holds 2D images; {dataset.name} is {dataset.dims}D (use nifti, dicom or npz)", out)
    out.mkdir(parents=True, exist_ok=True)
    samples = progress.track(dataset, desc=f"writing {fmt}", disable=not show_progress)
    if fmt == "npz":
        name = dataset.name.split(":")[-1].split("@")[0] or "dataset"
        return _write_npz(dataset, samples, out / f"{name}.npz", seed)
    rows = []
    for n, s in enumerate(samples):
        writer = {"png": _png_sample, "nifti": _nifti_sample, "dicom": _dicom_sample}[fmt]
        path, mask = writer(s, out, dataset, n)
        rows.append({"path": path, "label": dataset.class_names[s.label], "patient_id": s.patient_id, "mask": mask})
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "mask"])
        w.writeheader()
        w.writerows(rows)
    from medlens.data.sources.manifest import CLASSES_NAME

    (out / CLASSES_NAME).write_text("\n".join(dataset.class_names) + "\n", encoding="utf-8")  # fixes class indices
    return len(rows)


def _file_id(sample_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in sample_id)


# -- png -------------------------------------------------------------------------------------------
def write_png(path: Path, image2d: np.ndarray, bits: int | None = None) -> None:
    """A gray PNG: 8-bit when the values are integers in 0..255 (or ``bits=8``), else 16-bit
    (values rounded and clipped to 0..65535)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(image2d)
    if bits == 8 or (bits is None and a.min() >= 0 and a.max() <= 255 and np.all(a == np.round(a))):
        Image.fromarray(a.astype(np.uint8), mode="L").save(path)
    else:
        Image.fromarray(np.clip(np.round(a), 0, 65535).astype(np.uint16)).save(path)


def _png_mask(s: Sample, out: Path, fid: str) -> str:
    if s.mask is None:
        return ""
    write_png(out / "masks" / f"{fid}.png", (s.mask > 0).astype(np.uint8) * 255)
    return f"masks/{fid}.png"


def _png_sample(s: Sample, out: Path, dataset: Dataset, n: int) -> tuple[str, str]:
    fid = _file_id(s.id)
    if s.image.shape[0] != 1:
        raise MedlensError(f"{s.id}: png writer supports gray images only", out)
    write_png(out / "images" / f"{fid}.png", s.image[0])
    return f"images/{fid}.png", _png_mask(s, out, fid)


# -- nifti -----------------------------------------------------------------------------------------
def nifti_image(array: np.ndarray, affine: np.ndarray | None = None, spacing=None, dtype=None):
    """A nibabel image from a medlens spatial array: 2D (H, W) or 3D (D, H, W) with a voxel
    (d, h, w) -> RAS ``affine``. NIfTI stores (x, y, z) = (w, h, d), so the array is transposed
    and the affine's columns permuted (the inverse of what :mod:`medlens.data.imageio` reads)."""
    import nibabel as nib

    a = np.asarray(array)
    if dtype is not None:
        a = a.astype(dtype)
    sp = [float(v) for v in spacing] if spacing is not None else [1.0] * a.ndim
    if a.ndim == 2:  # no patient geometry: the spacing only
        data = a.T
        aff = np.diag([sp[1], sp[0], 1.0, 1.0])
    elif a.ndim == 3:
        if affine is None:
            affine = np.diag([*sp, 1.0])
        data = a.transpose(2, 1, 0)
        aff = np.asarray(affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    else:
        raise MedlensError(f"cannot write a {a.ndim}D array as NIfTI")
    img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return img


def _int_dtype(a: np.ndarray):
    if np.all(a == np.round(a)):
        if a.min() >= 0 and a.max() <= 255:
            return np.uint8
        if a.min() >= -32768 and a.max() <= 32767:
            return np.int16
    return np.float32


def _nifti_sample(s: Sample, out: Path, dataset: Dataset, n: int) -> tuple[str, str]:
    import nibabel as nib

    fid = _file_id(s.id)
    (out / "images").mkdir(parents=True, exist_ok=True)
    img = s.image[0]
    nib.save(nifti_image(img, s.affine, s.spacing, _int_dtype(img)), out / "images" / f"{fid}.nii.gz")
    return f"images/{fid}.nii.gz", _nifti_mask(s, out, fid)


# -- dicom -----------------------------------------------------------------------------------------
def _uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts])


def _dicom_sample(s: Sample, out: Path, dataset: Dataset, n: int) -> tuple[str, str]:
    fid = _file_id(s.id)
    seed = s.meta.get("seed", 0)
    study = _uid("study", dataset.name, seed, s.patient_id)
    series = _uid("series", dataset.name, seed, s.id)
    if s.dims == 2:
        path = out / "images" / f"{fid}.dcm"
        _write_dicom_2d(s, path, study, series, series_number=n + 1)
        return f"images/{fid}.dcm", _png_mask(s, out, fid)
    folder = out / "series" / fid
    write_ct_series(
        s.image[0],
        s.affine,
        folder,
        patient_id=s.patient_id,
        study_uid=study,
        series_uid=series,
        series_number=n + 1,
        description=f"synthetic {dataset.name} {s.id}",
    )
    return f"series/{fid}", _nifti_mask(s, out, fid)


def _nifti_mask(s: Sample, out: Path, fid: str) -> str:
    """Write the sample's mask as masks/FID.nii.gz (same geometry as the image); its relative path, or ""."""
    if s.mask is None:
        return ""
    import nibabel as nib

    (out / "masks").mkdir(parents=True, exist_ok=True)
    nib.save(nifti_image(s.mask, s.affine, s.spacing, np.uint8), out / "masks" / f"{fid}.nii.gz")
    return f"masks/{fid}.nii.gz"


def _write_dicom_2d(s: Sample, path: Path, study: str, series: str, series_number: int) -> None:
    """A Secondary Capture image built by highdicom, with the X-ray modality and pixel spacing."""
    import highdicom as hd

    img = s.image[0]
    if img.min() < 0 or img.max() > 65535 or not np.all(img == np.round(img)):
        raise MedlensError(f"{s.id}: 2D DICOM writer expects integer pixel values in 0..65535", path)
    eight = img.max() <= 255
    pixels = img.astype(np.uint8 if eight else np.uint16)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=8 if eight else 16,
        coordinate_system="PATIENT",
        study_instance_uid=study,
        series_instance_uid=series,
        series_number=series_number,
        sop_instance_uid=_uid("sop", series, 1),
        instance_number=1,
        manufacturer="medlens synthetic",
        patient_id=s.patient_id,
        patient_name=f"Synthetic^{s.patient_id}",
        patient_sex="O",
        study_id=s.patient_id[-8:],
        accession_number=s.patient_id[-16:],
        study_date="20240101",
        study_time="120000",
        referring_physician_name="",
        pixel_spacing=tuple(float(v) for v in s.spacing) if s.spacing else None,
        patient_orientation=("L", "F"),
    )
    sc.Modality = s.modality or "OT"
    sc.BodyPartExamined = "CHEST"
    sc.SeriesDescription = f"synthetic {s.meta.get('generator', '')}".strip()
    sc.ImageComments = f"synthetic class {s.meta.get('class_name', s.label)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(path, enforce_file_format=True)


def write_ct_series(
    volume_hu: np.ndarray,
    affine_ras: np.ndarray,
    folder: Path,
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    series_number: int = 1,
    description: str = "",
) -> list[Path]:
    """Write a (D, H, W) HU volume as a CT Image Storage series, one file per slice.

    ``affine_ras`` maps voxel (d, h, w) to RAS (``Sample.affine``); DICOM wants LPS, so x and y
    are negated. Slice k is at ImagePositionPatient = affine_lps @ (k, 0, 0); rows follow the h
    axis, columns the w axis. Stored values are HU + 1024 (uint16), RescaleIntercept -1024.
    """
    import datetime

    from pydicom.dataset import Dataset as DcmDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise MedlensError(f"a CT series needs a 3D volume, got shape {vol.shape}", folder)
    if not np.all(vol == np.round(vol)) or vol.min() < -1024 or vol.max() > 64511:
        raise MedlensError("CT values must be integer HU in -1024..64511", folder)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine_ras, dtype=np.float64)
    step, col_vec, row_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dr, dc, dz = np.linalg.norm(col_vec), np.linalg.norm(row_vec), np.linalg.norm(step)
    orientation = [*(row_vec / dc), *(col_vec / dr)]
    frame_uid = _uid("frame", series_uid)
    folder.mkdir(parents=True, exist_ok=True)
    stored = (vol + 1024).astype(np.uint16)
    paths = []
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = _uid("ct", series_uid, k)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = DcmDataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            f"Synthetic^{patient_id}",
            patient_id,
            "",
            "O",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = "CT", series_number, k + 1, 1
        ds.SeriesDescription, ds.BodyPartExamined = description[:64], "CHEST"
        ds.Manufacturer, ds.PositionReferenceIndicator, ds.PatientPosition = "medlens synthetic", "", "FFS"
        ds.KVP = 120
        position = lps[:3, 3] + k * step
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in position]
        ds.ImageOrientationPatient = [float(f"{v:.6f}") for v in orientation]
        ds.PixelSpacing = [float(f"{dr:.6f}"), float(f"{dc:.6f}")]
        ds.SliceThickness = float(f"{dz:.6f}")
        ds.SliceLocation = float(f"{position[2]:.6f}")
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(vol.shape[1]), int(vol.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        ds.InstanceCreationDate = datetime.date(2024, 1, 1).strftime("%Y%m%d")
        path = folder / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- npz (MedMNIST layout) ---------------------------------------------------------------------------
def _write_npz(dataset: Dataset, samples, out: Path, seed: int) -> int:
    from medlens.data.splits import assign_splits

    splits = assign_splits(dataset, seed=seed)
    where = {i: (s, n) for s, ids in splits.items() for n, i in enumerate(ids)}
    images: dict[str, list] = {s: [None] * len(ids) for s, ids in splits.items()}
    masks: dict[str, list] = {s: [None] * len(ids) for s, ids in splits.items()}
    count = 0
    for smp in samples:
        split, n = where[smp.id]
        if smp.image.shape[0] == 1:
            img = smp.image[0]
        elif dataset.dims == 2 and smp.image.shape[0] == 3:
            img = np.moveaxis(smp.image, 0, -1)
        else:
            raise MedlensError(f"{smp.id}: npz (MedMNIST layout) holds gray or RGB images", out)
        images[split][n] = img
        masks[split][n] = (
            np.zeros(img.shape[: dataset.dims], np.uint8) if smp.mask is None else smp.mask.astype(np.uint8)
        )
        count += 1
    arrays: dict[str, np.ndarray] = {"class_names": np.array(dataset.class_names, dtype=str)}
    stacked = {s: np.stack(v) for s, v in images.items() if v}
    dtype = _int_dtype(np.concatenate([a.ravel() for a in stacked.values()]))
    for s, ids in splits.items():
        if not ids:
            continue
        recs = [dataset.records[dataset.index_of(i)] for i in ids]
        arrays[f"{s}_images"] = stacked[s].astype(dtype)
        arrays[f"{s}_labels"] = np.array([[r.label] for r in recs], dtype=np.uint8)
        arrays[f"{s}_masks"] = np.stack(masks[s])
        arrays[f"{s}_patient_ids"] = np.array([r.patient_id for r in recs], dtype=str)
    np.savez_compressed(out, **arrays)
    return count
