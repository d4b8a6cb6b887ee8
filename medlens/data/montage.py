"""A montage PNG of a source: one row of samples per class (``medlens data info --montage``).

Each image is windowed on its own (0.5th to 99.5th percentile), drawn with its pixel spacing, volumes show their middle slice along
the first spatial axis (axial for DICOM and reoriented NIfTI), RGB images are shown in colour.
Sources without classes (segmentation, ``Task.NONE``) get one row, titled by series description
or id, with the mask outlined when the sample has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medlens.data.sample import Dataset, Sample, Task
from medlens.errors import MedlensError

CELL_INCHES = 1.5


def save_montage(dataset: Dataset, path: str | Path, *, per_class: int = 8, seed: int = 0) -> Path:
    """Write a PNG grid of up to ``per_class`` seeded random samples per class; return its path.

    Unreadable samples are passed over (another sample of the class is tried); a source with no
    readable sample raises :class:`~medlens.errors.MedlensError`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _pick(dataset, per_class, seed)
    if not any(samples for _, samples in rows):
        raise MedlensError("no readable sample to draw", dataset.uri)
    n_cols = max(len(samples) for _, samples in rows)
    fig, axes = plt.subplots(
        len(rows),
        n_cols,
        figsize=(CELL_INCHES * n_cols + 1.2, CELL_INCHES * len(rows) + 0.6),
        squeeze=False,
        facecolor="white",
    )
    titled_cells = len(rows) == 1
    for r, (row_name, samples) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c >= len(samples):
                ax.axis("off")
                continue
            sample = samples[c]
            view = display_image(sample.image)
            ax.imshow(
                view,
                cmap=None if view.ndim == 3 else "gray",
                vmin=0,
                vmax=1,
                interpolation="nearest",
                aspect=_aspect(sample),
            )
            mask = _mask_slice(sample)
            if mask is not None and mask.any():
                ax.contour(mask > 0, levels=[0.5], colors="#ff3b30", linewidths=0.8)
            if titled_cells:
                ax.set_title(_cell_title(sample), fontsize=7)
        if row_name is not None:
            axes[r][0].set_ylabel(row_name, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(f"{dataset.name}  ({dataset.task.value}, {dataset.dims}D, {len(dataset)} samples)", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, facecolor="white")
    plt.close(fig)
    return out


def display_image(image: np.ndarray) -> np.ndarray:
    """A 2D float image in [0, 1] (H, W) or an RGB one (H, W, 3) from a channels-first array."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[:, arr.shape[1] // 2]
    if arr.ndim == 2:
        arr = arr[None]
    view = np.moveaxis(arr[:3], 0, -1) if arr.shape[0] == 3 else arr[0]
    finite = view[np.isfinite(view)]
    if finite.size == 0:
        return np.zeros(view.shape, dtype=np.float32)
    lo, hi = np.percentile(finite, (0.5, 99.5))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(view.shape, dtype=np.float32)
    return np.clip((np.nan_to_num(view, nan=lo) - lo) / (hi - lo), 0, 1).astype(np.float32)


def _pick(dataset: Dataset, per_class: int, seed: int) -> list[tuple[str | None, list[Sample]]]:
    """Rows of loaded samples: one per class, or one unnamed row for sources without classes."""
    rng = np.random.default_rng(seed)
    classified = dataset.task not in (Task.SEGMENTATION, Task.NONE) and dataset.class_names
    if not classified:
        return [
            (
                None,
                _load_some(
                    dataset,
                    rng.permutation(len(dataset)) if len(dataset) > per_class else np.arange(len(dataset)),
                    per_class,
                ),
            )
        ]
    rows = []
    for k, name in enumerate(dataset.class_names):
        members = [i for i, r in enumerate(dataset.records) if _has_class(r.label, k)]
        rows.append((name, _load_some(dataset, rng.permutation(np.array(members, dtype=int)), per_class)))
    return rows


def _has_class(label: Any, k: int) -> bool:
    if label is None:
        return False
    if isinstance(label, tuple):
        return k < len(label) and bool(label[k])
    return int(label) == k


def _load_some(dataset: Dataset, order: np.ndarray, n: int) -> list[Sample]:
    samples = []
    for i in order:
        if len(samples) == n:
            break
        try:
            samples.append(dataset.load(int(i)))
        except MedlensError:
            continue
    return samples


def _aspect(sample: Sample) -> float:
    """Height/width of one pixel of the displayed slice (from the last two spacings), 1 when unknown."""
    spacing = sample.spacing
    if not spacing or len(spacing) < 2 or not spacing[-1] or not spacing[-2]:
        return 1.0
    return float(spacing[-2]) / float(spacing[-1])


def _mask_slice(sample: Sample) -> np.ndarray | None:
    if sample.mask is None:
        return None
    mask = np.asarray(sample.mask)
    if mask.ndim == sample.image.ndim:  # mask with a channel axis
        mask = mask.max(axis=0)
    if mask.ndim == 3:
        mask = mask[mask.shape[0] // 2]
    return mask if mask.ndim == 2 else None


def _cell_title(sample: Sample) -> str:
    for key in ("series_description", "SeriesDescription", "description"):
        if sample.meta.get(key):
            text = str(sample.meta[key])
            break
    else:
        text = sample.id
    return text if len(text) <= 22 else text[:20] + "…"
