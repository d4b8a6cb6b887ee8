"""The one sample model shared by every source.

A :class:`Dataset` holds cheap :class:`Record` entries (id, label, patient, split, origin) for every
sample, and loads pixels lazily with :meth:`Dataset.load`, which returns a :class:`Sample`:
a channels-first float32 array with its label(s), patient id, spacing and provenance.
:class:`ImageData` is what one file holds, as the readers return it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Iterator, Sequence

import numpy as np

from medlens.errors import printable

SPLITS = ("train", "val", "test")


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    ORDINAL = "ordinal"
    SEGMENTATION = "segmentation"
    NONE = "none"  # images without labels (e.g. a DICOM study to read or convert)


Label = int | tuple[int, ...] | None
"""A class index (binary, multi-class, ordinal), a multi-hot tuple (multi-label), or None."""

NEGATIVE_CLASS_NAMES = frozenset({"normal", "negative", "healthy", "benign", "no finding", "no_finding"})
"""Conventional names of a binary task's negative class (compared case-insensitively)."""


def negative_first(names: Sequence[str]) -> list[str]:
    """Two class names with a conventional negative name (:data:`NEGATIVE_CLASS_NAMES`) put first
    (index 0, the negative class), so ``abnormal, normal`` makes ``abnormal`` the positive class;
    other lists are returned unchanged."""
    names = list(names)
    if len(names) == 2 and names[1].strip().lower() in NEGATIVE_CLASS_NAMES:
        if names[0].strip().lower() not in NEGATIVE_CLASS_NAMES:
            return [names[1], names[0]]
    return names


@dataclass
class Record:
    """Metadata of one sample, without pixels. Cheap to hold for every sample of a large source."""

    id: str
    label: Label
    patient_id: str
    origin: str  # file path, SOP Instance UID, or "file.npz#train/17"
    split: str | None = None  # the source's own split, if it has one
    extra: dict[str, Any] = field(default_factory=dict)  # reader-specific locator (paths, index)
    attributes: dict[str, str] = field(default_factory=dict)  # sex, age, view... (medlens.data.attributes)


@dataclass
class Sample:
    """One loaded sample.

    ``image`` is float32, channels first: (C, H, W) for 2D, (C, D, H, W) for 3D.
    ``spacing`` follows the spatial axes of ``image`` (mm), ``affine`` maps voxel indices
    (in the order of the spatial axes of ``image``) to patient coordinates when known.
    ``mask`` (optional) has the spatial shape of ``image``: the lesion or label map.
    """

    id: str
    image: np.ndarray
    label: Label
    patient_id: str
    origin: str
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    mask: np.ndarray | None = None
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return self.image.ndim - 1


@dataclass
class ImageData:
    """What a file holds: pixels (float32, channels first) and what the format says about them.

    Made by the readers (:mod:`medlens.data.imageio`, :mod:`medlens.data.dicom`); a source turns it into a
    :class:`Sample`.
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    affine: np.ndarray | None = None
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return self.array.ndim - 1


@dataclass
class Problem:
    """Something a reader could not use, reported by name instead of dropped silently."""

    path: str
    problem: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.problem}")


class Dataset:
    """A labelled collection of samples with lazy pixel loading.

    Subclasses (one per source kind) fill ``records`` and implement :meth:`_load`.
    """

    def __init__(
        self,
        name: str,
        records: Sequence[Record],
        *,
        task: Task,
        class_names: Sequence[str],
        dims: int,
        modality: str | None = None,
        problems: Sequence[Problem] = (),
        uri: str | None = None,
    ):
        self.name = name
        self.records = list(records)
        self.task = Task(task)
        self.class_names = list(class_names)
        self.dims = dims
        self.modality = modality
        self.problems = list(problems)
        self.uri = uri or name
        self._index = {r.id: i for i, r in enumerate(self.records)}
        if len(self._index) != len(self.records):
            raise ValueError(f"{name}: sample ids are not unique")

    # -- access ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.load(i)

    def load(self, index: int | str) -> Sample:
        if isinstance(index, str):
            index = self._index[index]
        return self._load(self.records[index])

    def _load(self, record: Record) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement _load")

    def index_of(self, sample_id: str) -> int:
        return self._index[sample_id]

    # -- labels ---------------------------------------------------------------------------
    @property
    def has_source_splits(self) -> bool:
        return any(r.split is not None for r in self.records)

    def labels(self) -> np.ndarray:
        """Labels as an array: (N,) class indices, or (N, L) multi-hot for multi-label."""
        if self.task is Task.MULTILABEL:
            return np.array([list(r.label) for r in self.records], dtype=np.int64)
        return np.array([-1 if r.label is None else int(r.label) for r in self.records], dtype=np.int64)

    def subset(self, ids: Sequence[str]) -> "DatasetView":
        return DatasetView(self, [self._index[i] for i in ids])


class DatasetView(Dataset):
    """A subset of a dataset (e.g. one split), sharing the parent's loader."""

    def __init__(self, parent: Dataset, indices: Sequence[int]):
        self.parent = parent
        super().__init__(
            parent.name,
            [parent.records[i] for i in indices],
            task=parent.task,
            class_names=parent.class_names,
            dims=parent.dims,
            modality=parent.modality,
            uri=parent.uri,
        )

    def _load(self, record: Record) -> Sample:
        return self.parent._load(record)
