"""Model registry: stable name -> factory, with kind, dimensions, tasks and a one-line description.

Classical specs build a scikit-learn estimator that takes images as arrays (N, C, H, W) or
(N, C, D, H, W) and does its own feature extraction. Deep specs build a ``torch.nn.Module`` that
maps a batch (N, C, H, W) or (N, C, D, H, W) to logits (N, num_outputs), or, for the
segmentation task, to per-voxel logits (N, num_outputs, *spatial).

``spec.tasks`` says what a model is for: classification models are never offered for
segmentation and vice versa (:func:`models_for`, :func:`check_task`).

Model modules register themselves on import; :func:`all_models` imports them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from medlens.errors import MedlensError

Kind = Literal["classical", "deep"]

MODEL_MODULES = (
    "medlens.models.classical.estimators",
    "medlens.models.classical.pixel_forest",
    "medlens.models.deep.networks",
    "medlens.models.deep.segmentation",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Kind
    dims: tuple[int, ...]  # spatial dimensions it accepts: (2,), (3,) or (2, 3)
    tasks: tuple[str, ...]  # values of medlens.data.sample.Task
    description: str
    build: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"model name registered twice: {spec.name}")
    _REGISTRY[spec.name] = spec
    return spec


def _load_all() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def all_models() -> list[ModelSpec]:
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda s: (s.kind, s.name))


def get_model(name: str) -> ModelSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise MedlensError(f"unknown model '{name}' (known: {known}; see `medlens models`)") from None


def models_for(task: str) -> list[ModelSpec]:
    """The registered models that train for ``task`` (a :class:`medlens.data.sample.Task` value)."""
    return [s for s in all_models() if task in s.tasks]


def check_task(spec: ModelSpec, task: str) -> None:
    """One line naming the models that fit, when ``spec`` does not train for ``task``."""
    if task in spec.tasks:
        return
    fitting = ", ".join(s.name for s in models_for(task)) or "none"
    what = "segmentation" if "segmentation" in spec.tasks else "classification"
    raise MedlensError(
        f"model '{spec.name}' is a {what} model and does not support {task} tasks (models for {task}: {fitting})"
    )
