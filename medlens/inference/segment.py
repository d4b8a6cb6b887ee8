"""Segmentation inference: the one preprocessing path and sliding-window class probabilities.

* :func:`segmentation_input` turns one stored image (C, *spatial) into the model input exactly as
  training did: the card's intensity steps (:func:`medlens.data.transforms.build_transform`) and
  channel conversion, in the stored geometry (no resize, no resampling: a label map predicted on
  the input overlays the stored image voxel for voxel).
* :func:`sliding_window_proba` runs a segmentation network over an input of any size with MONAI's
  ``sliding_window_inference`` (patches of the training patch size, Gaussian-weighted overlap,
  zero padding where the input is smaller than a patch) and returns softmax probabilities;
  with ``mirror_axes`` it also runs the input flipped along every combination of those spatial
  axes and averages the probabilities flipped back (test-time mirroring as nnU-Net does it;
  training chooses it on validation, the card's ``mirror_axes`` records the choice).

Training's validation, the per-case predictions it writes and :meth:`medlens.inference.bundle.Bundle.segment`
all call these two functions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from medlens.errors import MedlensError

OVERLAP = 0.5
"""Share of a patch that neighbouring sliding windows overlap."""
WINDOW_BATCH = 4
"""Patches per forward pass of the sliding window."""


def intensity_steps(preprocessing: dict[str, Any] | None) -> dict[str, Any]:
    """``preprocessing`` without resize steps (segmentation keeps the stored geometry)."""
    config = dict(preprocessing or {})
    config["steps"] = [s for s in config.get("steps", []) if s.get("name") != "resize"]
    return config


def segmentation_input(
    image: np.ndarray, *, channels: int | None, preprocessing: dict[str, Any] | None, dims: int, origin: str = ""
) -> np.ndarray:
    """One stored image (C, *spatial) -> the model input (channels, *spatial) float32, same geometry."""
    from medlens.data.arrays import convert_channels
    from medlens.data.transforms import build_transform

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != dims + 1:
        raise MedlensError(f"expected a {dims}D image with channels, got shape {tuple(image.shape)}", origin or None)
    x = build_transform(intensity_steps(preprocessing), dims)(image.copy())
    return np.ascontiguousarray(convert_channels(np.asarray(x, dtype=np.float32), channels, origin), dtype=np.float32)


def sliding_window_logits(net: Any, x: Any, patch: Sequence[int]) -> Any:
    """Logits (N, K, *spatial) of ``net`` for a torch batch ``x`` (N, C, *spatial), patch by patch."""
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        x,
        roi_size=[int(p) for p in patch],
        sw_batch_size=WINDOW_BATCH,
        predictor=net,
        overlap=OVERLAP,
        mode="gaussian",
    )


def mirror_sets(axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every combination of the spatial ``axes`` (0-based), the empty one (no flip) first."""
    from itertools import combinations

    axes = sorted({int(a) for a in axes or []})
    return [c for r in range(len(axes) + 1) for c in combinations(axes, r)]


def sliding_window_proba(
    net: Any, x: np.ndarray, patch: Sequence[int], mirror_axes: Sequence[int] | None = None
) -> np.ndarray:
    """Softmax class probabilities (K, *spatial) float32 for one model input ``x`` (C, *spatial),
    averaged over the flips of :func:`mirror_sets` of ``mirror_axes`` (None: one pass)."""
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[None])
        total = None
        flips = mirror_sets(mirror_axes)
        for spatial in flips:
            dims = [2 + a for a in spatial]
            logits = torch.as_tensor(sliding_window_logits(net, torch.flip(xt, dims) if dims else xt, patch))
            proba = torch.softmax(logits.float(), dim=1)
            proba = torch.flip(proba, dims) if dims else proba
            total = proba if total is None else total + proba
        assert total is not None
        return (total / len(flips))[0].numpy()
