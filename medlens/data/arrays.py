"""Load a dataset (or some of its samples) into memory as one float32 array for training.

:func:`load_arrays` gives ``(N, C, H, W)`` or ``(N, C, D, H, W)`` float32 images plus labels,
resized to a common size and normalized with a preprocessing config from
:mod:`medlens.data.transforms`, with the channel count converted (gray <-> RGB).
:func:`load_masks` gives the lesion / label masks resized the same way (nearest neighbour).

Sources that offer ``raw_arrays(split)`` (MedMNIST) take a bulk numpy path instead of loading
sample by sample; the result is the same.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medlens import progress
from medlens.data.sample import Dataset, Record, Task
from medlens.data.transforms import size_list
from medlens.errors import MedlensError

BULK_CHUNK = 4096  # samples preprocessed at once on the bulk path
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as medlens.data.imageio


def _pipeline_config(preprocessing: dict | None, size: list[int] | None, dims: int) -> dict:
    """The preprocessing steps with the resize set to ``size`` (added first when missing)."""
    steps = [dict(s) for s in (preprocessing or {}).get("steps", [])]
    if size is not None:
        resizes = [s for s in steps if s.get("name") == "resize"]
        if resizes:
            for s in resizes:
                s["size"] = size
        else:
            steps.insert(0, {"name": "resize", "size": size, "mode": "area" if dims == 2 else "trilinear"})
    return {**(preprocessing or {}), "steps": steps}


def convert_channels(image: np.ndarray, channels: int | None, origin: str = "") -> np.ndarray:
    """(C, ...) -> (channels, ...): gray to RGB by repetition, RGB to gray by luminance."""
    return convert_channels_batch(image[None], channels, origin)[0]


def convert_channels_batch(x: np.ndarray, channels: int | None, origin: str = "") -> np.ndarray:
    """:func:`convert_channels` for a stacked batch (N, C, ...); ``origin`` names the source in errors."""
    c = x.shape[1]
    if channels is None or c == channels:
        return x
    if c == 1:
        return np.repeat(x, channels, axis=1)
    if channels == 1 and c in (3, 4):
        return np.tensordot(x[:, :3], LUMA, axes=([1], [0]))[:, None].astype(np.float32)
    raise MedlensError(f"cannot convert {c} channels to {channels}", origin or None)


def _labels(records: Sequence[Record], task: Task) -> np.ndarray:
    if task is Task.MULTILABEL:
        return np.array([list(r.label) for r in records], dtype=np.int64)
    return np.array([-1 if r.label is None else int(r.label) for r in records], dtype=np.int64)


def load_arrays(
    dataset: Dataset,
    ids: Sequence[str] | None = None,
    *,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    preprocessing: dict | None = None,
    show_progress: bool = True,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images of ``ids`` (all samples when None) as ``(N, C, ...)`` float32, and their labels.

    ``size`` (int or per-axis) resizes every image (it replaces the size of a ``resize`` step in
    ``preprocessing``); ``preprocessing`` (a :mod:`medlens.data.transforms` config) normalizes;
    ``channels`` converts gray <-> RGB. Without any resize, images of different shapes raise a
    :class:`MedlensError` naming the first sample whose shape differs.
    Labels are ``(N,)`` int64 (``-1`` when unlabelled) or ``(N, L)`` multi-hot.
    ``desc`` labels the progress bar (default "loading", plus the split when all samples share one).
    """
    from medlens.data.transforms import build_transform, can_preprocess_batch, preprocess_batch

    ids = [r.id for r in dataset.records] if ids is None else list(ids)
    records = [dataset.records[dataset.index_of(i)] for i in ids]
    labels = _labels(records, dataset.task)
    config = _pipeline_config(preprocessing, size_list(size, dataset.dims), dataset.dims)
    desc = desc or _loading_desc(records)

    bulk = _bulk_images(dataset, records)
    if bulk is not None and can_preprocess_batch(config):
        out = np.empty((len(records), 0), np.float32)
        parts = []
        with progress.bar(len(records), desc=desc, disable=not show_progress) as bar:  # counts samples
            for i in range(0, len(records), BULK_CHUNK):
                chunk = bulk[i : i + BULK_CHUNK]
                parts.append(convert_channels_batch(preprocess_batch(chunk, config, dataset.dims), channels))
                bar.update(len(chunk))
        return np.concatenate(parts) if parts else out, labels
    if bulk is not None:
        images = (bulk[i] for i in range(len(records)))
    else:
        images = (dataset.load(i).image for i in ids)
    pipeline = build_transform(config, dataset.dims)

    out: np.ndarray | None = None
    first: tuple[str, tuple[int, ...]] | None = None
    loaded = progress.track(zip(records, images), total=len(records), desc=desc, disable=not show_progress)
    for n, (rec, img) in enumerate(loaded):
        if img.ndim != dataset.dims + 1:
            raise MedlensError(
                f"expected a {dataset.dims}D image with channels, got shape {tuple(img.shape)}", rec.origin
            )
        x = convert_channels(
            pipeline(np.array(img, dtype=np.float32)), channels, rec.origin
        )  # a copy: steps may work in place
        if out is None:
            first = (rec.origin, tuple(x.shape))
            out = np.empty((len(records), *x.shape), dtype=np.float32)
        elif tuple(x.shape) != first[1]:
            hint = "; give a size to resize them" if size is None else ""
            raise MedlensError(f"shape {tuple(x.shape)} differs from {first[1]} of {first[0]}{hint}", rec.origin)
        out[n] = x
    if out is None:
        out = np.empty((0, channels or 1, *(size_list(size, dataset.dims) or [0] * dataset.dims)), dtype=np.float32)
    return out, labels


def _loading_desc(records: Sequence[Record]) -> str:
    """ "loading train" when every record comes from the source's train split, else "loading"."""
    splits = {r.split for r in records}
    return f"loading {splits.pop()}" if len(splits) == 1 and None not in splits else "loading"


def _bulk_images(dataset: Dataset, records: Sequence[Record]) -> np.ndarray | None:
    """Images in sample order, channels first, stacked: a dataset's own ``stacked_images()`` (an
    in-memory image to predict on), or ``raw_arrays(split)`` when the source has it (MedMNIST)."""
    stacked = getattr(dataset, "stacked_images", None)
    if stacked is not None:
        return stacked()
    source = getattr(dataset, "parent", dataset)
    raw = getattr(source, "raw_arrays", None)
    if raw is None or not records or any(r.split is None or "index" not in r.extra for r in records):
        return None
    by_split: dict[str, np.ndarray] = {}
    for split in {r.split for r in records}:
        by_split[split] = raw(split)[0]
    first = by_split[records[0].split]
    rgb = first.ndim == dataset.dims + 2  # (N, H, W, 3)
    out = np.empty((len(records), *first.shape[1:]), dtype=np.float32)
    for split, arr in by_split.items():
        rows = [n for n, r in enumerate(records) if r.split == split]
        out[rows] = arr[[records[n].extra["index"] for n in rows]]
    return np.moveaxis(out, -1, 1) if rgb else out[:, None]


def load_masks(
    dataset: Dataset,
    ids: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    *,
    show_progress: bool = False,
) -> np.ndarray | None:
    """Masks of ``ids`` as ``(N, *spatial)`` uint8 (nearest-neighbour resized to ``size``), or
    None when no sample has one. A sample without a mask gets zeros (no lesion)."""
    from medlens.data.transforms import build_transform

    ids = [r.id for r in dataset.records] if ids is None else list(ids)
    sz = size_list(size, dataset.dims)
    resize = build_transform(
        {"steps": [{"name": "resize", "size": sz, "mode": "nearest"}]} if sz else None, dataset.dims
    )
    masks: list[np.ndarray | None] = []
    shapes: list[tuple[int, ...]] = []
    for i in progress.track(ids, desc="loading masks", disable=not show_progress):
        s = dataset.load(i)
        shapes.append(tuple(s.image.shape[1:]))
        if s.mask is None:
            masks.append(None)
            continue
        m = resize(np.asarray(s.mask, dtype=np.float32)[None])[0]
        masks.append(np.rint(m).astype(np.uint8))
    if all(m is None for m in masks):
        return None
    shape = tuple(sz) if sz else next(m.shape for m in masks if m is not None)
    out = np.zeros((len(ids), *shape), dtype=np.uint8)
    for n, (i, m) in enumerate(zip(ids, masks)):
        if m is None:
            if not sz and shapes[n] != shape:
                raise MedlensError(
                    f"shape {shapes[n]} differs from {shape}; give a size", dataset.records[dataset.index_of(i)].origin
                )
            continue
        if m.shape != shape:
            raise MedlensError(
                f"mask shape {m.shape} differs from {shape}; give a size", dataset.records[dataset.index_of(i)].origin
            )
        out[n] = m
    return out
