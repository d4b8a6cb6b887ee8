"""De-identification of DICOM datasets (DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile).

Library choice. ``dicognito`` (installed) was evaluated against a hand-written pass over the
standard's attribute list. It fits for what is hard to get right by hand and is deterministic
when seeded: every UID (except class and transfer-syntax UIDs, in the file meta and in nested
sequences too) is remapped through a keyed hash of the original value, so files of one
series stay grouped and the same key gives the same UIDs on every run; person names, IDs,
addresses, institution and equipment identifiers are replaced; dates and times are shifted by
one key-derived offset (so intervals are kept). What dicognito does **not** do, and this module
adds on top:

* private tags are removed (Annex E: "X" for private attributes without the Retain Safe
  Private option), overlays and curves (groups 60xx / 50xx) too;
* free-text and demographic attributes of the Annex E table that dicognito keeps
  (descriptions, comments, patient age / size / weight / sex, protocol name ...) are removed or,
  for type-2 "Z" attributes, emptied;
* PatientID becomes a keyed hash (:func:`pseudonym`) so the same patient gets the same
  pseudonym for the same key (linkable across studies only by whoever holds the key);
  PatientBirthDate is emptied rather than shifted;
* PatientIdentityRemoved = YES, DeidentificationMethod and DeidentificationMethodCodeSequence
  (113100 Basic profile, 113107 Retain Longitudinal Temporal Information with Modified Dates)
  are always written (dicognito writes YES only when BurnedInAnnotation is NO).

Pixel data are not touched: burned-in annotations cannot be removed here, and a dataset that
declares ``BurnedInAnnotation = YES`` is flagged in DeidentificationMethod.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from functools import lru_cache
from typing import Any

import pydicom
from pydicom.dataset import Dataset

# Annex E attributes that dicognito leaves in place: removed ("X") ...
REMOVE = (
    "AdditionalPatientHistory",
    "AdmissionID",
    "AdmittingDiagnosesCodeSequence",
    "AdmittingDiagnosesDescription",
    "Allergies",
    "Arbitrary",
    "AuthorObserverSequence",
    "BranchOfService",
    "CommentsOnThePerformedProcedureStep",
    "ContributionDescription",
    "CountryOfResidence",
    "CurrentPatientLocation",
    "CustodialOrganizationSequence",
    "DataSetTrailingPadding",
    "DerivationDescription",
    "DeviceSerialNumber",
    "DischargeDiagnosisDescription",
    "EthnicGroup",
    "FrameComments",
    "IdentifyingComments",
    "ImageComments",
    "ImagePresentationComments",
    "ImagingServiceRequestComments",
    "InterpretationDiagnosisDescription",
    "InterpretationText",
    "IssuerOfAdmissionID",
    "IssuerOfPatientID",
    "MedicalAlerts",
    "MedicalRecordLocator",
    "MilitaryRank",
    "ModifiedAttributesSequence",
    "Occupation",
    "OriginalAttributesSequence",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientAddress",
    "PatientAge",
    "PatientBirthName",
    "PatientBirthTime",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "PatientMotherBirthName",
    "PatientReligiousPreference",
    "PatientSize",
    "PatientState",
    "PatientTelecomInformation",
    "PatientTelephoneNumbers",
    "PatientWeight",
    "PerformedProcedureStepDescription",
    "PregnancyStatus",
    "ProtocolName",
    "ReasonForStudy",
    "ReasonForTheRequestedProcedure",
    "ReferencedPatientPhotoSequence",
    "RequestAttributesSequence",
    "RequestedProcedureDescription",
    "RequestingService",
    "ResponsibleOrganization",
    "ResponsiblePerson",
    "ResultsComments",
    "ScheduledProcedureStepDescription",
    "SmokingStatus",
    "SpecialNeeds",
    "StudyComments",
    "TextComments",
    "VisitComments",
)
# ... descriptions, removed unless ``keep_descriptions`` (they are free text and may hold names) ...
DESCRIPTIONS = (
    "StudyDescription",
    "SeriesDescription",
    "AcquisitionComments",
    "AcquisitionDeviceProcessingDescription",
)
# ... and type-2 attributes emptied ("Z").
EMPTY = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName")

METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
)


def pseudonym(value: str, key: str) -> str:
    """A keyed hash of ``value`` (HMAC-SHA256, 16 hex digits): stable for one key, not reversible."""
    if not key:
        raise ValueError("a non-empty key is needed for a pseudonym")
    return hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:16]


@lru_cache(maxsize=8)
def _anonymizer(key: str):
    from dicognito.anonymizer import Anonymizer

    return Anonymizer(seed=key)


def _strip(ds: Dataset, keep_descriptions: bool) -> None:
    """Remove private, overlay/curve and free-text attributes, recursively through sequences."""
    ds.remove_private_tags()
    names = REMOVE if keep_descriptions else REMOVE + DESCRIPTIONS
    for kw in names:
        if kw in ds:
            delattr(ds, kw)
    for tag in [t for t in ds.keys() if 0x5000 <= t.group <= 0x50FF or 0x6000 <= t.group <= 0x60FF]:
        del ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _strip(item, keep_descriptions)


def deidentify(ds: Dataset, *, key: str, keep_descriptions: bool = False) -> Dataset:
    """A de-identified copy of ``ds`` (the input is not modified; pixel data are unchanged).

    The same ``key`` maps the same UIDs, IDs and names to the same replacements, so a series
    de-identified file by file stays one series. ``keep_descriptions`` keeps Study/Series
    descriptions (useful for research listings; they are free text, check them first).
    """
    if not key:
        raise ValueError("deidentify needs a non-empty key")
    out = copy.deepcopy(ds)
    original_pid = str(ds.get("PatientID", "") or "")
    _strip(out, keep_descriptions)
    _anonymizer(key).anonymize(out)
    for kw in EMPTY:
        if kw in out:
            setattr(out, kw, "")
    out.PatientID = pseudonym(original_pid, key) if original_pid else ""
    out.PatientIdentityRemoved = "YES"
    method = ["medlens PS3.15 Annex E basic profile", "dicognito UIDs names IDs dates", "private tags removed"]
    if keep_descriptions:
        method.append("descriptions kept")
    if str(out.get("BurnedInAnnotation", "")).upper() == "YES":
        method.append("WARNING burned-in annotation not removed")
    out.DeidentificationMethod = method
    codes = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        codes.append(item)
    out.DeidentificationMethodCodeSequence = codes
    return out


def phi_free_summary(ds: Dataset, *, key: str = "medlens-summary") -> dict[str, Any]:
    """Facts about a dataset that are safe to log: modality, sizes, encoding; UIDs only as keyed hashes."""

    def num(kw: str):
        v = ds.get(kw)
        if v in (None, ""):
            return None
        try:
            return [float(x) for x in v] if isinstance(v, pydicom.multival.MultiValue) else float(v)
        except (TypeError, ValueError):
            return None

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    sop_class = ds.get("SOPClassUID")
    return {
        "modality": str(ds.get("Modality", "") or "") or None,
        "sop_class": getattr(sop_class, "name", None) if sop_class else None,
        "transfer_syntax": ts.name if ts else None,
        "manufacturer": str(ds.get("Manufacturer", "") or "") or None,
        "rows": int(ds.Rows) if "Rows" in ds else None,
        "columns": int(ds.Columns) if "Columns" in ds else None,
        "frames": int(num("NumberOfFrames") or 1),
        "bits_stored": int(ds.BitsStored) if "BitsStored" in ds else None,
        "photometric": str(ds.get("PhotometricInterpretation", "") or "") or None,
        "pixel_spacing": num("PixelSpacing"),
        "slice_thickness": num("SliceThickness"),
        "rescale_slope": num("RescaleSlope"),
        "rescale_intercept": num("RescaleIntercept"),
        "body_part": str(ds.get("BodyPartExamined", "") or "") or None,
        "study_uid_hash": pseudonym(str(ds.StudyInstanceUID), key) if "StudyInstanceUID" in ds else None,
        "series_uid_hash": pseudonym(str(ds.SeriesInstanceUID), key) if "SeriesInstanceUID" in ds else None,
        "sop_uid_hash": pseudonym(str(ds.SOPInstanceUID), key) if "SOPInstanceUID" in ds else None,
    }
