"""Patient and acquisition attributes of a sample, for subgroups and shortcut checks.

Each :class:`~medlens.data.sample.Record` carries ``attributes``: plain strings by name, for
example ``{"sex": "F", "age": "56", "view_position": "PA"}``. They come from

* a CSV manifest: every column beyond ``path,label,patient_id,split,mask`` (empty cells are
  missing, not stored);
* DICOM headers of a series' first file: :data:`DICOM_ATTRIBUTES` (PatientAge's ``056Y`` becomes
  years, ``018M`` / ``003W`` / ``010D`` fractions of a year).

Names are the CSV's column names as written; the DICOM keywords map to the lower-case names of
:data:`DICOM_ATTRIBUTES`, and :func:`attribute_key` accepts either spelling (``PatientSex`` or
``sex``). Folder, NIfTI and MedMNIST sources carry none.

:func:`numeric_values` decides whether an attribute is numeric (every present value parses);
:func:`attribute_distribution` summarises them for ``medlens data info``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

DICOM_ATTRIBUTES = {
    "PatientSex": "sex",
    "PatientAge": "age",
    "ViewPosition": "view_position",
    "Manufacturer": "manufacturer",
    "BodyPartExamined": "body_part",
}
"""DICOM keyword -> attribute name."""

_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def dicom_age_years(value: Any) -> str | None:
    """A DICOM Age String (``056Y``, ``018M``, ``003W``, ``010D``) in years as text; None if malformed."""
    match = _AGE.match(str(value or "").strip().upper())
    if not match:
        return None
    years = int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    return f"{years:g}" if match.group(2) == "Y" else f"{years:.2f}"


def dicom_attributes(ds: Any) -> dict[str, str]:
    """The :data:`DICOM_ATTRIBUTES` a pydicom dataset holds (non-empty values only)."""
    out: dict[str, str] = {}
    for keyword, name in DICOM_ATTRIBUTES.items():
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        text = dicom_age_years(value) if keyword == "PatientAge" else str(value).strip()
        if text:
            out[name] = text
    return out


def attribute_key(name: str) -> str:
    """``PatientSex`` -> ``sex``; any other name as given (a CSV column)."""
    return DICOM_ATTRIBUTES.get(name.strip(), name.strip())


MISSING = "missing"
"""The group of records without a value for an attribute (shown, never dropped)."""


def numeric_values(values: Iterable[str | None]) -> np.ndarray | None:
    """The non-missing values as floats when every one parses as a number, else None."""
    present = [v for v in values if v not in (None, "")]
    try:
        out = np.array([float(v) for v in present], dtype=np.float64)
    except ValueError:
        return None
    return out if len(out) and np.isfinite(out).all() else None


def attribute_distribution(records: Sequence[Any], top: int = 10) -> dict[str, dict[str, Any]]:
    """Per attribute name of ``records``: ``n_missing`` and either ``numeric`` {min, median, max}
    or ``counts`` of the ``top`` most frequent values (the rest summed under ``"(other)"``)."""
    names = sorted({name for r in records for name in r.attributes})
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [r.attributes.get(name) for r in records]
        present = [v for v in values if v not in (None, "")]
        entry: dict[str, Any] = {"n_missing": len(values) - len(present)}
        numbers = numeric_values(present)
        if numbers is not None:
            entry["numeric"] = {
                "min": float(numbers.min()),
                "median": float(np.median(numbers)),
                "max": float(numbers.max()),
            }
        else:
            common = Counter(present).most_common()
            entry["counts"] = dict(common[:top])
            if len(common) > top:
                entry["counts"]["(other)"] = sum(c for _, c in common[top:])
        out[name] = entry
    return out
