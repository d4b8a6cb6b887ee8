"""The attributes (sex, age, view, site, ...) of a run's sample ids, read from the run's source.

Predictions files hold sample ids only; the attributes live on the source's records
(:attr:`medlens.data.sample.Record.attributes`). :func:`attribute_columns` joins them by id, for
subgroups and shortcut checks. Names are resolved with
:func:`medlens.data.attributes.attribute_key` (``PatientSex`` = ``sex``); an unknown name is a
one-line error listing the attributes the source has.
"""

from __future__ import annotations

from typing import Any, Sequence

from medlens.data.attributes import attribute_key
from medlens.errors import MedlensError


def available_attributes(dataset: Any) -> list[str]:
    """The attribute names any record of ``dataset`` has, sorted."""
    return sorted({name for r in dataset.records for name in r.attributes})


def resolve_columns(dataset: Any, names: Sequence[str]) -> list[str]:
    """``names`` as the source spells them (DICOM keywords accepted); unknown -> MedlensError."""
    have = available_attributes(dataset)
    out = []
    for name in names:
        key = attribute_key(name)
        if key not in have:
            listing = ", ".join(have) if have else "none (only CSV manifest columns and DICOM headers carry them)"
            raise MedlensError(f"the source has no attribute '{name}'; its attributes: {listing}")
        if key not in out:
            out.append(key)
    return out


def attribute_columns(dataset: Any, ids: Sequence[str], columns: Sequence[str]) -> dict[str, list[str | None]]:
    """``{column: [value or None per id]}`` for ``ids`` of ``dataset`` (columns already resolved)."""
    records = []
    for i in ids:
        try:
            records.append(dataset.records[dataset.index_of(i)])
        except KeyError:
            raise MedlensError(f"the run's sample '{i}' is not in its source: was the source changed?") from None
    return {c: [r.attributes.get(c) for r in records] for c in columns}
