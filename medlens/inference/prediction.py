"""The prediction record: what a model said about one input, in one place.

Every output format (JSON, DICOM SR, FHIR DiagnosticReport, the audit log, the web page) is
rendered from a :class:`Prediction`, so they cannot disagree. A segmentation (``task``
"segmentation", ``class_names`` background first) carries its ``measurements``
(:func:`medlens.inference.measurements.measure_segments`); its label map goes to the DICOM SEG
and the NIfTI mask.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import numpy as np

from medlens.inference.codes import Concept, lookup


@dataclass
class SourceInfo:
    """Where the input came from. Identifiers here are already pseudonymized where they name a patient."""

    kind: str  # "dicom", "nifti", "png", "jpeg", ...
    input_sha256: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uids: list[str] = field(default_factory=list)
    patient_pseudonym: str | None = None
    modality: str | None = None


@dataclass
class Prediction:
    model: str
    model_sha256: str
    task: str
    class_names: list[str]
    probabilities: dict[str, float]  # calibrated (temperature-scaled): what the answer reports
    finding: str  # the predicted class, or positive labels joined by "|" for multi-label
    confidence: float  # probability of the finding (top class)
    uncertainty: float
    uncertainty_method: str
    abstain: bool  # referred to a person: out of the model's scope, or too uncertain
    abstain_reason: str | None
    source: SourceInfo
    out_of_scope: list[dict[str, str]] = field(
        default_factory=list
    )  # [{check, reason}]: not what the model was made for
    scope_checked: bool = False  # False: the model has no out-of-distribution guard (trained before it)
    raw_probabilities: dict[str, float] = field(default_factory=dict)  # the model's own, as predictions_*.csv
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)  # class name -> standard code (the card's)
    measurements: list[dict[str, Any]] = field(default_factory=list)  # segmentation: SegmentMeasurement records
    heatmap: np.ndarray | None = None  # spatial map in [0,1], shape of the model input (no channel)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def concept(self, label: str) -> Concept:
        """The standard code of class ``label`` (the card's; the table's for records made before codes)."""
        return Concept(**self.codes[label]) if label in self.codes else lookup(label)

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary (the heatmap is served separately as a PNG)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "heatmap"}
        d["has_heatmap"] = self.heatmap is not None
        if not self.measurements:  # a classification's JSON stays as it was
            d.pop("measurements")
        return d


def _plain(value: Any) -> Any:
    """``dataclasses.asdict``'s copy without its deepcopy of every leaf: dataclasses become dicts,
    dicts, lists and tuples are copied, other values (str, numbers, None) are kept."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value
