"""Segmentation masks in a DICOM volume's geometry: checking a label map and writing it as NIfTI.

A mask is a label map in the voxel order of the :class:`~medlens.data.dicom.Volume` the DICOM
reader builds (``(D, H, W)``: slice, row, column; ``(H, W)`` is accepted for a 2D image):
0 is background, 1..K are segments. :func:`label_map` refuses, in one line, a mask of another
shape, a mask that is not integer, and label values outside 1..K. :func:`mask_nifti` writes it
with the affine ``medlens convert --to nifti`` gives the same series (:func:`~medlens.data.dicom.
sample_affine` through :func:`~medlens.data.synth_writer.nifti_image`), so image and mask overlay
voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.data.dicom import Volume, sample_affine
from medlens.data.synth_writer import nifti_image
from medlens.errors import MedlensError


def label_map(mask, shape: tuple[int, ...], n_labels: int | None = None) -> np.ndarray:
    """``mask`` as a uint8/uint16 ``(D, H, W)`` label map for a volume of ``shape`` (D, H, W).

    ``n_labels``: the declared segments 1..n_labels (None: any value up to 65535).
    """
    array = np.asarray(mask)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise MedlensError(f"the mask must hold integer labels (0 background, 1..K segments), got {array.dtype}")
    if len(shape) == 3 and shape[0] == 1 and array.shape == shape[1:]:
        array = array[None]  # (H, W) for a one-slice (2D) volume
    if array.shape != tuple(shape):
        raise MedlensError(
            f"the mask's shape {tuple(array.shape)} does not match the source volume {tuple(shape)} (slices, rows, columns)"
        )
    top = 65535 if n_labels is None else n_labels
    outside = np.unique(array[(array < 0) | (array > top)])
    if outside.size:
        values = ", ".join(str(v) for v in outside[:5]) + (" ..." if outside.size > 5 else "")
        declared = f"the declared segments 1..{n_labels}" if n_labels is not None else "0..65535"
        raise MedlensError(f"the mask holds label values {values} outside {declared}")
    return array.astype(np.uint8 if top <= 255 else np.uint16)


def mask_nifti(mask, volume: Volume, n_labels: int | None = None):
    """The mask as a nibabel image with the same affine (and 2D/3D form) as the series' NIfTI conversion."""
    labels = label_map(mask, volume.array.shape[-3:], n_labels)
    if volume.is_2d:
        return nifti_image(labels[0], None, volume.spacing[1:])
    return nifti_image(labels, sample_affine(volume), volume.spacing)


def write_mask_nifti(mask, volume: Volume, path: str | Path, n_labels: int | None = None) -> Path:
    """Write :func:`mask_nifti` to ``path`` (``.nii`` or ``.nii.gz``)."""
    import nibabel as nib

    path = Path(path)
    nib.save(mask_nifti(mask, volume, n_labels), path)
    return path
