"""Convert any source (e.g. a DICOM study) to NIfTI volumes, one npz archive, or PNG images.

``nifti``  one ``.nii.gz`` per sample (a DICOM study: one per series, named like dcm2niix by
           series number and description, ``004_T1post.nii.gz``, with a BIDS-style JSON sidecar
           ``004_T1post.json``: modality, manufacturer, series, voxel size, slice thickness,
           rescale, conversion software; no patient identifiers and no UIDs). ``Sample.affine`` maps
           voxel (d, h, w) to RAS; NIfTI stores (x, y, z) = (w, h, d) with a voxel -> RAS affine,
           so arrays are transposed and affine columns permuted (DICOM's LPS is already turned into
           RAS by the DICOM reader). Integer data is stored as uint8/int16 when it fits, else
           float32. With masks: ``images/ID.nii.gz`` + ``labels/ID.nii.gz`` (the NIfTI reader's
           segmentation layout); without: ``ID.nii.gz``. 2D gray images become 2D NIfTI.
``npz``    ``NAME.npz`` with ``images`` (N, C, ...) float32 in native units, ``labels``, ``ids``,
           ``patient_ids``, ``splits`` ('' when none), ``class_names``, ``masks`` (when any) and
           ``spacing`` (when all known). Every image must have the same shape, otherwise
           ``MedlensError("images of mixed shapes ...")`` (resize first, or convert to nifti/png).
``png``    2D: ``ID.png``, 8-bit when values are integers in 0..255, 16-bit when integers in
           0..65535, else min-max scaled to 16 bit (RGB: 8-bit, clipped). 3D: one folder per volume
           with per-slice PNGs ``ID/0000.png ...``, 8-bit, scaled over the volume's range (CT:
           clipped to the [-1000, 400] HU window first) - PNG is for viewing, not for HU.

Labelled sources also get a ``manifest.csv`` (path,label,patient_id[,split][,mask]) so that the
converted folder opens with its labels (not for 3D PNG).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medlens import progress
from medlens.data.sample import Dataset, Sample, Task
from medlens.data.synth_writer import _file_id, _int_dtype, nifti_image, write_png
from medlens.errors import MedlensError

FORMATS = ("nifti", "npz", "png")


def convert_dataset(dataset: Dataset, out: str | Path, to: str, *, show_progress: bool = True) -> list[Path]:
    """Write every sample of ``dataset`` to ``out`` in format ``to``; returns the files written."""
    if to not in FORMATS:
        raise MedlensError(f"unknown output format '{to}' (choose from {', '.join(FORMATS)})")
    if len(dataset) == 0:
        raise MedlensError("nothing to convert: the source has no samples", dataset.uri)
    out = Path(out)
    if out.exists() and not out.is_dir() and not (to == "npz" and out.suffix == ".npz"):
        raise MedlensError("output exists and is not a folder", out)
    samples = progress.track(dataset, desc=f"converting to {to}", disable=not show_progress)
    if to == "npz":
        target = out if out.suffix == ".npz" else out / f"{_file_id(dataset.name) or 'dataset'}.npz"
        return [_to_npz(dataset, samples, target)]
    out.mkdir(parents=True, exist_ok=True)
    labelled = dataset.task not in (Task.NONE, Task.SEGMENTATION) and bool(dataset.class_names)
    written: list[Path] = []
    rows: list[dict[str, str]] = []
    used: set[str] = set()
    for s in samples:
        fid = _file_id(s.id)
        if to == "nifti":
            fid = _series_name(s, used) or fid
            files = _to_nifti(s, out, fid)
            if s.meta.get("format") == "DICOM":
                files.append(_write_sidecar(s, files[0].with_name(f"{fid}.json")))
        else:
            files = _to_png(s, out, fid)
        written.extend(files)
        rec = dataset.records[dataset.index_of(s.id)]
        rows.append(
            {
                "path": files[0].relative_to(out).as_posix(),
                "label": _label_text(dataset, s.label),
                "patient_id": s.patient_id,
                "split": rec.split or "",
                "mask": files[1].relative_to(out).as_posix()
                if len(files) > 1 and files[1].parent.name == "labels"
                else "",
            }
        )
    if labelled and not (to == "png" and dataset.dims == 3):
        written.append(_write_manifest(out, rows, dataset.class_names))
    return written


def _label_text(dataset: Dataset, label) -> str:
    if label is None:
        return ""
    if isinstance(label, tuple):
        return "|".join(n for n, v in zip(dataset.class_names, label) if v)
    return dataset.class_names[label]


def _write_manifest(out: Path, rows: list[dict[str, str]], class_names: list[str] | None = None) -> Path:
    fields = ["path", "label", "patient_id"] + [k for k in ("split", "mask") if any(r[k] for r in rows)]
    path = out / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if class_names:
        from medlens.data.sources.manifest import CLASSES_NAME

        (out / CLASSES_NAME).write_text("\n".join(class_names) + "\n", encoding="utf-8")  # keeps class indices
    return path


# -- nifti -------------------------------------------------------------------------------------
def _to_nifti(s: Sample, out: Path, fid: str) -> list[Path]:
    import nibabel as nib

    if s.dims == 2 and s.image.shape[0] != 1:
        raise MedlensError(f"{s.id}: colour 2D images cannot be written as NIfTI (use png)", s.origin)
    if s.dims == 3 and s.image.shape[0] != 1:
        data = s.image  # (C, D, H, W) -> 4D NIfTI (x, y, z, c)
        img = nifti_image(data[0], s.affine, s.spacing)
        img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(3, 2, 1, 0)).astype(_int_dtype(data)), img.affine)
    else:
        img = nifti_image(s.image[0], s.affine, s.spacing, _int_dtype(s.image[0]))
    if s.mask is None:
        path = out / f"{fid}.nii.gz"
        nib.save(img, path)
        return [path]
    (out / "images").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    path, mpath = out / "images" / f"{fid}.nii.gz", out / "labels" / f"{fid}.nii.gz"
    nib.save(img, path)
    nib.save(nifti_image(s.mask, s.affine, s.spacing, _int_dtype(s.mask)), mpath)
    return [path, mpath]


def _series_name(s: Sample, used: set[str]) -> str | None:
    """``NNN_description`` for a DICOM series (dcm2niix's naming), unique among ``used``; else None."""
    number, description = s.meta.get("series_number"), str(s.meta.get("series_description") or "")
    if s.meta.get("format") != "DICOM" or (number is None and not description):
        return None
    stem = "_".join(p for p in (f"{int(number):03d}" if number is not None else "", _file_id(description)) if p)
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


SIDECAR_FIELDS = {  # BIDS key: the PHI-free summary key of the DICOM reader
    "Modality": "modality",
    "Manufacturer": "manufacturer",
    "BodyPartExamined": "body_part",
    "SliceThickness": "slice_thickness",
    "RescaleSlope": "rescale_slope",
    "RescaleIntercept": "rescale_intercept",
}


def _write_sidecar(s: Sample, path: Path) -> Path:
    """A BIDS-style JSON sidecar of a converted DICOM series (no identifiers, no UIDs)."""
    import json

    from medlens import __version__

    meta = s.meta
    sidecar = {key: meta.get(field) for key, field in SIDECAR_FIELDS.items() if meta.get(field) is not None}
    if meta.get("series_number") is not None:
        sidecar["SeriesNumber"] = int(meta["series_number"])
    if meta.get("series_description"):
        sidecar["SeriesDescription"] = str(meta["series_description"])
    if s.spacing is not None:
        sidecar["VoxelSize"] = [float(v) for v in s.spacing[::-1]]  # NIfTI order (x, y, z)
    sidecar["ImageShape"] = [int(v) for v in s.image.shape[1:][::-1]]
    sidecar["ConversionSoftware"] = "medlens"
    sidecar["ConversionSoftwareVersion"] = __version__
    path.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return path


# -- png ---------------------------------------------------------------------------------------
def _to_png(s: Sample, out: Path, fid: str) -> list[Path]:
    from PIL import Image

    img = s.image
    if s.dims == 2:
        path = out / f"{fid}.png"
        if img.shape[0] == 3:
            Image.fromarray(np.clip(np.round(np.moveaxis(img, 0, -1)), 0, 255).astype(np.uint8), "RGB").save(path)
        elif img.shape[0] == 1:
            a = img[0]
            if not (a.min() >= 0 and a.max() <= 65535 and np.all(a == np.round(a))):
                lo, hi = float(a.min()), float(a.max())
                write_png(path, (a - lo) / max(hi - lo, 1e-12) * 65535, bits=16)
            else:
                write_png(path, a)
        else:
            raise MedlensError(f"{s.id}: {img.shape[0]} channels cannot be written as PNG", s.origin)
        files = [path]
        if s.mask is not None:
            (out / "labels").mkdir(exist_ok=True)
            write_png(out / "labels" / f"{fid}.png", s.mask.astype(np.uint8) * (255 if s.mask.max() <= 1 else 1))
            files.append(out / "labels" / f"{fid}.png")
        return files
    vol = img[0]
    if (s.modality or "").upper() == "CT":
        vol = np.clip(vol, -1000, 400)
    lo, hi = float(vol.min()), float(vol.max())
    vol8 = np.round((vol - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    folder = out / fid
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(vol8.shape[0]):
        p = folder / f"{k:04d}.png"
        Image.fromarray(vol8[k], "L").save(p)
        files.append(p)
    return files


# -- npz ---------------------------------------------------------------------------------------
def _to_npz(dataset: Dataset, samples, target: Path) -> Path:
    images, masks, spacing = [], [], []
    first: Sample | None = None
    for s in samples:
        if first is None:
            first = s
        elif s.image.shape != first.image.shape:
            raise MedlensError(
                f"images of mixed shapes: {tuple(s.image.shape)} ({s.origin}) differs from "
                f"{tuple(first.image.shape)} ({first.origin}); resize first or convert to nifti/png",
                dataset.uri,
            )
        images.append(s.image.astype(np.float32))
        masks.append(s.mask)
        spacing.append(s.spacing)
    arrays = {
        "images": np.stack(images),
        "labels": dataset.labels(),
        "ids": np.array([r.id for r in dataset.records], dtype=str),
        "patient_ids": np.array([r.patient_id for r in dataset.records], dtype=str),
        "splits": np.array([r.split or "" for r in dataset.records], dtype=str),
        "class_names": np.array(dataset.class_names, dtype=str),
    }
    if any(m is not None for m in masks):
        spatial = first.image.shape[1:]
        arrays["masks"] = np.stack([np.zeros(spatial, np.uint8) if m is None else m for m in masks])
    if all(sp is not None for sp in spacing) and len({len(sp) for sp in spacing}) == 1:
        arrays["spacing"] = np.array(spacing, dtype=np.float64)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, **arrays)
    return target
