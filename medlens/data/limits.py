"""Size limits checked from file headers before any pixel is decoded.

A 15 KB compressed DICOM can declare 65535 x 65535 pixels and a 500 KB ``.nii.gz`` 800³ voxels;
decoding them first and checking after is how a tiny upload takes gigabytes. Every reader
(:mod:`medlens.data.imageio`, :mod:`medlens.data.dicom`, the MedMNIST npz reader) asks
:func:`check_size` with what the header declares, and refuses with a one-line
:class:`~medlens.errors.BadInputError` before decoding.

Defaults fit medical images (a 2D plane up to 2^26 pixels, e.g. 8192²; a whole image up to 2^28
values, e.g. 512 x 512 x 1024 CT; up to 4096 frames or slices; up to 1 GiB decoded). Each is
overridable by an environment variable, read on every check:

=============================  ======================  ==========================================
variable                       default                 what it bounds
=============================  ======================  ==========================================
``MEDLENS_MAX_PIXELS``         67108864 (2^26)         rows x columns of one 2D plane
``MEDLENS_MAX_VOXELS``         268435456 (2^28)        all values of one image (channels included)
``MEDLENS_MAX_FRAMES``         4096                    frames, slices, pages or time points
``MEDLENS_MAX_BYTES``          1073741824 (1 GiB)      bytes the decoded image (or npz member) takes
=============================  ======================  ==========================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medlens.errors import BadInputError

ENV = {
    "max_pixels": "MEDLENS_MAX_PIXELS",
    "max_voxels": "MEDLENS_MAX_VOXELS",
    "max_frames": "MEDLENS_MAX_FRAMES",
    "max_bytes": "MEDLENS_MAX_BYTES",
}


@dataclass(frozen=True)
class Limits:
    """The budget one image may declare."""

    max_pixels: int = 2**26
    max_voxels: int = 2**28
    max_frames: int = 4096
    max_bytes: int = 2**30

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, each overridden by its environment variable when set."""
        values = {}
        for name, var in ENV.items():
            text = os.environ.get(var, "").strip()
            if text:
                try:
                    values[name] = int(float(text))
                except ValueError:
                    raise BadInputError(f"${var} must be a number, not '{text}'") from None
        return cls(**values)


def check_size(
    path: str | Path | None,
    *,
    rows: int,
    cols: int,
    frames: int = 1,
    channels: int = 1,
    bytes_per_value: int = 4,
    limits: Limits | None = None,
) -> None:
    """Refuse an image whose declared size is outside the budget (``bytes_per_value``: in memory,
    4 for the float32 arrays medlens hands on). Negative or zero sizes are corrupt headers."""
    lim = limits or Limits.from_env()
    if min(rows, cols, frames, channels) < 1:
        raise BadInputError(f"corrupt header: declares size {rows}x{cols}, {frames} frame(s)", path)
    what = f"{rows} rows x {cols} columns" + (f" x {frames} frames" if frames > 1 else "")
    what += f" x {channels} channels" if channels > 1 else ""
    if rows * cols > lim.max_pixels:
        _refuse(path, f"declares {what}: {rows * cols} pixels per plane", lim.max_pixels, "MEDLENS_MAX_PIXELS")
    if frames > lim.max_frames:
        _refuse(path, f"declares {what}: {frames} frames", lim.max_frames, "MEDLENS_MAX_FRAMES")
    values = rows * cols * frames * channels
    if values > lim.max_voxels:
        _refuse(path, f"declares {what}: {values} values", lim.max_voxels, "MEDLENS_MAX_VOXELS")
    if values * bytes_per_value > lim.max_bytes:
        _refuse(path, f"declares {what}: {values * bytes_per_value} bytes", lim.max_bytes, "MEDLENS_MAX_BYTES")


def check_bytes(path: str | Path | None, n_bytes: int, what: str = "data") -> None:
    """Refuse ``n_bytes`` of declared data over ``MEDLENS_MAX_BYTES`` (e.g. an npz member)."""
    lim = Limits.from_env()
    if n_bytes > lim.max_bytes:
        _refuse(path, f"{what} declares {n_bytes} bytes", lim.max_bytes, "MEDLENS_MAX_BYTES")


def _refuse(path, text: str, limit: int, var: str) -> None:
    raise BadInputError(f"too large: {text}, over the limit of {limit} (set ${var} to allow more)", path)
