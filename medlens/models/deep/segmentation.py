"""Deep segmentation networks (MONAI), registered by stable name for the ``segmentation`` task.

Every builder has the registry's signature
``build(*, in_channels, num_outputs, spatial_dims, img_size, **kw) -> nn.Module``; for these
networks ``img_size`` is the training patch size (an int means a square or a cube) and the
module maps a batch (N, C, *patch) to per-voxel logits (N, num_outputs, *patch), where
``num_outputs`` counts the background class. Inference runs them patch by patch
(:func:`medlens.inference.segment.sliding_window_proba`), so the patch size is all they need.

Registered names (2D and 3D):

- ``unet``: MONAI ``UNet``, 4 levels (16-32-64-128 channels, stride 2, two residual units per
  level); patch sides must be multiples of 8.
- ``dynunet``: MONAI ``DynUNet`` configured from the patch size as nnU-Net does
  (:func:`dynunet_strides`: halve an axis while it stays at least 4 voxels and divisible,
  up to 5 levels; 3x3(x3) kernels; residual blocks; 32 channels doubling to at most 320).
- ``segresnet``: MONAI ``SegResNet`` (16 initial filters, 1-2-2-4 down blocks); patch sides
  must be multiples of 8.

``spec.defaults``: ``lr``, ``batch_size``, ``divisor`` (what every patch side must divide into,
checked by the training configuration) and ``default_patch`` (the largest default patch side
per spatial dimensions).
"""

from __future__ import annotations

from typing import Any, Sequence

from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn

from medlens.data.sample import Task
from medlens.errors import MedlensError
from medlens.models.deep.networks import spatial_size
from medlens.models.registry import ModelSpec, register

SEGMENTATION_TASKS = (Task.SEGMENTATION.value,)
DYNUNET_MAX_LEVELS = 5  # downsamplings at most (nnU-Net's 3D default)
DYNUNET_MIN_SIDE = 4  # an axis is not halved below this many voxels


def build_unet(*, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
    """``unet``: MONAI UNet (kw overrides: channels, strides, num_res_units, dropout, norm)."""
    params: dict[str, Any] = dict(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="batch")
    params.update(kw)
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_outputs, **params)


def dynunet_strides(patch: Sequence[int]) -> list[list[int]]:
    """nnU-Net's rule for the pooling steps of a patch: the first level has stride 1; then each
    level halves every axis that stays at least :data:`DYNUNET_MIN_SIDE` and divisible by 2."""
    sides = [int(s) for s in patch]
    strides = [[1] * len(sides)]
    while len(strides) <= DYNUNET_MAX_LEVELS:
        step = [2 if s % 2 == 0 and s // 2 >= DYNUNET_MIN_SIDE else 1 for s in sides]
        if not any(v == 2 for v in step):
            break
        strides.append(step)
        sides = [s // v for s, v in zip(sides, step)]
    return strides


def build_dynunet(*, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
    """``dynunet``: MONAI DynUNet with nnU-Net's strides for the patch (kw overrides DynUNet's arguments)."""
    strides = dynunet_strides(spatial_size(img_size, spatial_dims))
    if len(strides) < 2:
        raise MedlensError(f"patch {img_size} is too small for dynunet (needs a side of at least 8)")
    params: dict[str, Any] = dict(
        kernel_size=[[3] * spatial_dims] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[min(32 * 2**i, 320) for i in range(len(strides))],
        norm_name="instance",
        res_block=True,
    )
    params.update(kw)
    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_outputs, **params)


def build_segresnet(*, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
    """``segresnet``: MONAI SegResNet (kw overrides: init_filters, blocks_down, blocks_up, dropout_prob)."""
    params: dict[str, Any] = dict(init_filters=16, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    params.update(kw)
    return SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_outputs, **params)


def _checked(name: str, builder):
    """Wrap ``builder``: a patch side the network cannot take is a clear MedlensError."""
    divisor = _DEFAULTS[name]["divisor"]

    def build(*, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
        if spatial_dims not in (2, 3):
            raise MedlensError(f"model '{name}' takes 2D or 3D images, not {spatial_dims}D")
        if num_outputs < 2:
            raise MedlensError(f"model '{name}' needs at least 2 classes (background and one label)")
        patch = spatial_size(img_size, spatial_dims)
        if any(s % divisor for s in patch):
            raise MedlensError(f"model '{name}' needs patch sides divisible by {divisor}, not {list(patch)}")
        return builder(
            in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, img_size=patch, **kw
        )

    build.__doc__ = builder.__doc__
    build.__name__ = f"build_{name}"
    return build


def _defaults(lr: float, batch_size: int, divisor: int) -> dict[str, Any]:
    return {"lr": lr, "batch_size": batch_size, "divisor": divisor, "default_patch": {2: 256, 3: 128}}


_DEFAULTS = {
    "unet": _defaults(2e-3, 8, 8),
    "dynunet": _defaults(2e-3, 4, 1),
    "segresnet": _defaults(2e-3, 4, 8),
}

_SPECS = [
    ("unet", build_unet, "MONAI U-Net, 4 levels 16-128 channels, residual units (segmentation)"),
    ("dynunet", build_dynunet, "MONAI DynUNet with nnU-Net's strides for the patch (segmentation)"),
    ("segresnet", build_segresnet, "MONAI SegResNet, 16 initial filters (segmentation)"),
]

for _name, _builder, _desc in _SPECS:
    register(
        ModelSpec(
            name=_name,
            kind="deep",
            dims=(2, 3),
            tasks=SEGMENTATION_TASKS,
            description=_desc,
            build=_checked(_name, _builder),
            defaults=_DEFAULTS[_name],
        )
    )
