"""Source headers as the DICOM outputs (SR, Secondary Capture) need them.

De-identified or minimal DICOM often lacks Type 2 attributes of the Patient and General Study
modules (birth date, sex, accession number, referring physician, study ID...). A derived object
must still carry them, present and empty (DICOM's "unknown"). :func:`complete_source` gives a
copy of a source with each absent one added empty, and refuses, in one line, a source without
the Type 1 UIDs an output has to reference.
"""

from __future__ import annotations

import pydicom

from medlens.errors import MedlensError

TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def complete_source(ds: pydicom.Dataset) -> pydicom.Dataset:
    """``ds``, or a shallow copy of it with every absent Type 2 patient/study attribute present and empty."""
    absent = [kw for kw in REQUIRED if not ds.get(kw)]
    if absent:
        raise MedlensError(f"the source DICOM has no {', '.join(absent)}: a derived object cannot reference it")
    missing = [kw for kw in TYPE2_PATIENT_STUDY if kw not in ds]
    if not missing:
        return ds
    out = pydicom.Dataset()  # a new element dict (the elements themselves are shared): ds is not changed
    out.update(ds)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    for kw in missing:
        setattr(out, kw, "")
    return out
