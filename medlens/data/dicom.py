"""DICOM files and series to volumes: grouping, slice order, geometry, rescale, windowing.

Reading is done by pydicom (compressed transfer syntaxes decode through the installed
pylibjpeg / openjpeg / pyjpegls plugins); Siemens mosaic headers are parsed by nibabel's
``nicom`` wrappers. What this module adds is the assembly of frames into a volume:

* files are grouped by StudyInstanceUID / SeriesInstanceUID (and split further when one series
  mixes image sizes or orientations, e.g. a three-plane localizer);
* slices are ordered by their position along the slice normal
  ``n = row_cosines x column_cosines`` (``n . ImagePositionPatient``), never by file name or
  InstanceNumber; images that share a position are time points (4D) ordered by
  TemporalPositionIdentifier, AcquisitionNumber, InstanceNumber;
* RescaleSlope / RescaleIntercept are applied per frame (float32 result, native units such as HU);
  MONOCHROME1 images are inverted so that larger always means brighter;
* single-frame series, multi-frame files (enhanced multi-frame with per-frame
  PlanePositionSequence) and Siemens mosaics all give the same :class:`Volume`.

Geometry convention
-------------------
``Volume.array`` is ``(D, H, W)`` (slice, row, column) or ``(T, D, H, W)`` for a time series.
``Volume.affine`` is a 4x4 matrix mapping a voxel index ``(k, i, j, 1)`` in that axis order
(slice, row, column) to DICOM patient coordinates in millimetres, **LPS** (x to the patient's
left, y to posterior, z to head). :meth:`Volume.to_ras` gives the NIfTI view: the array as
``(x=column, y=row, z=slice[, t])`` with a voxel -> RAS affine, which is what nibabel writes.
"""

from __future__ import annotations

import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError

from medlens.data.attributes import dicom_attributes
from medlens.data.limits import check_size
from medlens.data.sample import ImageData, Problem
from medlens.errors import BadInputError

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (40.0, 400.0),
}
"""Window (center, width) presets in HU for CT."""

SIDECAR_ENDINGS = (
    ".json",
    ".txt",
    ".md",
    ".nii",
    ".nii.gz",
    ".csv",
    ".xml",
    ".html",
    ".pdf",
    ".py",
    ".sh",
    ".yaml",
    ".yml",
    ".jpg",
    ".jpeg",
    ".png",
    ".gif",
    ".bmp",
)
"""Endings of files that are never DICOM images (sidecars, READMEs, thumbnails): passed over inside
DICOM folders and listed as side files (so is a DICOMDIR, which indexes the folder but holds no image).
A file of any other name that has no DICM marker and does not parse as DICOM is a side file too."""

_DEFER_BYTES = 4096  # header-only reads skip values longer than this (pixel data)
_PIXEL_DATA = 0x7FE00010
_POSITION_TOL = 1e-2

# The attributes a volume needs (geometry, rescale, pixel module, grouping, PHI-free summary,
# Siemens CSA headers for mosaics). Parsing only these makes a series read ~25% faster.
READ_TAGS: list = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "AcquisitionNumber",
    "TemporalPositionIdentifier",
    "Modality",
    "Manufacturer",
    "BodyPartExamined",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "ViewPosition",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    0x00190010,
    0x0019100A,  # Siemens private creator + NumberOfImagesInMosaic
    0x00290010,
    0x00290011,
    0x00290012,
    0x00291010,
    0x00291020,
    0x00291110,
    0x00291120,
    0x00291210,
    0x00291220,
]
READ_TAGS = [
    pydicom.tag.Tag(t) for t in READ_TAGS
]  # converted once, not on every read  # mm: slices closer than this along the normal share a position


# --------------------------------------------------------------------------------------------
# the volume
# --------------------------------------------------------------------------------------------
@dataclass
class Volume:
    """One series as an array with its geometry (see the module docstring for the convention)."""

    array: np.ndarray  # float32 (D, H, W) or (T, D, H, W)
    spacing: tuple[float, float, float]  # (slice, row, column) step in mm
    affine: np.ndarray  # 4x4, voxel (k, i, j) -> patient LPS mm
    modality: str
    series_description: str
    series_uid: str
    study_uid: str
    patient_id: str
    sop_instance_uids: list[str]  # in slice order (time-major for 4D)
    files: list[str]  # in the order of sop_instance_uids (one per frame)
    window: tuple[float, float] | None = None  # DICOM's own WindowCenter/Width, first value
    is_2d: bool = False  # one single-frame image without a slice axis of its own
    meta: dict[str, Any] = field(default_factory=dict)  # PHI-free summary

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def timepoints(self) -> int:
        return self.array.shape[0] if self.array.ndim == 4 else 1

    def to_ras(self) -> tuple[np.ndarray, np.ndarray]:
        """The NIfTI view: array as (x=column, y=row, z=slice[, t]) and its voxel -> RAS affine."""
        return to_ras(self.array, self.affine)

    def to_nifti(self):
        """A nibabel Nifti1Image (float32, RAS affine in both qform and sform)."""
        import nibabel as nib

        data, affine = self.to_ras()
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        return img


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_ras(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convert a (D, H, W[, ...]) array with a (k, i, j) -> LPS affine to NIfTI (x, y, z) + RAS."""
    if array.ndim == 4:  # (T, D, H, W) -> (W, H, D, T)
        data = np.transpose(array, (3, 2, 1, 0))
    else:
        data = np.transpose(array, (2, 1, 0))
    perm = affine_lps[:, [2, 1, 0, 3]]  # columns for (j, i, k)
    return data, LPS_TO_RAS @ perm


# --------------------------------------------------------------------------------------------
# windowing
# --------------------------------------------------------------------------------------------
def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``[center - width/2, center + width/2]`` linearly to ``[0, 1]`` (clipped), float32."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = center - width / 2.0
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def window_of(volume: Volume, preset: str = "dicom") -> tuple[float, float]:
    """(center, width) of a preset name, or ``"dicom"`` for the series' own WindowCenter/Width.

    Without a window in the file, ``"dicom"`` falls back to the 0.5-99.5 percentile range.
    """
    if preset == "dicom":
        if volume.window is not None:
            return volume.window
        lo, hi = np.percentile(volume.array, [0.5, 99.5])
        return float((lo + hi) / 2), float(max(hi - lo, 1e-6))
    try:
        return WINDOW_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown window preset '{preset}' (known: dicom, {', '.join(WINDOW_PRESETS)})") from None


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def has_dicm_marker(path: Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM`` (cheap: reads 132 bytes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_sidecar_name(name: str) -> bool:
    """True for endings that are never DICOM (JSON sidecars, READMEs, NIfTI...)."""
    name = name.lower()
    return name.startswith(".") or name == "dicomdir" or name.endswith(SIDECAR_ENDINGS)


def read_file(path: str | Path, *, pixels: bool = True, full: bool = False) -> pydicom.Dataset:
    """Read one DICOM file; user errors become :class:`BadInputError` naming the file.

    Only :data:`READ_TAGS` are parsed unless ``full`` (e.g. to de-identify or re-write the file).
    ``pixels=False`` reads headers only: the pixel data value is skipped (its length is still
    checked against the file, so truncation shows here too).
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # headers only: large values (pixel data) are skipped, not read, but their length is known
            ds = pydicom.dcmread(
                path, defer_size=None if pixels else _DEFER_BYTES, specific_tags=None if full else READ_TAGS
            )
            _convert_all(ds, path)  # pydicom converts values lazily: corrupt ones fail here, not later
            _check_transfer_syntax(ds, path)
            _check_image(ds, path)
            check_size(
                path,
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                frames=int(_number(ds.get("NumberOfFrames"), 1)),
                channels=int(_number(ds.get("SamplesPerPixel"), 1)),
            )
    except InvalidDicomError:
        raise BadInputError("not a DICOM file (no 'DICM' marker after the 128-byte preamble)", path) from None
    except IsADirectoryError:
        raise BadInputError("is a folder, expected a DICOM file", path) from None
    except FileNotFoundError:
        raise BadInputError("no such file", path) from None
    except (
        EOFError,
        struct.error,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OSError,
        NotImplementedError,
        BytesLengthException,
        OverflowError,
        IndexError,
        StopIteration,
        RecursionError,
        MemoryError,
    ) as e:
        raise BadInputError(
            f"truncated or corrupt DICOM file ({type(e).__name__}: {e})".splitlines()[0][:300], path
        ) from None
    return ds


_PIXEL_TAGS = {_PIXEL_DATA, 0x7FE00008, 0x7FE00009}
_NUMERIC_TEXT = {"IS", "DS"}


def _convert_all(ds: pydicom.Dataset, path: Path) -> None:
    """Convert every parsed element now (pixel data excepted), so that an unknown VR or an IS/DS value
    such as '12345J' fails inside :func:`read_file`, not later in whoever reads the attribute."""
    for tag in list(ds.keys()):
        if tag in _PIXEL_TAGS:
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value or ():
                _convert_all(item, path)
        elif elem.VR in _NUMERIC_TEXT and elem.value not in (None, ""):
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            for v in values:
                try:
                    float(v)  # '12345J': pydicom only warns when it parses the element
                except (TypeError, ValueError):
                    name = elem.keyword or str(elem.tag)
                    raise BadInputError(
                        f"corrupt DICOM header: {elem.VR} value {str(v)[:40]!r} in {name}", path
                    ) from None


def _check_transfer_syntax(ds: pydicom.Dataset, path: Path) -> None:
    """A file meta without TransferSyntaxUID: the encoding pydicom found while reading, for native
    pixel data; encapsulated (compressed) pixel data cannot be decoded without it."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    raw = ds.get_item(_PIXEL_DATA)
    length = getattr(raw, "length", 0)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or length == 0xFFFFFFFF:
        raise BadInputError("DICOM file meta has no TransferSyntaxUID (cannot tell how the pixels are encoded)", path)
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )


def _check_image(ds: pydicom.Dataset, path: Path) -> None:
    """Raise :class:`BadInputError` unless ``ds`` holds an image whose pixel data is all there."""
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID")
        kind = f"SOP class {getattr(sop, 'name', sop)}" if sop else "no SOP class"
        raise BadInputError(f"DICOM file holds no image (no Rows/Columns; {kind}) or its header is truncated", path)
    raw = ds.get_item(_PIXEL_DATA)
    if raw is None:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return
        raise BadInputError("DICOM file has no pixel data (truncated, or not an image)", path)
    if not _compressed(ds):
        expected = _expected_bytes(ds)
        if getattr(raw, "value", None) is None and hasattr(raw, "value_tell"):  # deferred: bytes on disk
            got = max(0, min(int(raw.length), path.stat().st_size - int(raw.value_tell)))
        else:
            got = len(ds.PixelData or b"")
        if got < expected:
            raise BadInputError(f"truncated pixel data: expected {expected} bytes, got {got}", path)


def _compressed(ds) -> bool:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(ts is not None and ts.is_compressed)


def dicom_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """All files under ``folder`` (recursive, sorted): (candidate DICOM files, skipped sidecars)."""
    candidates, sidecars = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        (sidecars if is_sidecar_name(p.name) else candidates).append(p)
    return candidates, sidecars


# --------------------------------------------------------------------------------------------
# frames: one entry per 2D image, wherever it lives (file, multi-frame, mosaic tile)
# --------------------------------------------------------------------------------------------
@dataclass
class _Frame:
    file: int  # index into the series' file list
    frame: int  # frame (or mosaic tile) index within the file
    ipp: np.ndarray | None  # ImagePositionPatient of the top-left voxel
    iop: np.ndarray | None  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    intercept: float
    order: tuple  # tie-breaker for images sharing a position (time points)
    sop_uid: str
    mosaic: int = 0  # >0: number of slices in a Siemens mosaic; frame is the tile index


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n else None


def _first_item(ds, *path: str):
    """``ds.A[0].B[0]...`` or None."""
    cur = ds
    for kw in path:
        seq = getattr(cur, kw, None) if cur is not None else None
        if not seq:
            return None
        cur = seq[0]
    return cur


def _number(value, default: float) -> float:
    if isinstance(value, pydicom.multival.MultiValue) or isinstance(value, (list, tuple)):
        value = value[0] if len(value) else None
    try:
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _mosaic_geometry(ds) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(slices, first slice position, slice normal) of a Siemens mosaic, via nibabel's CSA parser."""
    if "MOSAIC" not in [str(t).upper() for t in ds.get("ImageType", [])]:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel warns that its DICOM wrappers are experimental
        from nibabel.nicom import dicomwrappers

        try:
            w = dicomwrappers.wrapper_from_data(ds)
            n = int(w.n_mosaic)
            return n, np.asarray(w.image_position, dtype=np.float64), np.asarray(w.slice_normal, dtype=np.float64)
        except Exception:  # noqa: BLE001 - a mosaic without a readable CSA header is read as 2D
            return None


def _frames_of(ds, file_index: int) -> list[_Frame]:
    """The 2D frames of one dataset with their geometry and rescale."""
    sop = str(ds.get("SOPInstanceUID", ""))
    inst = int(_number(ds.get("InstanceNumber"), 0))
    order0 = (
        _number(ds.get("TemporalPositionIdentifier"), 0),
        _number(ds.get("AcquisitionNumber"), 0),
        inst,
    )
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
    ps = _floats(ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or (), 2)
    pixel_spacing = (float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0)
    slope = _number(ds.get("RescaleSlope"), 1.0)
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    n_frames = int(_number(ds.get("NumberOfFrames"), 1))

    mosaic = _mosaic_geometry(ds)
    if mosaic is not None and iop is not None:
        n, first, normal = mosaic
        step = normal * _number(ds.get("SpacingBetweenSlices"), _number(ds.get("SliceThickness"), 1.0))
        return [
            _Frame(file_index, t, first + t * step, iop, pixel_spacing, slope, intercept, order0, sop, mosaic=n)
            for t in range(n)
        ]

    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if n_frames > 1 or per_frame:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        frames = []
        for f in range(n_frames):
            item = per_frame[f] if per_frame and f < len(per_frame) else None

            def group(*path, _item=item):
                return _first_item(_item, *path) or _first_item(shared, *path)

            pos = group("PlanePositionSequence")
            ori = group("PlaneOrientationSequence")
            meas = group("PixelMeasuresSequence")
            pvt = group("PixelValueTransformationSequence")
            fc = group("FrameContentSequence")
            f_ipp = _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None
            f_iop = _floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else iop
            f_ps = _floats(meas.get("PixelSpacing"), 2) if meas is not None else None
            temporal = _number(fc.get("TemporalPositionIndex"), 0) if fc is not None else 0
            frames.append(
                _Frame(
                    file_index,
                    f,
                    f_ipp if f_ipp is not None else (ipp if n_frames == 1 else None),
                    f_iop if f_iop is not None else iop,
                    (float(f_ps[0]), float(f_ps[1])) if f_ps is not None else pixel_spacing,
                    _number(pvt.get("RescaleSlope"), slope) if pvt is not None else slope,
                    _number(pvt.get("RescaleIntercept"), intercept) if pvt is not None else intercept,
                    (temporal, *order0, f),
                    sop,
                )
            )
        return frames
    return [_Frame(file_index, 0, ipp, iop, pixel_spacing, slope, intercept, (*order0, 0), sop)]


# --------------------------------------------------------------------------------------------
# geometry: order frames into (T, D) and build the affine
# --------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    order: list[list[int]]  # [t][d] -> index into frames
    spacing: tuple[float, float, float]
    affine: np.ndarray
    uneven: bool = False
    geometry_known: bool = True


def _layout(frames: list[_Frame], source: str, default_step: float) -> _Layout:
    """Order frames by position along the slice normal; repeated positions are time points."""
    f0 = frames[0]
    dr, dc = f0.pixel_spacing
    if f0.iop is None or any(fr.ipp is None for fr in frames):
        # No patient geometry (secondary capture, cine, plain X-ray): keep the file/frame order.
        order = sorted(range(len(frames)), key=lambda k: (frames[k].order, frames[k].file, frames[k].frame))
        affine = np.diag([default_step, dr, dc, 1.0])
        return _Layout([order], (default_step, dr, dc), affine, geometry_known=False)

    row, col = f0.iop[:3], f0.iop[3:]
    normal = np.cross(row, col)
    dist = np.array([float(np.dot(fr.ipp, normal)) for fr in frames])
    by_pos = np.argsort(dist, kind="stable")
    groups: list[list[int]] = []
    last = None
    for k in by_pos:
        if last is None or dist[k] - last > _POSITION_TOL:
            groups.append([])
        groups[-1].append(int(k))
        last = dist[k]
    counts = {len(g) for g in groups}
    if len(counts) != 1:
        raise BadInputError(
            f"inconsistent series: {len(groups)} slice positions with {min(counts)} to {max(counts)} images "
            "each; cannot form a volume (missing or duplicate files?)",
            source,
        )
    n_t = counts.pop()
    for g in groups:
        g.sort(key=lambda k: (frames[k].order, frames[k].file, frames[k].frame))
    order = [[g[t] for g in groups] for t in range(n_t)]

    first = frames[order[0][0]].ipp
    n_d = len(groups)
    if n_d > 1:
        centres = np.array([dist[g[0]] for g in groups])
        gaps = np.diff(centres)
        dz = round(float(np.median(gaps)), 6)
        uneven = bool(np.max(np.abs(gaps - dz)) > max(0.01 * dz, 1e-3))
        step = (frames[order[0][-1]].ipp - first) / (n_d - 1)  # follows gantry tilt, if any
    else:
        dz, uneven = default_step, False
        step = normal * dz
    affine = np.eye(4)
    affine[:3, 0] = step
    affine[:3, 1] = col * dr  # i (row index) moves along the column direction
    affine[:3, 2] = row * dc  # j (column index) moves along the row direction
    affine[:3, 3] = first
    return _Layout(order, (abs(dz), dr, dc), affine, uneven=uneven)


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------
def _expected_bytes(ds) -> int:
    frames = int(_number(ds.get("NumberOfFrames"), 1))
    spp = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsAllocated", 16))
    n = int(ds.Rows) * int(ds.Columns) * frames * spp
    return (n * bits + 7) // 8


def stored_pixels(ds, path: str | Path) -> np.ndarray:
    """Stored pixel values as (frames, rows, cols[, samples]); truncated or undecodable data -> error."""
    if "PixelData" in ds and not _compressed(ds):
        got, expected = len(ds.PixelData), _expected_bytes(ds)
        if got < expected:
            raise BadInputError(f"truncated pixel data: expected {expected} bytes, got {got}", path)
    fast = _native_array(ds)
    if fast is not None:
        return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except MemoryError:
        raise BadInputError("pixel data too large to decode in the memory available", path) from None
    except (
        ValueError,
        RuntimeError,
        NotImplementedError,
        AttributeError,
        TypeError,
        OSError,
        StopIteration,  # pydicom's frame generator: fewer fragments than NumberOfFrames
        IndexError,
        KeyError,
        struct.error,
    ) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadInputError(f"cannot decode pixel data ({ds.file_meta.TransferSyntaxUID.name}): {msg}", path) from None
    frames = int(_number(ds.get("NumberOfFrames"), 1))
    spp = int(ds.get("SamplesPerPixel", 1))
    if frames == 1:
        arr = arr[None]
    if spp > 1:  # colour: keep luminance so every series is one channel per voxel
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return arr


def _native_array(ds) -> np.ndarray | None:
    """Uncompressed little-endian grayscale of 8/16/32 bits: the bytes as an array, with unused high bits
    cleared (unsigned) or sign-extended (signed) by the same shifts pydicom's ``pixel_array`` uses,
    without its per-file overhead. None for anything else (pydicom decodes those)."""
    ts = ds.file_meta.TransferSyntaxUID
    bits = int(ds.get("BitsAllocated", 0))
    if (
        "PixelData" not in ds
        or ts.is_compressed
        or not ts.is_little_endian
        or int(ds.get("SamplesPerPixel", 1)) != 1
        or bits not in (8, 16, 32)
        or not 0 < int(ds.get("BitsStored", 0)) <= bits
    ):
        return None
    frames = int(_number(ds.get("NumberOfFrames"), 1))
    dtype = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation', 0)) else 'u'}{bits // 8}")
    count = frames * int(ds.Rows) * int(ds.Columns)
    arr = np.frombuffer(ds.PixelData, dtype=dtype, count=count).reshape(frames, int(ds.Rows), int(ds.Columns))
    shift = bits - int(ds.BitsStored)
    if shift:
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return arr


def _invert_monochrome1(values: np.ndarray, ds, slope: float, intercept: float) -> np.ndarray:
    """MONOCHROME1 (min is white): reflect over the rescaled stored-value range."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    a, b = lo * slope + intercept, hi * slope + intercept
    return np.float32(a + b) - values


def _unmosaic(image: np.ndarray, n: int) -> np.ndarray:
    """Siemens mosaic (R, C) -> (n, R/m, C/m) tiles, row-major, m = ceil(sqrt(n))."""
    m = int(np.ceil(np.sqrt(n)))
    r, c = image.shape[0] // m, image.shape[1] // m
    tiles = image[: m * r, : m * c].reshape(m, r, m, c).transpose(0, 2, 1, 3).reshape(m * m, r, c)
    return tiles[:n]


# --------------------------------------------------------------------------------------------
# series
# --------------------------------------------------------------------------------------------
@dataclass
class SeriesInfo:
    """A series found by :func:`scan` (headers only): enough to list it and to read it later."""

    study_uid: str
    series_uid: str
    files: list[str]
    modality: str
    series_description: str
    series_number: int | None
    patient_id: str
    shape: tuple[int, ...]  # as Volume.array will be
    spacing: tuple[float, float, float]
    is_2d: bool
    key: str  # series UID, with '#2', '#3' ... when one series splits into several volumes
    attributes: dict[str, str] = field(default_factory=dict)  # medlens.data.attributes.dicom_attributes


def _split_key(ds) -> tuple:
    """Images of one series that cannot share a volume: different size or orientation."""
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    return (
        int(ds.get("Rows", 0)),
        int(ds.get("Columns", 0)),
        tuple(np.round(iop, 3)) if iop is not None else None,
    )


def _group(datasets: Sequence[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    groups: dict[tuple, list] = defaultdict(list)
    for path, ds in datasets:
        groups[(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")), _split_key(ds))].append(
            (path, ds)
        )
    return list(groups.values())


def _assemble(members: Sequence[tuple[str, Any]], *, pixels: bool, source: str):
    """Frames + layout (+ array when ``pixels``) of one group of datasets."""
    frames: list[_Frame] = []
    for i, (_, ds) in enumerate(members):
        frames.extend(_frames_of(ds, i))
    ds0 = members[0][1]
    default_step = _number(ds0.get("SpacingBetweenSlices"), _number(ds0.get("SliceThickness"), 1.0)) or 1.0
    layout = _layout(frames, source, default_step)
    n_t, n_d = len(layout.order), len(layout.order[0])
    rows, cols = int(ds0.Rows), int(ds0.Columns)
    if frames[0].mosaic:
        m = int(np.ceil(np.sqrt(frames[0].mosaic)))
        rows, cols = rows // m, cols // m
    array = None
    if pixels:
        check_size(source, rows=rows, cols=cols, frames=n_d, channels=n_t)
        array = np.empty((n_t, n_d, rows, cols), dtype=np.float32)
        cache: dict[int, np.ndarray] = {}
        for t in range(n_t):
            for d in range(n_d):
                fr = frames[layout.order[t][d]]
                path, ds = members[fr.file]
                if fr.file not in cache:
                    stored = stored_pixels(ds, path)
                    if fr.mosaic:
                        stored = _unmosaic(stored[0], fr.mosaic)
                    if stored.shape[1:3] != (rows, cols):
                        raise BadInputError(
                            f"image size {stored.shape[1:3]} differs from the series' {(rows, cols)}", path
                        )
                    cache = {fr.file: stored}  # frames of one file are usually consecutive
                plane = cache[fr.file][fr.frame].astype(np.float32, copy=False)
                if fr.slope != 1.0 or fr.intercept != 0.0:
                    plane = plane * np.float32(fr.slope) + np.float32(fr.intercept)
                if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
                    plane = _invert_monochrome1(plane, ds, fr.slope, fr.intercept)
                array[t, d] = plane
        if n_t == 1:
            array = array[0]
    return frames, layout, array, (n_t, n_d, rows, cols)


def _is_2d(members, frames) -> bool:
    return len(frames) == 1 and len(members) == 1


def _info_fields(members, frames, layout, dims, key: str) -> dict:
    ds0 = members[0][1]
    n_t, n_d, rows, cols = dims
    shape = (n_d, rows, cols) if n_t == 1 else (n_t, n_d, rows, cols)
    sn = ds0.get("SeriesNumber")
    return dict(
        study_uid=str(ds0.get("StudyInstanceUID", "")),
        series_uid=str(ds0.get("SeriesInstanceUID", "")),
        modality=str(ds0.get("Modality", "") or "OT"),
        series_description=str(ds0.get("SeriesDescription", "") or ""),
        series_number=int(_number(sn, 0)) if sn not in (None, "") else None,
        patient_id=str(ds0.get("PatientID", "") or ""),
        shape=shape,
        spacing=tuple(float(s) for s in layout.spacing),
        is_2d=_is_2d(members, frames),
        key=key,
        attributes=dicom_attributes(ds0),
    )


def _keys(groups: list[list]) -> list[str]:
    seen: dict[str, int] = defaultdict(int)
    keys = []
    for g in groups:
        uid = str(g[0][1].get("SeriesInstanceUID", "")) or Path(g[0][0]).parent.name
        seen[uid] += 1
        keys.append(uid if seen[uid] == 1 else f"{uid}#{seen[uid]}")
    return keys


def _is_side_file(path: Path) -> bool:
    """Not DICOM and not claiming to be: no DICM marker and no DICOM ending (.dcm, .dicom, .ima)."""
    return not path.name.lower().endswith((".dcm", ".dicom", ".ima")) and not has_dicm_marker(path)


def scan(
    paths: Iterable[str | Path], *, skip_bad: bool = False, problems: list | None = None, side_files: bool = False
) -> list[SeriesInfo]:
    """Group DICOM files into series from their headers only (no pixel data read).

    Unreadable files raise :class:`BadInputError`, or with ``skip_bad`` are appended to
    ``problems`` as :class:`~medlens.data.sample.Problem`. With ``side_files`` (the files of a folder), a
    file that is not DICOM and does not claim to be (no DICM marker, no DICOM ending, no DICOM content:
    a README, a thumbnail) is passed over and listed in ``problems`` even without ``skip_bad``.
    """
    headers = []
    for p in paths:
        try:
            headers.append((str(p), read_file(p, pixels=False)))
        except BadInputError as e:
            if side_files and e.problem.startswith("not a DICOM file") and _is_side_file(Path(p)):
                if problems is not None:  # a README or a thumbnail: listed, passed over
                    problems.append(Problem(str(p), "side file, not DICOM; not used"))
                continue
            if not skip_bad:
                raise
            if problems is not None:
                problems.append(Problem(str(p), e.problem))
    groups = _group(headers)
    groups.sort(
        key=lambda g: (str(g[0][1].get("StudyInstanceUID", "")), _number(g[0][1].get("SeriesNumber"), 0), g[0][0])
    )
    out = []
    for g, key in zip(groups, _keys(groups)):
        try:
            frames, layout, _, dims = _assemble(g, pixels=False, source=str(Path(g[0][0]).parent))
        except BadInputError as e:
            if not skip_bad:
                raise
            if problems is not None:
                problems.append(Problem(e.path or g[0][0], e.problem))
            continue
        # files in volume order, one entry per file
        files = list(dict.fromkeys(g[frames[k].file][0] for row in layout.order for k in row))
        out.append(SeriesInfo(files=files, **_info_fields(g, frames, layout, dims, key)))
    return out


def read_series(files: Sequence[str | Path], *, source: str | Path | None = None) -> Volume:
    """Read the files of ONE series (any order) into a :class:`Volume`; each file is parsed once."""
    if not files:
        raise BadInputError("no DICOM files", source or ".")
    members = [(str(p), read_file(p)) for p in files]
    groups = _group(members)
    src = str(source or Path(members[0][0]).parent)
    if len(groups) > 1:
        raise BadInputError(f"the files hold {len(groups)} series or image stacks; read them one series at a time", src)
    return _volume(members, src)


@dataclass(frozen=True)
class SliceSource:
    """Where one image of a :class:`Volume` comes from: ``datasets[dataset]``, frame ``frame`` of it."""

    dataset: int
    frame: int
    mosaic: bool  # a tile of a Siemens mosaic (one stored frame holds many slices)


def slice_sources(datasets: Sequence[pydicom.Dataset], *, source: str = "DICOM sources") -> list[list[SliceSource]]:
    """``[t][d]``: the source of each image of the volume that :func:`read_series` builds from
    ``datasets`` (same grouping and slice order; headers only, for outputs that reference the sources)."""
    members = [(source, ds) for ds in datasets]
    if not members:
        raise BadInputError("no DICOM instances", source)
    groups = _group(members)
    if len(groups) > 1:
        raise BadInputError(f"the instances hold {len(groups)} series or image stacks; expected one", source)
    frames, layout, _, _ = _assemble(members, pixels=False, source=source)
    return [[SliceSource(frames[k].file, frames[k].frame, bool(frames[k].mosaic)) for k in row] for row in layout.order]


def _volume(members, src: str) -> Volume:
    from medlens.data.deid import phi_free_summary

    frames, layout, array, dims = _assemble(members, pixels=True, source=src)
    ds0 = members[0][1]
    info = _info_fields(members, frames, layout, dims, key=str(ds0.get("SeriesInstanceUID", "")))
    wc, ww = ds0.get("WindowCenter"), ds0.get("WindowWidth")
    window = (_number(wc, 0.0), _number(ww, 1.0)) if wc is not None and ww is not None and _number(ww, 0) > 0 else None
    flat = [k for row in layout.order for k in row]
    meta = phi_free_summary(ds0)
    meta.update(
        shape=list(info["shape"]),
        spacing=list(info["spacing"]),
        slices=dims[1],
        timepoints=dims[0],
        uneven_slice_spacing=layout.uneven,
        geometry_known=layout.geometry_known,
        monochrome1_inverted=str(ds0.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
    )
    return Volume(
        array=array,
        spacing=info["spacing"],
        affine=layout.affine,
        modality=info["modality"],
        series_description=info["series_description"],
        series_uid=info["series_uid"],
        study_uid=info["study_uid"],
        patient_id=info["patient_id"],
        sop_instance_uids=[frames[k].sop_uid for k in flat],
        files=[members[frames[k].file][0] for k in flat],
        window=window,
        is_2d=info["is_2d"],
        meta=meta,
    )


def read_dicom(path: str | Path) -> Volume:
    """Read "a DICOM file or series folder" into a :class:`Volume` (array + geometry).

    A folder must hold exactly one series (sidecar files such as .json/.txt are ignored);
    a single file gives a one-slice volume (``is_2d`` when it is a plain 2D image) or, for a
    multi-frame file, the whole volume.
    """
    path = Path(path)
    if path.is_dir():
        files, _ = dicom_files(path)
        if not files:
            raise BadInputError("no DICOM files in folder", path)
        return read_series(files, source=path)
    if not path.exists():
        raise BadInputError("no such file", path)
    return _volume([(str(path), read_file(path))], str(path))


def sample_affine(volume: Volume) -> np.ndarray:
    """The affine medlens samples carry: voxel (k, i, j) -> **RAS** mm (the NIfTI reader's convention)."""
    return LPS_TO_RAS @ volume.affine


def read_series_folder(path: str | Path) -> ImageData:
    """A DICOM file or series folder as :class:`~medlens.data.sample.ImageData` (for the image I/O module).

    Array (C, D, H, W) with C = 1 (or time points), or (1, H, W) for a 2D image; spacing follows the
    spatial axes; affine is :func:`sample_affine` (voxel -> RAS), also for 2D (slice index 0).
    """
    vol = read_dicom(path)
    if vol.is_2d:
        array, spacing = vol.array, vol.spacing[1:]
    else:
        array = vol.array if vol.array.ndim == 4 else vol.array[None]
        spacing = vol.spacing
    meta = dict(vol.meta, format="DICOM", series_description=vol.series_description, affine_space="RAS")
    return ImageData(array, spacing=tuple(spacing), affine=sample_affine(vol), modality=vol.modality, meta=meta)


def read_dicom_array(path: str | Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """(array, spacing, affine) of a DICOM file or series folder: (H, W) for a 2D image, else (D, H, W).

    For a 2D image ``spacing`` is (row, column) and ``affine`` is still the 4x4 (k, i, j) -> LPS one.
    """
    vol = read_dicom(path)
    if vol.is_2d:
        return vol.array[0], vol.spacing[1:], vol.affine
    return vol.array, vol.spacing, vol.affine
