"""Measurements of a segmentation label map: each segment's size and, for vessels, the vessel fraction.

One record per measurement (:class:`SegmentMeasurement`, a plain dict so that a prediction's JSON
holds it as it is): the segment (label value and class name), the quantity, its value and UCUM
unit, and the voxel count it was computed from. DICOM SR, FHIR and JSON render these records.

* size: a 3D label map gives the **volume** (voxel count x voxel volume, mm3), a 2D one the
  **area** (pixel count x pixel area, mm2). Without a spacing (PNG, JPEG) the size is the count
  itself, in UCUM's annotation units ``{voxel}`` / ``{pixel}``: never a guessed millimetre.
* **vessel fraction** (segments named "vessel"/"blood vessel"): vessel voxels inside the field of
  view over the field of view's voxels, in %; without a field-of-view mask the whole image is
  the field of view (``region`` says which).

Counting voxels is numpy; no library measures a label map against its spacing in these units, so
this module is written by hand.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypedDict

import numpy as np
from pydicom.sr.codedict import codes

from medlens.data.masks import label_map
from medlens.errors import MedlensError
from medlens.inference.codes import PRIVATE_SCHEME, Concept, normalise

VESSEL_CLASSES = frozenset({"vessel", "blood vessel"})
"""Class names (normalised, singular) that get a vessel fraction."""


def _sct(keyword: str) -> Concept:
    code = getattr(codes.SCT, keyword)
    return Concept(scheme="SCT", code=code.value, meaning=code.meaning)


QUANTITIES = {
    "volume": _sct("Volume"),
    "area": _sct("Area"),
    # DICOM and SNOMED CT have no concept for it: declared private, as the SR's uncertainty
    "vessel fraction": Concept(scheme=PRIVATE_SCHEME, code="VESSELFRAC", meaning="Vessel fraction of field of view"),
}
"""Quantity name -> its coded concept (SR concept name, FHIR Observation code)."""

UNITS = {
    "mm3": "cubic millimeter",
    "mm2": "square millimeter",
    "{voxel}": "voxels",
    "{pixel}": "pixels",
    "%": "percent",
}
"""UCUM code -> its display: the units a measurement may have."""


class SegmentMeasurement(TypedDict, total=False):
    segment: int  # label value in the label map (1..K), the SEG's segment number
    label: str  # class name of the segment
    quantity: str  # a key of QUANTITIES
    value: float
    unit: str  # a key of UNITS (UCUM)
    voxels: int  # voxels (pixels) counted: the segment's, or its voxels inside the field of view
    region: str  # vessel fraction only: "field of view" or "whole image"


def is_vessel(class_name: str) -> bool:
    """Whether ``class_name`` names vessels ("vessel", "Vessels", "blood_vessel")."""
    name = normalise(class_name)
    return name in VESSEL_CLASSES or name.removesuffix("s") in VESSEL_CLASSES


def measure_segments(
    labels,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    fov=None,
) -> list[SegmentMeasurement]:
    """The measurements of every segment 1..K of ``labels`` (a 2D or 3D label map), in label order.

    ``class_names``: the model's classes, background first (``["background", "anterior", ...]``).
    ``spacing``: mm per axis of ``labels`` (None: unknown, sizes are voxel counts). ``fov``: a
    boolean field-of-view mask of the same shape (vessel fraction inside it). A segment with no
    voxels is measured as 0, not left out.
    """
    array = np.asarray(labels)
    if array.ndim not in (2, 3):
        raise MedlensError(f"a label map to measure is 2D or 3D, got shape {tuple(array.shape)}")
    if len(class_names) < 2:
        raise MedlensError("a segmentation has background and at least one class to measure")
    array = label_map(array, array.shape, len(class_names) - 1)
    if spacing is not None and (len(spacing) != array.ndim or not all(float(s) > 0 for s in spacing)):
        raise MedlensError(f"spacing {tuple(spacing)} does not fit a {array.ndim}D label map (positive mm per axis)")
    inside = np.ones(array.shape, bool) if fov is None else np.asarray(fov)
    if inside.shape != array.shape or inside.dtype != bool:
        raise MedlensError(
            f"the field-of-view mask must be boolean of shape {array.shape}, got {inside.dtype} {inside.shape}"
        )
    fov_voxels = int(inside.sum())
    if fov_voxels == 0:
        raise MedlensError("the field-of-view mask is empty: no vessel fraction can be computed")
    quantity = "volume" if array.ndim == 3 else "area"
    if spacing is None:
        unit, voxel_size = ("{voxel}" if array.ndim == 3 else "{pixel}"), 1.0
    else:
        unit, voxel_size = ("mm3" if array.ndim == 3 else "mm2"), float(np.prod([float(s) for s in spacing]))
    counts = np.bincount(array.ravel(), minlength=len(class_names))
    out: list[SegmentMeasurement] = []
    for number, name in enumerate(class_names[1:], start=1):
        voxels = int(counts[number])
        out.append(
            SegmentMeasurement(
                segment=number, label=name, quantity=quantity, value=voxels * voxel_size, unit=unit, voxels=voxels
            )
        )
        if is_vessel(name):
            in_fov = int(np.count_nonzero((array == number) & inside))
            out.append(
                SegmentMeasurement(
                    segment=number,
                    label=name,
                    quantity="vessel fraction",
                    value=100.0 * in_fov / fov_voxels,
                    unit="%",
                    voxels=in_fov,
                    region="whole image" if fov is None else "field of view",
                )
            )
    return out


def describe_measurement(m: Mapping[str, Any]) -> str:
    """``"anterior: volume 1234.5 mm3"``: one measurement as text (FHIR conclusion, logs)."""
    return f"{m['label']}: {m['quantity']} {m['value']:.6g} {m['unit']}"
