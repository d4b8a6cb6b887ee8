"""A mutation corpus generated at run time: small valid files of every format medlens reads, and
seeded mutations of them (bit flips, truncations, byte runs, header fields set to edge values).

:func:`base_files` gives the seeds; :func:`mutants` yields ``(name, suffix, bytes)``. Used by the
fuzz tests (a few hundred inputs) and by ``benchmarks/bench_fuzz.py`` (thousands).
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib
from typing import Iterator

import numpy as np

EDGE_U16 = (0, 1, 2, 3, 255, 256, 4095, 4097, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
EDGE_I16 = (-1, 0, 1, 3, 7, 8, 255, 0x7FFF, -0x8000)
EDGE_U32 = (0, 1, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _image(side: int = 24, rgb: bool = False) -> np.ndarray:
    y, x = np.mgrid[:side, :side]
    gray = ((x * 7 + y * 3) % 256).astype(np.uint8)
    return np.stack([gray, gray[::-1], gray[:, ::-1]], axis=-1) if rgb else gray


def _pil_bytes(arr: np.ndarray, fmt: str, **kwargs) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _tiff_pages() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    pages = [Image.fromarray(_image(16)) for _ in range(3)]
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def _dicom(compress: bool = False, frames: int = 1) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(compress), str(frames)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["fuzz-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["fuzz-series", str(frames)])
    ds.Modality, ds.PatientID, ds.SeriesNumber, ds.InstanceNumber = "DX", "FUZZ", 1, 1
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.Rows = ds.Columns = 24
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    arr = np.stack([_image(24).astype(np.uint16) * 8] * frames)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = (arr if frames > 1 else arr[0]).tobytes()
    if compress:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _nifti(gz: bool) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.stack([_image(16)] * 6, axis=-1).astype(np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        **{
            f"{s}_images": rng.integers(0, 255, (n, 12, 12), dtype=np.uint8)
            for s, n in (("train", 6), ("val", 2), ("test", 2))
        },
        **{
            f"{s}_labels": (np.arange(n) % 2).astype(np.uint8)[:, None]
            for s, n in (("train", 6), ("val", 2), ("test", 2))
        },
    )
    return buf.getvalue()


def base_files() -> dict[str, tuple[str, bytes]]:
    """name -> (file ending, bytes) of small valid files medlens reads."""
    return {
        "png": (".png", _pil_bytes(_image(), "PNG")),
        "png_rgb": (".png", _pil_bytes(_image(rgb=True), "PNG")),
        "png16": (".png", _pil_bytes(_image().astype(np.uint16) * 200, "PNG")),
        "jpeg": (".jpg", _pil_bytes(_image(rgb=True), "JPEG", quality=90)),
        "tiff": (".tif", _tiff_pages()),
        "bmp": (".bmp", _pil_bytes(_image(), "BMP")),
        "dicom": (".dcm", _dicom()),
        "dicom_rle": (".dcm", _dicom(compress=True)),
        "dicom_frames": (".dcm", _dicom(frames=3)),
        "nifti": (".nii", _nifti(False)),
        "nifti_gz": (".nii.gz", _nifti(True)),
        "npz": (".npz", _npz()),
    }


# -- mutations ----------------------------------------------------------------------------------
def flip_bits(data: bytes, rng: random.Random, span: int | None = None) -> bytes:
    out = bytearray(data)
    if not out:
        return bytes(out)
    limit = min(len(out), span or len(out))
    for _ in range(rng.randint(1, 16)):
        j = rng.randrange(limit)
        out[j] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(len(data), 1))]


def splice(data: bytes, rng: random.Random) -> bytes:
    """Insert, delete or overwrite a run of bytes (random or repeated)."""
    if not data:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    i = rng.randrange(len(data))
    run = bytes([rng.choice((0, 0xFF, 0x7F, 0x80, rng.getrandbits(8)))]) * rng.randint(1, 32)
    op = rng.choice(("insert", "delete", "overwrite"))
    if op == "insert":
        return data[:i] + run + data[i:]
    if op == "delete":
        return data[:i] + data[i + len(run) :]
    return data[:i] + run + data[i + len(run) :]


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(data):
        return data
    try:
        packed = struct.pack(fmt, value)
    except struct.error:
        packed = struct.pack(fmt.replace("h", "H").replace("i", "I"), value & (256**size - 1))
    return data[:offset] + packed + data[offset + size :]


_DICOM_FIELDS = {  # tag (group, element) as it appears in explicit VR little endian, value format
    "Rows": (b"\x28\x00\x10\x00US", "<H", EDGE_U16),
    "Columns": (b"\x28\x00\x11\x00US", "<H", EDGE_U16),
    "BitsAllocated": (b"\x28\x00\x00\x01US", "<H", (0, 1, 7, 8, 12, 16, 24, 32, 64, 0xFFFF)),
    "BitsStored": (b"\x28\x00\x01\x01US", "<H", (0, 1, 8, 12, 16, 17, 33, 0xFFFF)),
    "SamplesPerPixel": (b"\x28\x00\x02\x00US", "<H", (0, 2, 3, 4, 0xFFFF)),
    "PixelRepresentation": (b"\x28\x00\x03\x01US", "<H", (0, 1, 2, 0xFFFF)),
    "PixelDataLength": (b"\xe0\x7f\x10\x00OW\x00\x00", "<I", EDGE_U32),
    "PixelDataLengthOB": (b"\xe0\x7f\x10\x00OB\x00\x00", "<I", EDGE_U32),
}
_DICOM_TEXT = {  # text elements: (tag + VR, replacement values of the same even length or any)
    "NumberOfFrames": (b"\x28\x00\x08\x00IS", (b"0 ", b"-1", b"99999999", b"1e9 ", b"12345J", b"  ", b"3.5 ")),
    "InstanceNumber": (b"\x20\x00\x13\x00IS", (b"12345J", b"x ", b"nan ", b"1e400 ")),
    "PixelSpacing": (b"\x28\x00\x30\x00DS", (b"0\\0 ", b"-1\\1", b"nan\\nan ", b"abc ", b"1e308\\1e308 ")),
    "Orientation": (b"\x20\x00\x37\x00DS", (b"0\\0\\0\\0\\0\\0 ", b"x ", b"1\\0\\0\\1\\0\\0 ")),
    "Rescale": (b"\x28\x00\x53\x10DS", (b"0 ", b"1e38", b"inf ", b"-nan")),
    "Photometric": (b"\x28\x00\x04\x00CS", (b"YBR_FULL", b"PALETTE COLOR ", b"MONOCHROME1 ", b"RGB ", b"XX")),
    "TransferSyntax": (b"\x02\x00\x10\x00UI", (b"1.2.840.10008.1.2.5\x00", b"1.2.840.10008.1.2.4.50", b"1.2.3\x00")),
}
_VRS = (b"Uj", b"\x00\x00", b"SQ", b"UN", b"OB", b"US", b"DS", b"zz")


def dicom_field(data: bytes, rng: random.Random) -> bytes:
    """Set one known header field to an edge value, or swap one element's VR for another (or junk)."""
    roll = rng.random()
    if roll < 0.45:
        tag, fmt, values = _DICOM_FIELDS[rng.choice(list(_DICOM_FIELDS))]
        i = data.find(tag)
        return data if i < 0 else _put(data, i + len(tag) + (2 if fmt == "<H" else 0), fmt, rng.choice(values))
    if roll < 0.85:
        tag, values = _DICOM_TEXT[rng.choice(list(_DICOM_TEXT))]
        i = data.find(tag)
        if i < 0:
            return data
        old_len = struct.unpack("<H", data[i + 6 : i + 8])[0]
        new = rng.choice(values)
        new = new + b" " * (len(new) % 2)
        return data[:i] + tag + struct.pack("<H", len(new)) + new + data[i + 8 + old_len :]
    starts = [m for m in range(132, len(data) - 6) if data[m + 4 : m + 6].isalpha() and data[m + 4 : m + 6].isupper()]
    if not starts:
        return data
    m = rng.choice(starts)
    return data[: m + 4] + rng.choice(_VRS) + data[m + 6 :]


def png_field(data: bytes, rng: random.Random) -> bytes:
    """Rewrite IHDR (width, height, depth, colour type) with a valid CRC, so that only the values lie."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return flip_bits(data, rng, 64)
    w, h, depth, colour = struct.unpack(">IIBB", data[16:26])
    field = rng.choice(("w", "h", "depth", "colour", "both"))
    big = rng.choice((0, 1, 65535, 100_000, 2**31 - 1, 0xFFFFFFFF))
    if field in ("w", "both"):
        w = big
    if field in ("h", "both"):
        h = big
    if field == "depth":
        depth = rng.choice((0, 1, 2, 3, 4, 16, 255))
    if field == "colour":
        colour = rng.choice((1, 2, 3, 4, 5, 6, 7, 255))
    body = struct.pack(">IIBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, depth, colour) + data[26:29]
    return data[:16] + body + struct.pack(">I", zlib.crc32(b"IHDR" + body)) + data[33:]


def nifti_field(data: bytes, rng: random.Random) -> bytes:
    """Set dim[], datatype, bitpix, vox_offset or scl_slope of a NIfTI-1 header (re-gzipped if it was)."""
    gz = data[:2] == b"\x1f\x8b"
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            return data
    field = rng.choice(("dim", "dim", "datatype", "bitpix", "vox_offset", "scl_slope", "sizeof_hdr"))
    if field == "dim":
        data = _put(data, 40 + 2 * rng.randrange(8), "<h", rng.choice(EDGE_I16 + (1000, 4096, 10000)))
    elif field == "datatype":
        data = _put(data, 70, "<h", rng.choice((0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 511, 1536, 2304, 7, -1)))
    elif field == "bitpix":
        data = _put(data, 72, "<h", rng.choice((0, 1, 8, 16, 64, -8)))
    elif field == "vox_offset":
        data = _put(data, 108, "<f", rng.choice((0.0, 1.0, 347.0, 1e9, -352.0, float("nan"))))
    elif field == "scl_slope":
        data = _put(data, 112, "<f", rng.choice((0.0, float("inf"), float("nan"), 1e38)))
    else:
        data = _put(data, 0, "<i", rng.choice((0, 540, 0x5C010000)))
    return gzip.compress(data, mtime=0) if gz else data


def npz_field(data: bytes, rng: random.Random) -> bytes:
    """Rewrite an npy header's shape or dtype inside the npz (stored members) or flip zip header bits."""
    i = data.find(b"'shape': (")
    if i < 0 or rng.random() < 0.3:
        return flip_bits(data, rng, 200)
    j = data.find(b")", i)
    shape = rng.choice((b"99999999, 12, 12", b"6, 65535, 65535", b"-1, 12, 12", b"0,", b"6, 12, 12, 12, 12"))
    return data[: i + 10] + shape + data[j:]


FIELDS = {"dicom": dicom_field, "png": png_field, "nifti": nifti_field, "npz": npz_field}


def mutate(name: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutation of ``data`` (a base file named ``name``): (kind, bytes)."""
    family = next((f for f in FIELDS if name.startswith(f)), None)
    kinds = ["flip", "flip_header", "truncate", "splice", "flip_truncate"] + (["field"] * 3 if family else [])
    kind = rng.choice(kinds)
    if kind == "flip":
        return kind, flip_bits(data, rng)
    if kind == "flip_header":
        return kind, flip_bits(data, rng, 512)
    if kind == "truncate":
        return kind, truncate(data, rng)
    if kind == "splice":
        return kind, splice(data, rng)
    if kind == "flip_truncate":
        return kind, truncate(flip_bits(data, rng), rng)
    out = FIELDS[family](data, rng)
    if rng.random() < 0.3:
        out = FIELDS[family](out, rng)
    return kind, out


def mutants(
    n: int, seed: int = 0, bases: dict[str, tuple[str, bytes]] | None = None
) -> Iterator[tuple[str, str, bytes]]:
    """``n`` seeded mutants as (name, file ending, bytes), cycling over the base files."""
    rng = random.Random(seed)
    bases = bases or base_files()
    names = sorted(bases)
    for i in range(n):
        name = names[i % len(names)]
        suffix, data = bases[name]
        kind, out = mutate(name, data, rng)
        yield f"{i:05d}-{name}-{kind}", suffix, out
