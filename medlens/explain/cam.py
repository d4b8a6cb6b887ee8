"""Where a model looks: Grad-CAM and Grad-CAM++ (MONAI's) for deep models, occlusion sensitivity
for any model (classical ones included, through their probability function).

All maps are returned as float32 arrays in [0, 1] with the spatial shape of the input, one per
sample: (N, H, W) or (N, D, H, W).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

Method = Literal["gradcam", "gradcam++"]


def _normalize(maps: np.ndarray) -> np.ndarray:
    maps = np.nan_to_num(maps.astype(np.float32))
    flat = maps.reshape(len(maps), -1)
    lo = flat.min(axis=1, keepdims=True)
    hi = flat.max(axis=1, keepdims=True)
    flat = (flat - lo) / np.maximum(hi - lo, 1e-8)
    return flat.reshape(maps.shape)


def _upsampler(spatial_size: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Maps (N, 1, ...) to the input's ``spatial_size``. A 2D map of a 3D input (2.5D networks
    that read slices as channels) is resized in-plane and holds for every slice."""

    def up(acti: torch.Tensor) -> torch.Tensor:
        size = tuple(int(s) for s in spatial_size)
        if acti.ndim - 2 == len(size):
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
            return F.interpolate(acti, size=size, mode=mode, align_corners=False)
        if acti.ndim - 2 == 2 and len(size) == 3:
            plane = F.interpolate(acti, size=size[1:], mode="bilinear", align_corners=False)
            return plane.unsqueeze(2).expand(-1, -1, size[0], -1, -1)
        raise ValueError(f"a Grad-CAM map of shape {tuple(acti.shape[2:])} does not fit an input of {size}")

    return up


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    *,
    target_layer: str,
    class_index: int | np.ndarray | None = None,
    method: Method = "gradcam",
) -> np.ndarray:
    """Grad-CAM / Grad-CAM++ maps for a batch ``x`` (N, C, ...) at ``target_layer`` (dotted name).

    ``class_index`` is the class to explain (default: the predicted class of each sample).
    """
    from monai.visualize import GradCAM, GradCAMpp

    model.get_submodule(target_layer)  # a clear error for a wrong layer name
    cls = GradCAMpp if method == "gradcam++" else GradCAM
    was_training = model.training
    model.eval()
    try:
        cam = cls(
            nn_module=model, target_layers=target_layer, upsampler=_upsampler, postprocessing=lambda m: m
        )  # MONAI's default postprocessing flips magnitudes
        with torch.enable_grad():
            per_sample = class_index is not None and not np.isscalar(class_index)
            if per_sample or method == "gradcam++":
                # MONAI takes one class index per call, and its Grad-CAM++ broadcasts the class
                # score against the last spatial axis when the batch has more than one sample
                # (monai 1.6.1), so these cases run one sample at a time.
                classes = np.broadcast_to(np.asarray(-1 if class_index is None else class_index), (len(x),))
                maps = torch.cat(
                    [cam(x[i : i + 1], class_idx=None if c < 0 else int(c)) for i, c in enumerate(classes)]
                )
            else:
                maps = cam(x, class_idx=None if class_index is None else int(class_index))
    finally:
        model.train(was_training)
    return _normalize(maps.detach().cpu().numpy()[:, 0])


def occlusion_sensitivity(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    class_index: int | np.ndarray | None = None,
    patch: int = 8,
    stride: int | None = None,
    fill: float | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Model-agnostic map: how much the class probability drops when a patch is hidden.

    ``predict_proba`` maps an array (N, C, ...) to (N, K) probabilities; works for classical
    pipelines and deep models alike. Hand-written because MONAI's occlusion needs an nn.Module.
    """
    x = np.asarray(x, dtype=np.float32)
    stride = stride or max(1, patch // 2)
    spatial = x.shape[2:]
    base = predict_proba(x)
    if class_index is None:
        class_index = base.argmax(axis=1)
    class_index = np.broadcast_to(np.asarray(class_index), (len(x),))
    fill_value = float(x.mean()) if fill is None else fill

    starts = [range(0, max(s - patch, 0) + 1, stride) for s in spatial]
    grids = np.stack(np.meshgrid(*starts, indexing="ij"), axis=-1).reshape(-1, len(spatial))
    maps = np.zeros((len(x), *spatial), dtype=np.float32)
    counts = np.zeros(spatial, dtype=np.float32)
    for start in grids:
        sl = tuple(slice(int(s), int(s) + patch) for s in start)
        counts[sl] += 1
    for i in range(len(x)):
        occluded = np.repeat(x[i : i + 1], len(grids), axis=0)
        for j, start in enumerate(grids):
            sl = (j, slice(None), *(slice(int(s), int(s) + patch) for s in start))
            occluded[sl] = fill_value
        probs = np.concatenate(
            [predict_proba(occluded[k : k + batch_size]) for k in range(0, len(occluded), batch_size)]
        )
        drop = base[i, class_index[i]] - probs[:, class_index[i]]
        for j, start in enumerate(grids):
            sl = tuple(slice(int(s), int(s) + patch) for s in start)
            maps[i][sl] += drop[j]
    maps /= np.maximum(counts, 1)
    return _normalize(np.clip(maps, 0, None))
