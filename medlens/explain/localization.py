"""Score where a model looks against lesion masks: pointing game and IoU.

Pointing game (Zhang et al. 2016): a hit when the map's maximum falls inside the lesion mask
(dilated by ``tolerance`` pixels). IoU: the map thresholded at ``threshold`` (maps in [0, 1])
against the mask. Only samples whose mask is non-empty are scored.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: int = 2) -> bool:
    mask = mask.astype(bool)
    if tolerance > 0:
        mask = ndimage.binary_dilation(mask, iterations=tolerance)
    peak = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return bool(mask[peak])


def heatmap_iou(heatmap: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    pred = heatmap >= threshold
    mask = mask.astype(bool)
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union) if union else float("nan")


def localization_scores(heatmaps: np.ndarray, masks: np.ndarray, *, tolerance: int = 2, threshold: float = 0.5) -> dict:
    """Mean pointing-game hit rate and IoU over samples with a lesion; counts included."""
    hits, ious = [], []
    for h, m in zip(heatmaps, masks):
        if not np.any(m):
            continue
        if h.shape != m.shape:
            raise ValueError(f"heatmap shape {h.shape} differs from mask shape {m.shape}")
        hits.append(pointing_hit(h, m, tolerance))
        ious.append(heatmap_iou(h, m, threshold))
    n = len(hits)
    return {
        "n_scored": n,
        "pointing_game": float(np.mean(hits)) if n else float("nan"),
        "iou": float(np.nanmean(ious)) if n else float("nan"),
        "tolerance_px": tolerance,
        "threshold": threshold,
    }
