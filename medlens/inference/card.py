"""The model card (``models/MODEL/model.json``): one typed description of a model bundle.

:class:`ModelCard` says what the model is (architecture and its arguments, task, classes,
channels, input size, modality, ``codes``: the standard code of each class,
:mod:`medlens.inference.codes`), what it was made for (``ood``: the out-of-distribution guard,
:mod:`medlens.inference.ood`), how an input reaches it (``preprocessing``), how its output
becomes an answer (``temperature``, ``thresholds``, ``abstention``) and where it came from
(training provenance). Training writes the card once (:func:`write_card`); the evaluation stage
records calibration, thresholds and abstention chosen on validation as a declared update
(:meth:`ModelCard.with_update`), which appends to ``updates`` who changed which fields and when.
:func:`write_card` is the only writer of model.json.

Reading (:func:`read_card`) validates every field: a foreign or damaged file gives one line
naming the field, never a KeyError. Cards without ``schema_version`` (runs made before schema 1)
hold the same keys and load as schema 1; a newer schema than this medlens knows is refused with
a line saying to upgrade medlens. Optional fields added within schema 1 (``codes``) are filled
on reading an older card (``codes`` from the table of :mod:`medlens.inference.codes`).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medlens.errors import MedlensError
from medlens.inference.codes import Concept, concepts_for
from medlens.runs import write_json

SCHEMA_VERSION = 1
TASKS = ("binary", "multiclass", "ordinal", "multilabel", "segmentation")
UPDATABLE = frozenset({"temperature", "thresholds", "thresholds_chosen_on", "calibration", "abstention"})
"""Fields a later stage may change (through :meth:`ModelCard.with_update`); everything else is training's."""


class ModelCard(BaseModel):
    """model.json, typed. Field names are the JSON keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    # what the model is
    name: str
    model: str = Field(description="registry name of the architecture")
    kind: Literal["deep", "classical"]
    dims: Literal[2, 3]
    task: Literal["binary", "multiclass", "ordinal", "multilabel", "segmentation"]
    class_names: list[str] = Field(min_length=1)
    num_outputs: int = Field(ge=1)
    in_channels: int = Field(ge=1)
    img_size: int | list[int] | None = None
    patch_size: list[int] | None = Field(default=None, description="segmentation: the training patch (sliding window)")
    mirror_axes: list[int] | None = Field(
        default=None, description="segmentation: spatial axes flipped at inference and averaged (chosen on validation)"
    )
    modality: str | None = None
    codes: dict[str, Concept] = Field(default_factory=dict, description="class name -> standard code")
    weights_file: str
    cam_layer: str | None = None
    mc_dropout: Any = None
    # how an input reaches it
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    # how its output becomes an answer (chosen on validation by the evaluation stage)
    temperature: float = Field(default=1.0, gt=0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    thresholds_chosen_on: str | None = None
    calibration: dict[str, Any] | None = None
    abstention: dict[str, Any] | None = None
    # what it was made for (the out-of-distribution guard fitted by training; None: trained before it)
    ood: dict[str, Any] | None = None
    # where it came from
    source: str | None = None
    seed: int = 0
    medlens_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    best_params: dict[str, Any] | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    epochs_run: int | None = None
    global_step: int | None = None
    stopped_early: bool | None = None
    resumed_from: dict[str, Any] | None = None
    session: dict[str, Any] | None = None
    gan: dict[str, Any] | None = None
    pretrained: dict[str, Any] | None = None  # the --weights it started from (medlens.training.pretrain)
    updates: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema {v} is newer than this medlens reads ({SCHEMA_VERSION}): upgrade medlens")
        return v

    @field_validator("thresholds", mode="before")
    @classmethod
    def _numeric_thresholds(cls, v: Any) -> Any:
        """Only numeric thresholds are decision thresholds (older cards kept a "chosen_on" note here)."""
        if isinstance(v, dict):
            return {k: t for k, t in v.items() if isinstance(t, (int, float)) and not isinstance(t, bool)}
        return v

    @model_validator(mode="before")
    @classmethod
    def _codes_of_older_cards(cls, data: Any) -> Any:
        """A card written before ``codes`` existed gets them from the table (declared fallbacks included)."""
        if isinstance(data, dict) and not data.get("codes") and isinstance(data.get("class_names"), list):
            data = {**data, "codes": concepts_for(data["class_names"], data.get("source"))}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        if self.task != "multilabel" and self.num_outputs != len(self.class_names):
            raise ValueError(f"num_outputs {self.num_outputs} != {len(self.class_names)} class names")
        if self.task == "segmentation" and len(self.class_names) < 2:
            raise ValueError("a segmentation model needs the background and at least one class")
        if self.task == "segmentation" and self.kind == "deep" and not self.patch_size:
            raise ValueError("a segmentation network needs its patch_size")
        if self.task == "binary" and len(self.class_names) != 2:
            raise ValueError(f"a binary model needs 2 class names, not {len(self.class_names)}")
        if set(self.codes) != set(self.class_names):
            raise ValueError("codes must name each class exactly once")
        return self

    # -- what the stages ask of it ---------------------------------------------------------------
    @property
    def decision_threshold(self) -> float | None:
        """The binary / multi-label decision threshold (None: 0.5, MedMNIST's rule)."""
        return self.thresholds.get("decision")

    @property
    def n_classes(self) -> int | None:
        """Number of single-label classes (None for multi-label)."""
        return None if self.task == "multilabel" else len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_update(self, stage: str, **fields: Any) -> "ModelCard":
        """A copy with ``fields`` changed by ``stage``, the change recorded in ``updates``.

        Only :data:`UPDATABLE` fields may change after training; the new card is validated.
        """
        wrong = sorted(set(fields) - UPDATABLE)
        if wrong:
            raise ValueError(f"stage '{stage}' may not change {', '.join(wrong)} of a model card")
        record = {
            "stage": stage,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "fields": sorted(fields),
        }
        data = {**self.to_dict(), **fields, "updates": [*self.updates, record]}
        return _validated(data, None)


def _validated(data: Any, path: Path | None) -> ModelCard:
    if not isinstance(data, dict):
        raise MedlensError("not a model card (expected a JSON object)", path)
    try:
        return ModelCard.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "card"
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        message = err["msg"].removeprefix("Value error, ")
        raise MedlensError(
            f"model card field '{where}': {message}{more}; re-export the model with this medlens "
            "(`medlens train` again, or `medlens evaluate RUN` for calibration fields)",
            path,
        ) from None


def read_card(path: str | Path) -> ModelCard:
    """The card at ``path`` (a model.json), validated; one-line :class:`MedlensError` otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedlensError("no model card (model.json)", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MedlensError(f"model card is not readable JSON ({e})".splitlines()[0], path) from None
    return _validated(data, path)


def write_card(path: str | Path, card: ModelCard) -> None:
    """Write ``card`` to ``path`` atomically (the one writer of model.json)."""
    write_json(path, card.to_dict())


def card_from_dict(data: dict[str, Any]) -> ModelCard:
    """A validated card from a mapping (training assembles its fields this way)."""
    return _validated(data, None)
