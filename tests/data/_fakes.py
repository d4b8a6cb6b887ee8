"""Small in-memory datasets for the fingerprint, montage and audit tests.

:class:`FakeDataset` holds its images in a dict, so tests can plant exact duplicates, near
duplicates, unreadable samples and patient leaks without touching the disk.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medlens.data.sample import Dataset, Problem, Record, Sample, Task
from medlens.errors import BadInputError


class FakeDataset(Dataset):
    """A dataset whose pixels live in memory; ids in ``bad`` raise :class:`BadInputError` on load."""

    def __init__(
        self,
        images: dict[str, np.ndarray],
        records: Sequence[Record],
        *,
        task: Task = Task.BINARY,
        class_names: Sequence[str] = ("normal", "abnormal"),
        dims: int = 2,
        bad: Sequence[str] = (),
        problems: Sequence[Problem] = (),
        spacing: tuple[float, ...] | None = None,
        masks: dict[str, np.ndarray] | None = None,
        meta: dict[str, dict] | None = None,
        name: str = "fake",
        modality: str | None = "XR",
    ):
        super().__init__(
            name,
            records,
            task=task,
            class_names=class_names,
            dims=dims,
            modality=modality,
            problems=problems,
            uri=f"fake:{name}",
        )
        self.images = images
        self.bad = set(bad)
        self.spacing = spacing
        self.masks = masks or {}
        self.meta = meta or {}
        self.loads = 0

    def _load(self, record: Record) -> Sample:
        self.loads += 1
        if record.id in self.bad:
            raise BadInputError("cannot identify image file", record.origin)
        return Sample(
            id=record.id,
            image=self.images[record.id].astype(np.float32),
            label=record.label,
            patient_id=record.patient_id,
            origin=record.origin,
            spacing=self.spacing,
            mask=self.masks.get(record.id),
            modality=self.modality,
            meta=dict(self.meta.get(record.id, {})),
        )


def blob_image(seed: int, size: int = 32, channels: int = 1) -> np.ndarray:
    """A smooth random image (C, H, W) in 0..255 with structure a perceptual hash can see."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size))
    for _ in range(4):
        cy, cx, s = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        img += rng.uniform(0.5, 1.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    img = 255 * (img - img.min()) / (img.max() - img.min())
    return np.repeat(img[None], channels, axis=0).astype(np.float32)


def make_classification(
    n_per_class: Sequence[int] = (6, 4),
    *,
    splits: Sequence[str] | None = ("train", "test"),
    channels: int = 1,
    size: int = 32,
    **kwargs,
) -> FakeDataset:
    """Distinct blob images for each class; each class is dealt round-robin over ``splits``."""
    images, records = {}, []
    k = 0
    for label, n in enumerate(n_per_class):
        for j in range(n):
            sid = f"c{label}_{j:03d}"
            images[sid] = blob_image(1000 + k, size=size, channels=channels)
            split = splits[j % len(splits)] if splits else None
            records.append(Record(sid, label, f"p_{sid}", f"/fake/{sid}.png", split))
            k += 1
    return FakeDataset(
        images,
        records,
        class_names=kwargs.pop("class_names", [f"class{i}" for i in range(len(n_per_class))]),
        task=kwargs.pop("task", Task.BINARY if len(n_per_class) == 2 else Task.MULTICLASS),
        **kwargs,
    )


def add_sample(ds: FakeDataset, sid: str, image: np.ndarray, label, split, patient: str | None = None) -> None:
    """Append one sample to ``ds`` (used to plant duplicates and leaks)."""
    rec = Record(sid, label, patient or f"p_{sid}", f"/fake/{sid}.png", split)
    ds.records.append(rec)
    ds._index[sid] = len(ds.records) - 1
    ds.images[sid] = image.astype(np.float32)
