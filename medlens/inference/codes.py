"""Standard codes for what a model finds: class name -> coded concept (SNOMED CT, LOINC, RadLex, DICOM).

DICOM SR and FHIR name a finding by a code a PACS or an EHR understands, not by a class name.
:func:`concepts_for` gives the concept of each class of a model; training records the result in
the model card (``codes``), so a bundle carries its own mapping, and ``medlens train --codes
FILE.json`` replaces entries of it (:func:`read_overrides`).

Sources, in order: SNOMED CT codes that the DICOM standard's context groups use, read from
pydicom's code dictionary (``pydicom.sr.codedict.codes``); a short table of codes checked by hand
against the publisher (:data:`_CHECKED`, each with its source). Class names are normalised first
(case, ``_``/``-``, a numeric folder prefix such as ``0_normal``, "tumour", plural "s",
synonyms such as ``notumor``), and a dataset whose class
names are bare numbers (RetinaMNIST's diabetic retinopathy grades "0".."4") is recognised by its
source. A class without a verified code gets a code in the private scheme ``99MEDLENS``, marked
``fallback: true``: never an invented standard code. The table is hand-written (no library maps
dataset class names to clinical codes).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medlens.errors import MedlensError

PRIVATE_SCHEME = "99MEDLENS"
FHIR_SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "RADLEX": "http://radlex.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    PRIVATE_SCHEME: "urn:medlens:finding",
}
"""DICOM coding scheme designator -> FHIR code system URI: the schemes a mapping may use."""


class Concept(BaseModel):
    """A coded concept as DICOM writes it (scheme designator, code value, code meaning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: str = Field(min_length=1)
    code: str = Field(min_length=1, max_length=64)
    meaning: str = Field(min_length=1, max_length=64)
    fallback: bool = False

    @property
    def fhir_system(self) -> str:
        return FHIR_SYSTEMS[self.scheme]


# Normalised class name -> keyword of pydicom.sr.codedict.codes.SCT (DICOM PS3.16 context groups).
_DICOM_SCT = {
    "normal": "Normal",
    "abnormal": "Abnormal",
    "nodule": "Nodule",
    "mass": "Mass",
    "lesion": "Lesion",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "PleuralEffusion",
    "pneumothorax": "Pneumothorax",
    "pulmonary edema": "PulmonaryEdema",
    "fibrosis": "Fibrosis",
    "hyperplasia": "Hyperplasia",
    "benign": "Benign",
    "malignant": "Malignant",
    "aneurysm": "Aneurysm",
    "melanoma": "MalignantMelanoma",
    # segmentation structures
    "vessel": "BloodVessel",
    "blood vessel": "BloodVessel",
    "hippocampus": "Hippocampus",
}

# Codes checked against their publisher (not in pydicom's dictionary).
_CHECKED = {
    # SNOMED International editorial guide, "Pneumonia vs. Pneumonitis": 233604007 |Pneumonia (disorder)|
    "pneumonia": Concept(scheme="SCT", code="233604007", meaning="Pneumonia"),
    # SNOMED CT International Edition release notes (Oct 2025): 393566004 |Meningioma (disorder)|
    "meningioma": Concept(scheme="SCT", code="393566004", meaning="Meningioma"),
    # Human Phenotype Ontology HP:0002893 Pituitary adenoma, cross-reference SNOMEDCT_US:254956000
    "pituitary tumor": Concept(scheme="SCT", code="254956000", meaning="Pituitary adenoma"),
    # LOINC answer list LL2117-1 "Eye.PX-diabetic retinopathy" (answers of LOINC 71490-7 / 71491-5)
    "no apparent retinopathy": Concept(scheme="LN", code="LA18643-9", meaning="No apparent retinopathy"),
    "mild non proliferative retinopathy": Concept(
        scheme="LN", code="LA18644-7", meaning="Mild non-proliferative retinopathy"
    ),
    "moderate non proliferative retinopathy": Concept(
        scheme="LN", code="LA18645-4", meaning="Moderate non-proliferative retinopathy"
    ),
    "severe non proliferative retinopathy": Concept(
        scheme="LN", code="LA18646-2", meaning="Severe non-proliferative retinopathy"
    ),
    "proliferative retinopathy": Concept(scheme="LN", code="LA18648-8", meaning="Proliferative retinopathy"),
}

_SYNONYMS = {
    "no finding": "normal",  # NIH ChestX-ray14
    "normal benign": "benign",  # BreastMNIST "normal, benign"
    "effusion": "pleural effusion",  # NIH ChestX-ray14 / ChestMNIST
    "edema": "pulmonary edema",
    "pituitary": "pituitary tumor",  # Brain Tumor MRI dataset
    "pituitary adenoma": "pituitary tumor",
    "dr 0": "no apparent retinopathy",
    "dr 1": "mild non proliferative retinopathy",
    "dr 2": "moderate non proliferative retinopathy",
    "dr 3": "severe non proliferative retinopathy",
    "dr 4": "proliferative retinopathy",
    "no dr": "no apparent retinopathy",
    "proliferative dr": "proliferative retinopathy",
}

# Datasets whose class names only mean something in context, recognised by a word in the source.
_DATASET_NAMES = {
    "retinamnist": {str(grade): f"dr {grade}" for grade in range(5)},  # ICDR diabetic retinopathy grade
}


def normalise(name: str) -> str:
    """``"No_Tumour"`` -> ``"no tumor"``: lower case, words split on ``_ - , /``, a leading index
    dropped (``1_abnormal``), "tumour" -> "tumor", the synonyms medlens knows resolved (``notumor``)."""
    text = re.sub(r"[\s_\-,/()]+", " ", str(name).lower()).strip()
    text = re.sub(r"^\d+ (?=[a-z])", "", text)  # folder names such as "0_normal", "1_abnormal"
    text = re.sub(r"\btumour\b", "tumor", text)
    text = re.sub(r"^no(?=(tumor|lesion|finding)\b)", "no ", text)
    text = re.sub(r"\bnon proliferative\b|\bnonproliferative\b", "non proliferative", text)
    return _SYNONYMS.get(text, text)


@cache
def _dicom_sct(keyword: str) -> Concept:
    from pydicom.sr.codedict import codes

    code = getattr(codes.SCT, keyword)
    return Concept(scheme="SCT", code=code.value, meaning=code.meaning[:1].upper() + code.meaning[1:])


def _known(key: str) -> Concept | None:
    if key in _CHECKED:
        return _CHECKED[key]
    if key in _DICOM_SCT:
        return _dicom_sct(_DICOM_SCT[key])
    return None


def private_concept(name: str) -> Concept:
    """The declared fallback: ``name`` coded in the private scheme ``99MEDLENS`` (code value <= 16 characters)."""
    code = re.sub(r"[^A-Z0-9]+", "_", normalise(name).upper()).strip("_") or "CLASS"
    if len(code) > 16:
        code = f"{code[:7]}_{hashlib.sha1(code.encode()).hexdigest()[:8].upper()}"
    return Concept(scheme=PRIVATE_SCHEME, code=code, meaning=str(name)[:64] or code, fallback=True)


def lookup(name: str, source: str | None = None) -> Concept:
    """The standard concept for class ``name`` of a model trained on ``source``, else the declared fallback."""
    key = str(name).strip().lower()
    for dataset, names in _DATASET_NAMES.items():
        if source and dataset in source.lower() and key in names:
            key = names[key]
    key = normalise(key)
    concept = _known(key) or (_known(key[:-1]) if key.endswith("s") else None)
    return concept or private_concept(name)


def concepts_for(
    class_names: Iterable[str], source: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Concept]:
    """The concept of each class (``overrides`` first, then :func:`lookup`); an override naming a
    class the model does not have is a one-line error."""
    names = [str(c) for c in class_names]
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise MedlensError(f"codes given for class(es) the model does not have: {', '.join(unknown)}")
    return {c: _concept(overrides[c], c) if c in overrides else lookup(c, source) for c in names}


def _concept(value: Any, name: str) -> Concept:
    try:
        concept = value if isinstance(value, Concept) else Concept.model_validate(value)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "entry"
        raise MedlensError(f"code for class '{name}': {where}: {err['msg']}") from None
    if concept.scheme not in FHIR_SYSTEMS:
        raise MedlensError(
            f"code for class '{name}': unknown scheme '{concept.scheme}' (use one of {', '.join(FHIR_SYSTEMS)})"
        )
    return concept


def read_overrides(path: str | Path) -> dict[str, dict[str, Any]]:
    """A codes file: ``{"class name": {"scheme": "SCT", "code": "...", "meaning": "..."}}``, checked
    entry by entry; returns plain JSON (what the training configuration records)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedlensError("no such codes file", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MedlensError(f"codes file is not readable JSON ({e})".splitlines()[0], path) from None
    if not isinstance(data, dict):
        raise MedlensError('codes file must map class names to {"scheme", "code", "meaning"}', path)
    try:
        return {str(k): _concept(v, str(k)).model_dump() for k, v in data.items()}
    except MedlensError as e:
        raise MedlensError(e.problem, path) from None
