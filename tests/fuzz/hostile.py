"""Hostile files, tiny on disk: headers that declare huge images, and headers that lie.

Used by the tests of :mod:`medlens.data.limits` and by ``benchmarks/bench_fuzz.py``. Compressed
streams of zeros are built from one deflate block repeated after full flushes, so an 800³
``.nii.gz`` takes milliseconds to write and a few hundred KB on disk.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

_CHUNK = 1 << 20


def deflate_zeros(n: int, *, wbits: int) -> bytes:
    """A deflate stream (zlib ``wbits`` = 15, gzip = 31) of ``n`` zero bytes, without compressing them all."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(bytes(_CHUNK)) + co.flush(zlib.Z_FULL_FLUSH)
    co2 = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = co2.compress(bytes(n % _CHUNK)) + co2.flush()
    body = block * (n // _CHUNK) + tail
    check = 1 if wbits == 15 else 0
    zero = bytes(_CHUNK)
    for _ in range(n // _CHUNK):
        check = zlib.adler32(zero, check) if wbits == 15 else zlib.crc32(zero, check)
    rest = bytes(n % _CHUNK)
    check = zlib.adler32(rest, check) if wbits == 15 else zlib.crc32(rest, check)
    if wbits == 15:
        return b"\x78\xda" + body + struct.pack(">I", check)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", check, n & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = 12500, *, rgb: bool = True) -> Path:
    """A valid all-black PNG of ``side`` x ``side`` pixels (455 KB for 12500² RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2 if rgb else 0, 0, 0, 0)
    raw = side * (1 + side * (3 if rgb else 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", deflate_zeros(raw, wbits=15)) + chunk(b"IEND", b"")
    )
    return path


def nifti_header(shape: tuple[int, ...], *, datatype: int = 2, bitpix: int = 8) -> bytes:
    """A NIfTI-1 single-file header (352 bytes, vox_offset 352) declaring ``shape`` (uint8 by default)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr["dim"] = [len(shape), *shape] + [1] * (7 - len(shape))
    hdr["datatype"], hdr["bitpix"] = datatype, bitpix
    hdr["pixdim"] = [1.0] * 8
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\x00" * 4


def nifti_lying(path: Path, voxels_per_side: int = 1000) -> Path:
    """A 360-byte ``.nii`` whose header claims ``voxels_per_side``³ voxels (10⁹ by default)."""
    path.write_bytes(nifti_header((voxels_per_side,) * 3) + bytes(4))
    return path


def nifti_gz_bomb(path: Path, side: int = 800) -> Path:
    """A valid ``.nii.gz`` of ``side``³ uint8 zeros (about 500 KB for 800³): the header is one gzip
    member, the zeros a second one."""
    path.write_bytes(gzip.compress(nifti_header((side,) * 3), mtime=0) + deflate_zeros(side**3, wbits=31))
    return path


def _dicom(rows: int, cols: int, *, frames: int = 1, ts=ExplicitVRLittleEndian, pixel_data: bytes = b"") -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixel_data
    return ds


def _rle_frame(n_bytes: int) -> bytes:
    """One RLE Lossless frame of ``n_bytes`` zero bytes (one segment of replicate runs)."""
    runs = b"\x81\x00" * (n_bytes // 128)  # -127: repeat the next byte 128 times
    if n_bytes % 128:
        runs += bytes([257 - (n_bytes % 128)]) + b"\x00" if n_bytes % 128 > 1 else b"\x00\x00"
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    return header + runs


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def rle_dicom_bomb(path: Path, side: int = 65535) -> Path:
    """A ~15 KB RLE Lossless DICOM declaring ``side`` x ``side`` pixels (its one frame is short)."""
    ds = _dicom(side, side, ts=RLELossless, pixel_data=encapsulate([_rle_frame(1 << 20)]))
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def multiframe_dicom(path: Path, frames: int = 100_000, side: int = 8) -> Path:
    """An RLE DICOM declaring ``frames`` frames of ``side``² pixels but holding only one."""
    ds = _dicom(side, side, frames=frames, ts=RLELossless, pixel_data=encapsulate([_rle_frame(side * side)]))
    ds["PixelData"].VR = "OB"
    return save(ds, path)


def small_dicom(path: Path, side: int = 16) -> Path:
    """A valid uncompressed 8-bit DICOM image."""
    pixels = (np.arange(side * side) % 251).astype(np.uint8).tobytes()
    return save(_dicom(side, side, pixel_data=pixels), path)


def dicom_bytes_with(path: Path, old: bytes, new: bytes) -> bytes:
    """The bytes of the DICOM file at ``path`` with its first ``old`` replaced by ``new`` (same length)."""
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    return data.replace(old, new, 1)


def dicom_with_is(path: Path, value: str = "12345J") -> Path:
    """A DICOM file whose InstanceNumber (IS) holds ``value``."""
    ds = pydicom.dcmread(small_dicom(path))
    ds.InstanceNumber = "1"
    save(ds, path)
    data = path.read_bytes()
    tag = b"\x20\x00\x13\x00IS"
    i = data.index(tag)
    body = value.encode() + (b" " if len(value) % 2 else b"")
    path.write_bytes(data[:i] + tag + struct.pack("<H", len(body)) + body + data[i + 8 + 2 :])
    return path


def dicom_without_ts(path: Path) -> Path:
    """A DICOM file whose file meta lacks TransferSyntaxUID."""
    ds = pydicom.dcmread(small_dicom(path))
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


def dicom_with_vr(path: Path, vr: bytes = b"Uj") -> Path:
    """A DICOM file whose Modality element carries the unknown VR ``vr``."""
    small_dicom(path)
    path.write_bytes(dicom_bytes_with(path, b"\x08\x00\x60\x00CS", b"\x08\x00\x60\x00" + vr))
    return path
