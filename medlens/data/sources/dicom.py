"""A DICOM file, series folder or study folder as a :class:`~medlens.data.sample.Dataset`.

One sample per series (see :mod:`medlens.data.dicom` for grouping, ordering and geometry).
Opening reads headers only; pixels are read when a sample is loaded. Samples:

* 3D series: image ``(1, D, H, W)``; a time series ``(T, D, H, W)`` (time points as channels);
  a single 2D image ``(1, H, W)``;
* ``spacing`` follows the spatial axes (mm); ``affine`` maps the voxel index (k, i, j) to **RAS**
  (the NIfTI reader's convention; the DICOM LPS affine is in ``meta["affine_lps"]``);
* ``Task.NONE``, no class names; ``patient_id`` is the PatientID; ``origin`` the SeriesInstanceUID.

A folder that holds DICOM SEG objects (modality SEG) next to the series they reference is a
segmentation source (:attr:`Task.SEGMENTATION`): each referenced series is a sample whose mask is
its SEG, in the reader's slice order (:func:`medlens.data.dicom_seg.read_seg`); class names are
``["background", <segment labels of the first SEG>]``. A series without a SEG, a SEG whose series
is not in the folder, a second SEG of one series and a SEG with other segments are listed in
``dataset.problems`` and not used.

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
from medlens.data.imageio import checked_label_map
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
        mask = self._mask(record, vol) if "seg" in record.extra else None
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
            mask=mask,
            modality=vol.modality,
            meta=meta,
        )

    def _mask(self, record: Record, vol: dicom.Volume):
        from medlens.data.dicom_seg import read_seg

        labels, _ = read_seg(record.extra["seg"], record.extra["files"])
        labels = labels[0] if vol.is_2d else labels
        return checked_label_map(labels, vol.array.shape[-labels.ndim :], self.class_names, record.extra["seg"])


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
    segs, files = _seg_headers(files) if path.is_dir() else ({}, files)
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
                attributes=dict(s.attributes),
            )
        )
    class_names = _attach_segs(segs, records, problems) if segs else []
    if class_names:
        records = [r for r in records if "seg" in r.extra]
        series = [s for s in series if s.series_uid in {r.origin for r in records}]
    modalities = {s.modality for s in series}
    return DicomDataset(
        path.name or str(path),
        records,
        task=Task.SEGMENTATION if class_names else Task.NONE,
        class_names=class_names,
        dims=2 if all(s.is_2d for s in series) else 3,
        modality=modalities.pop() if len(modalities) == 1 else None,
        problems=problems,
        uri=str(path),
    )


def _seg_headers(files: list[Path]) -> tuple[dict[str, object], list[Path]]:
    """The DICOM SEG files among ``files`` (path -> header) and the other files."""
    from medlens.data.dicom_seg import SEG_SOP_CLASS

    segs: dict[str, object] = {}
    others = []
    for f in files:
        try:
            header = dicom.read_file(f, pixels=False)
        except BadInputError:
            others.append(f)  # reported by the scan
            continue
        if str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS:
            segs[str(f)] = dicom.read_file(f, pixels=False, full=True)  # segments and references
        else:
            others.append(f)
    return segs, others


def _attach_segs(segs: dict[str, object], records: list[Record], problems: list[Problem]) -> list[str]:
    """Give each series its SEG (``extra["seg"]``); report what cannot be paired. Returns the class names."""
    from medlens.data.dicom_seg import seg_referenced_series, seg_segment_labels

    by_series = {r.origin: r for r in records}
    segments: list[str] | None = None
    for seg_path, header in sorted(segs.items()):
        labels = seg_segment_labels(header)
        targets = [by_series[uid] for uid in sorted(seg_referenced_series(header)) if uid in by_series]
        if not targets:
            problems.append(Problem(seg_path, "DICOM SEG without its referenced series in this folder; not used"))
        elif "seg" in targets[0].extra:
            problems.append(Problem(seg_path, f"a second DICOM SEG of series {targets[0].id}; not used"))
        elif segments is not None and labels != segments:
            problems.append(Problem(seg_path, f"DICOM SEG with other segments ({', '.join(labels)}); not used"))
        else:
            segments = labels
            targets[0].extra["seg"] = seg_path
    for r in records:
        if segments is not None and "seg" not in r.extra:
            problems.append(
                Problem(r.extra["folder"], f"series {r.id} without a mask (no DICOM SEG references it); not used")
            )
    return ["background", *segments] if segments is not None else []
