"""From stored images to model input, checked: preprocessing must never silently destroy the signal.

Training and every prediction run the same function, :func:`medlens.data.arrays.load_arrays`,
with the card's size, channels and preprocessing steps. After it, :func:`check_signal` refuses
a batch whose images all became constant or all became identical, and :func:`check_image` a
single image that preprocessing turned constant, each naming the step that did it. (Example:
z-scoring the nonzero voxels of binary 0/255 volumes maps every volume to zeros, since all
nonzero voxels are equal; every model then scores AUC 0.500 without a word.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medlens.data.sample import Dataset, Record, Sample, Task
from medlens.errors import BadInputError, MedlensError


class CollapsedInputError(MedlensError):
    """Preprocessing turned the images into constants (no signal left for any model)."""


def load_inputs(
    dataset: Dataset,
    ids: Sequence[str],
    *,
    size: Any,
    channels: int | None,
    preprocessing: dict[str, Any] | None,
    show_progress: bool = False,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs ``(N, C, ...)`` float32 and labels of ``ids``, checked by :func:`check_signal`."""
    from medlens.data.arrays import load_arrays

    x, y = load_arrays(
        dataset,
        ids,
        size=size,
        channels=channels,
        preprocessing=preprocessing,
        show_progress=show_progress,
        desc=desc,
    )
    x = np.asarray(x, dtype=np.float32)
    check_signal(x, preprocessing, dataset=dataset, ids=ids)
    return x, np.asarray(y)


def check_signal(x: np.ndarray, preprocessing: dict[str, Any] | None, *, dataset: Dataset, ids: Sequence[str]) -> None:
    """Raise :class:`CollapsedInputError` when every image of ``x`` is constant, or (two or more
    images) every image equals the first; the message names the step that collapsed them."""
    if len(x) == 0:
        return
    flat = x.reshape(len(x), -1)
    constant = bool(np.all(np.ptp(flat, axis=1) == 0))
    identical = len(x) > 1 and bool(np.all(flat == flat[0]))
    if not (constant or identical):
        return
    what = "every image is constant" if constant else f"all {len(x)} images are identical"
    raw = np.asarray(dataset.load(ids[0]).image, dtype=np.float32)
    step = _collapsing_step(raw, preprocessing, dataset.dims)
    where = f" after preprocessing step '{step}'" if step else " in the source itself"
    raise CollapsedInputError(
        f"{what}{where} ({_steps_text(preprocessing)}): no model can learn from this; "
        "give other preprocessing steps (plan.json 'preprocessing') or check the source",
        dataset.uri,
    )


def check_image(x: np.ndarray, raw: np.ndarray, preprocessing: dict[str, Any] | None, dims: int, name: str) -> None:
    """Refuse one input that is blank, or that preprocessing made constant (naming the step)."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.size and float(np.ptp(raw)) == 0:
        raise BadInputError("the image is blank (every pixel has the same value)", name)
    if x.size and float(np.ptp(x)) == 0:
        step = _collapsing_step(raw, preprocessing, dims)
        raise CollapsedInputError(f"the image became constant after preprocessing step '{step}'", name)


def _collapsing_step(raw: np.ndarray, preprocessing: dict[str, Any] | None, dims: int) -> str | None:
    """The first preprocessing step after which ``raw`` is constant (None if it was constant already)."""
    from medlens.data.transforms import build_transform

    if float(np.ptp(raw)) == 0:
        return None
    steps = list((preprocessing or {}).get("steps", []))
    for k in range(1, len(steps) + 1):
        out = build_transform({**(preprocessing or {}), "steps": steps[:k]}, dims)(raw)
        if float(np.ptp(np.asarray(out))) == 0:
            return str(steps[k - 1].get("name", f"#{k}"))
    return steps[-1].get("name") if steps else None


def _steps_text(preprocessing: dict[str, Any] | None) -> str:
    steps = (preprocessing or {}).get("steps", [])
    return "steps: " + (", ".join(str(s.get("name", "?")) for s in steps) or "none")


class OneImage(Dataset):
    """One in-memory image as a dataset, so that a prediction runs the training loader unchanged."""

    def __init__(self, image: np.ndarray, dims: int, task: str, n_classes: int, modality: str | None):
        label = tuple([0] * n_classes) if task == "multilabel" else None
        super().__init__(
            "input",
            [Record(id="input", label=label, patient_id="", origin="input")],
            task=Task(task),
            class_names=[str(i) for i in range(n_classes)],
            dims=dims,
            modality=modality,
        )
        self._image = image

    def _load(self, record: Record) -> Sample:
        return Sample(id=record.id, image=self._image, label=record.label, patient_id="", origin=record.origin)

    def stacked_images(self) -> np.ndarray | None:
        """The image as a batch of one (N, C, ...) for the batched preprocessing of
        :func:`~medlens.data.arrays.load_arrays`; None when its shape is not the dataset's dims
        (the per-sample path then reports it)."""
        image = np.asarray(self._image, dtype=np.float32)
        return image[None] if image.ndim == self.dims + 1 else None
