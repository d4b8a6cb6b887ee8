"""A DICOM file, series folder or study folder as a :class:`~medlens.data.sample.Dataset`.

One sample per series (see :mod:`medlens.data.dicom` for grouping, ordering and geometry).
Opening reads headers only; pixels are read when a sample is loaded. Samples:

* 3D series: image ``(1, D, H, W)``; a time series ``(T, D, H, W)`` (time points as channels);
  a single 2D image ``(1, H, W)``;
* ``spacing`` follows the spatial axes (mm); ``affine`` maps the voxel index (k, i, j) to **RAS**
  (the NIfTI reader's convention; the DICOM LPS affine is in ``meta["affine_lps"]``);
* ``Task.NONE``, no class names; ``patient_id`` is the PatientID; ``origin`` the SeriesInstanceUID.

Side files are never an error. Files with a sidecar ending (.json, .txt, .md, .nii, thumbnails
.jpg/.png ..., see :data:`medlens.data.dicom.SIDECAR_ENDINGS`) are passed over by that rule; any other
file with neither the DICM marker, a DICOM ending (.dcm, .dicom, .ima) nor DICOM content (a README, a
thumbnail without an ending) is passed over and listed in ``dataset.problems``. A file that is DICOM but unreadable is an error, or a
:class:`Problem` with ``skip_bad``.
"""

from __future__ import annotations

import os
from pathlib import Path

from medlens.data import dicom
from medlens.data.sample import Dataset, Problem, Record, Sample, Task
from medlens.errors import BadInputError

_PROBE_FILES = 64  # files checked by looks_like_dicom_folder before it gives up


def looks_like_dicom_folder(path: Path) -> bool:
    """True when a file under ``path`` (recursive) has the DICOM preamble; reads at most a few files."""
    checked = 0
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if dicom.is_sidecar_name(name):
                continue
            if dicom.has_dicm_marker(Path(root) / name):
                return True
            checked += 1
            if checked >= _PROBE_FILES:
                return False
    return False


class DicomDataset(Dataset):
    """Series found in a DICOM file or folder; pixels read on :meth:`load`."""

    def _load(self, record: Record) -> Sample:
        vol = dicom.read_series(record.extra["files"], source=record.extra.get("folder"))
        if vol.is_2d:
            image, spacing, affine = vol.array, vol.spacing[1:], None
        else:
            image = vol.array if vol.array.ndim == 4 else vol.array[None]
            spacing, affine = vol.spacing, dicom.sample_affine(vol)
        meta = dict(vol.meta)
        meta.update(
            format="DICOM",
            series_description=vol.series_description,
            series_number=record.extra.get("series_number"),
            window=list(vol.window) if vol.window else None,
            affine_lps=vol.affine.tolist(),
            affine_space="RAS",
            sop_instance_uids=vol.sop_instance_uids,
        )
        return Sample(
            id=record.id,
            image=image,
            label=None,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=tuple(float(s) for s in spacing),
            affine=affine,
            modality=vol.modality,
            meta=meta,
        )


def open_dicom(path: Path, *, skip_bad: bool) -> Dataset:
    """Open a DICOM file or a folder of DICOM files (recursive): one sample per series."""
    path = Path(path)
    problems: list[Problem] = []
    if path.is_dir():
        files, _sidecars = dicom.dicom_files(path)
        if not files:
            raise BadInputError("no DICOM files in folder", path)
    else:
        files = [path]
    series = dicom.scan(files, skip_bad=skip_bad, problems=problems, side_files=path.is_dir())
    if not series:
        raise BadInputError(
            "no readable DICOM series"
            + (f" ({len(problems)} unreadable file(s), first: {problems[0]})" if problems else ""),
            path,
        )
    records = []
    for s in series:
        records.append(
            Record(
                id=s.key,
                label=None,
                patient_id=s.patient_id or f"study:{s.study_uid}",
                origin=s.series_uid,
                extra={
                    "files": s.files,
                    "folder": str(Path(s.files[0]).parent),
                    "modality": s.modality,
                    "series_description": s.series_description,
                    "series_number": s.series_number,
                    "study_uid": s.study_uid,
                    "shape": list(s.shape),
                    "spacing": list(s.spacing),
                    "is_2d": s.is_2d,
                },
            )
        )
    modalities = {s.modality for s in series}
    return DicomDataset(
        path.name or str(path),
        records,
        task=Task.NONE,
        class_names=[],
        dims=2 if all(s.is_2d for s in series) else 3,
        modality=modalities.pop() if len(modalities) == 1 else None,
        problems=problems,
        uri=str(path),
    )
