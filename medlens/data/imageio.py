"""Read one image file into the pieces of a :class:`~medlens.data.sample.Sample`.

:func:`read_image_file` handles PNG/JPEG/TIFF/BMP (Pillow), NIfTI (nibabel) and DICOM files or
series folders (:mod:`medlens.data.dicom`). It returns :class:`ImageData`: a float32
channels-first array in native units (16-bit PNG values are kept, DICOM rescale slope and
intercept applied and MONOCHROME1 inverted by :mod:`medlens.data.dicom`, NIfTI scaling applied), with spacing, affine and modality when the format
knows them.

Conventions:

* 2D: (C, H, W). An RGB image whose three channels are all equal is gray: (1, H, W). An alpha
  channel is dropped; palette images are expanded to RGB (gray when the palette is gray).
* 3D: (C, D, H, W). NIfTI arrays, stored (x, y, z), are transposed to (z, y, x) so that volumes
  from every reader share DICOM's (slice, row, column) order; ``spacing`` is reversed to match
  and ``affine`` is permuted so that it still maps the (transposed) voxel index to RAS millimetres,
  the same convention as DICOM volumes from :func:`medlens.data.dicom.read_series_folder`. A 4D NIfTI (x, y, z, t) becomes (t, z, y, x): time points as channels.
  A multi-page TIFF becomes a volume (C, pages, H, W).
* Masks (:func:`read_mask_file`): an integer label map with the spatial shape of the image;
  palette PNGs keep their indices and a 0/255 binary mask becomes 0/1.

A file that is not an image raises ``BadInputError("not an image (...)")``; one that claims to be
an image but cannot be decoded raises ``BadInputError("corrupt image (...)")``.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from medlens.data.limits import check_size
from medlens.data.sample import ImageData
from medlens.errors import BadInputError, MedlensError

RASTER_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_EXTS = (".nii", ".nii.gz")
DICOM_EXTS = (".dcm", ".dicom", ".ima")
GRAY_MODES = {"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
CHANNEL_SAMPLE = 32  # images inspected by :func:`choose_channels`


def is_raster_name(name: str) -> bool:
    return name.lower().endswith(RASTER_EXTS)


def is_nifti_name(name: str) -> bool:
    return name.lower().endswith(NIFTI_EXTS)


def read_image_file(path: str | Path, *, channels: int | None = None) -> ImageData:
    """Read an image file (or a DICOM series folder). ``channels`` (1 or 3) converts a 2D image:
    colour to gray by ITU-R 601 luminance, gray to RGB by repetition (noted in ``meta["converted"]``)."""
    path = Path(path)
    if not path.exists():
        raise MedlensError("file not found", path)
    name = path.name.lower()
    if path.is_dir():
        data = _read_dicom(path)
    elif is_raster_name(name):
        data = _read_raster(path)
    elif is_nifti_name(name):
        data = _read_nifti(path)
    else:
        data = _read_dicom_or_raster(path)
    if channels is not None:
        data = _convert_channels(data, channels)
    return data


def read_raster_bytes(data: bytes, name: str) -> ImageData:
    """A PNG/JPEG/TIFF/BMP held in memory (an upload), decoded as :func:`read_image_file` decodes
    the file; ``name`` names it in errors."""
    import io

    return _read_raster(io.BytesIO(data), name=name)


def read_mask_file(path: str | Path) -> np.ndarray:
    """A label map (no channel axis): uint8 when values fit, else int32; 0/255 becomes 0/1."""
    path = Path(path)
    if is_raster_name(path.name):
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode in ("P", "PA"):
                    return _as_labels(np.asarray(im.convert("P") if im.mode == "PA" else im), path)
        except Exception:  # noqa: BLE001 - decoding errors are reported by read_image_file below
            pass
    arr = read_image_file(path).array
    if arr.shape[0] != 1:
        raise BadInputError(f"a mask must have one channel, this one has {arr.shape[0]}", path)
    return _as_labels(arr[0], path)


def read_label_map(path: str | Path, spatial_shape: tuple[int, ...], class_names: Sequence[str] = ()) -> np.ndarray:
    """:func:`read_mask_file`, checked against its image: the same spatial shape and, when
    ``class_names`` are declared (background first), no label value outside 0..len-1.
    Either failure is a one-line ``BadInputError`` naming the mask file."""
    return checked_label_map(read_mask_file(path), spatial_shape, class_names, path)


def checked_label_map(
    mask: np.ndarray, spatial_shape: tuple[int, ...], class_names: Sequence[str], path: str | Path
) -> np.ndarray:
    """The checks of :func:`read_label_map` on a label map read from ``path`` by other means (a DICOM SEG)."""
    if mask.shape != tuple(spatial_shape):
        raise BadInputError(f"mask shape {mask.shape} differs from image shape {tuple(spatial_shape)}", path)
    if class_names and mask.size and int(mask.max()) >= len(class_names):
        outside = sorted(int(v) for v in np.unique(mask[mask >= len(class_names)]))[:5]
        raise BadInputError(
            f"label value(s) {', '.join(map(str, outside))} outside the declared classes "
            f"0..{len(class_names) - 1} ({', '.join(class_names)})",
            path,
        )
    return mask


def choose_channels(paths: Sequence[str | Path], max_samples: int = CHANNEL_SAMPLE) -> int:
    """The channel count for a set of 2D images: 1 when every inspected image is gray-valued
    (gray mode, or RGB with equal channels), else 3. Up to ``max_samples`` images, evenly spaced
    over ``paths``, are inspected, so the choice is deterministic; unreadable ones are skipped here
    (they fail when loaded)."""
    if not paths:
        return 1
    step = max(1, len(paths) // max_samples)
    for p in list(paths)[::step][:max_samples]:
        try:
            data = _read_raster(Path(p)) if is_raster_name(str(p)) else read_image_file(p)
        except MedlensError:
            continue
        if data.array.shape[0] > 1:
            return 3
    return 1


# -- rasters ------------------------------------------------------------------------------------
def _read_raster(source: Path | BinaryIO, *, name: str | Path | None = None) -> ImageData:
    """One raster image from a file or a binary stream (errors name ``name``, else the file)."""
    from PIL import Image, UnidentifiedImageError

    path = name if name is not None or not isinstance(source, Path) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limits decide
            with Image.open(source) as im:
                fmt = im.format
                n_frames = getattr(im, "n_frames", 1) if fmt == "TIFF" else 1
                check_size(path, rows=im.height, cols=im.width, frames=n_frames, channels=len(im.getbands()))
                frames = []
                for i in range(n_frames):
                    im.seek(i)
                    frames.append(_pil_to_array(im))
    except UnidentifiedImageError:
        raise BadInputError("not an image (no PNG, JPEG, TIFF or BMP content)", path) from None
    except Image.DecompressionBombError as e:
        raise BadInputError(f"too large: {_reason(e)}", path) from None
    except MemoryError:
        raise BadInputError("too large to decode in the memory available", path) from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        struct.error,
        IndexError,
        KeyError,
        TypeError,
        ZeroDivisionError,
    ) as e:
        raise BadInputError(f"corrupt image ({_reason(e)})", path) from None
    if len(frames) > 1:
        if len({f.shape for f in frames}) > 1:
            raise BadInputError("corrupt image (TIFF pages differ in size)", path)
        arr = np.stack(frames, axis=1)  # (C, pages, H, W)
    else:
        arr = frames[0]
    return ImageData(_gray_if_equal(arr), meta={"format": fmt})


def _pil_to_array(im) -> np.ndarray:
    """One PIL frame as float32 (C, H, W) in native units."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
        mode = im.mode
    if mode == "LA":
        im = im.getchannel("L")
        mode = "L"
    if mode in GRAY_MODES:
        a = np.asarray(im)
        return a.astype(np.float32)[None]
    if mode != "RGB":  # RGBA (alpha dropped), CMYK, YCbCr, ...
        im = im.convert("RGB")
    return np.moveaxis(np.asarray(im).astype(np.float32), -1, 0)


def _gray_if_equal(arr: np.ndarray) -> np.ndarray:
    if arr.shape[0] == 3 and np.array_equal(arr[0], arr[1]) and np.array_equal(arr[0], arr[2]):
        return np.ascontiguousarray(arr[:1])
    return np.ascontiguousarray(arr)


def _convert_channels(data: ImageData, channels: int) -> ImageData:
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    arr = data.array
    if arr.shape[0] == channels or arr.shape[0] not in (1, 3):
        return data
    if channels == 3:
        data.array = np.repeat(arr, 3, axis=0)
        data.meta["converted"] = "gray->rgb"
    else:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape((3,) + (1,) * (arr.ndim - 1))
        data.array = (arr * weights).sum(axis=0, keepdims=True).astype(np.float32)
        data.meta["converted"] = "rgb->gray"
    return data


# -- NIfTI --------------------------------------------------------------------------------------
_NIFTI_PERM = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def _read_nifti(path: Path) -> ImageData:
    import zlib

    import nibabel as nib

    try:
        img = nib.load(str(path))
        _check_nifti_size(img, path)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except nib.filebasedimages.ImageFileError as e:
        raise BadInputError(f"not an image (not NIfTI: {_reason(e)})", path) from None
    except (nib.spatialimages.HeaderDataError, nib.spatialimages.ImageDataError) as e:
        raise BadInputError(f"corrupt NIfTI header ({_reason(e)})", path) from None
    except MemoryError:
        raise BadInputError("too large to decode in the memory available", path) from None
    except (OSError, EOFError, ValueError, zlib.error, TypeError, OverflowError, struct.error) as e:
        raise BadInputError(f"corrupt image ({_reason(e)})", path) from None
    zooms = tuple(float(str(np.float32(z))) for z in img.header.get_zooms())  # 0.7, not 0.69999998
    while data.ndim > 4 and data.shape[-1] == 1:
        data = data[..., 0]
    meta = {"format": "NIfTI", "axcodes": "".join(c or "?" for c in nib.aff2axcodes(img.affine)), "axis_order": "zyx"}
    if data.ndim == 2:
        return ImageData(np.ascontiguousarray(data.T[None]), spacing=zooms[:2][::-1], meta=meta)
    if data.ndim == 3:
        arr = data.transpose(2, 1, 0)[None]
    elif data.ndim == 4:
        arr = data.transpose(3, 2, 1, 0)
    else:
        raise BadInputError(f"unsupported NIfTI with {data.ndim} dimensions {data.shape}", path)
    affine = np.asarray(img.affine, dtype=np.float64) @ _NIFTI_PERM
    return ImageData(np.ascontiguousarray(arr), spacing=zooms[:3][::-1], affine=affine, meta=meta)


def _check_nifti_size(img, path: Path) -> None:
    """Refuse a NIfTI whose header declares too much, or more data than an uncompressed file holds."""
    shape = [int(s) for s in img.shape] + [1, 1]
    check_size(path, rows=shape[1], cols=shape[0], frames=shape[2], channels=int(np.prod(shape[3:])))
    if not str(path).lower().endswith(".gz"):
        needed = int(img.header.get_data_offset()) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        size = path.stat().st_size
        if size < needed:
            raise BadInputError(f"truncated NIfTI: the header declares {needed} bytes, the file holds {size}", path)


# -- DICOM --------------------------------------------------------------------------------------
def _read_dicom_or_raster(path: Path) -> ImageData:
    """A file without a raster or NIfTI ending: DICOM when it says so, else anything Pillow reads."""
    from medlens.data.dicom import has_dicm_marker

    if path.name.lower().endswith(DICOM_EXTS) or has_dicm_marker(path):
        return _read_dicom(path)
    try:
        return _read_raster(path)
    except BadInputError as e:
        if not e.problem.startswith("not an image"):
            raise
    try:
        return _read_dicom(path)  # DICOM without the 128-byte preamble
    except BadInputError:
        raise BadInputError("not an image (neither DICOM, NIfTI nor a PNG/JPEG/TIFF/BMP file)", path) from None


def _read_dicom(path: Path) -> ImageData:
    """A DICOM file or series folder through :mod:`medlens.data.dicom` (the one place for DICOM
    geometry, rescale and MONOCHROME1), with its errors phrased as "not an image"/"corrupt image"."""
    from medlens.data.dicom import read_series_folder

    try:
        return read_series_folder(path)
    except BadInputError as e:
        text = e.problem
        if text.startswith(("not an image", "corrupt image", "too large")):
            raise
        kind = (
            "not an image" if ("not a DICOM" in text or "no image" in text or "no DICOM" in text) else "corrupt image"
        )
        raise BadInputError(f"{kind} ({text})", e.path or path) from None


# -- helpers ------------------------------------------------------------------------------------
def _as_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded, atol=1e-3):
            raise BadInputError("a mask must hold integer labels (found fractional values)", path)
        arr = rounded
    if arr.size and arr.min() < 0:
        raise BadInputError("a mask must not hold negative labels", path)
    values = np.unique(arr)
    if len(values) == 2 and values[0] == 0 and values[1] == 255:
        arr = arr // 255
    return arr.astype(np.uint8 if (arr.max() if arr.size else 0) <= 255 else np.int32)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]
