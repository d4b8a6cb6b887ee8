"""Deep classification networks, registered by stable name.

Every builder has the signature
``build(*, in_channels, num_outputs, spatial_dims, img_size, **kw) -> nn.Module``
and returns a module mapping a float32 batch (N, C, H, W) or (N, C, D, H, W), normalized to
about [0, 1], to logits (N, num_outputs). Output conventions (the training code relies on them):

- binary: ``num_outputs=2``, softmax cross-entropy; column 1 is the positive class.
- multi-class: K outputs, softmax cross-entropy.
- multi-label: L outputs, one sigmoid/BCE per label.
- ordinal: K outputs trained as plain K-class cross-entropy (the grade order is used by the
  metrics, e.g. an expected grade from the softmax, not by the network).

Registered names (``spec.dims`` in brackets):

- ``cnn-small`` [2D] hand-written ~0.3 M parameter CNN (:mod:`.small_cnn`), the CPU workhorse.
- ``cnn-medium`` [2D] hand-written VGG-style CNN (two convolutions per stage, ~0.29 M parameters).
- ``resnet18``, ``resnet50`` [2D] MONAI ``ResNet``. Inputs of at most 64 px get a 3x3 stride-1
  first conv and no max-pool (as MedMNIST's reference ResNets), larger ones the ImageNet stem
  (7x7 stride 2 + max-pool).
- ``densenet121`` [2D] MONAI ``DenseNet121``; for inputs of at most 64 px the stem is replaced
  the same way (3x3 stride-1 conv, no max-pool), otherwise a 28 px image would shrink to
  nothing before the last dense block.
- ``efficientnet-b0`` [2D] MONAI ``EfficientNetBN('efficientnet-b0')`` at 224 px. MONAI
  computes its "same" paddings from a fixed image size, so for other sizes the identical
  B0 network (same blocks, same state-dict keys) is built with ``EfficientNet(image_size=...)``.
- ``vit`` [2D] MONAI ``ViT`` (hidden 192, 6 layers, 3 heads, MLP 768), patch size chosen from
  ``img_size`` (:func:`vit_patch_size`), wrapped to return logits instead of a tuple.
- ``resnet18-3d`` [3D] MONAI ``ResNet`` with ``spatial_dims=3``. At most 32 voxels per side:
  3x3x3 stride-2 stem without max-pool; larger volumes: 7x7x7 stride-2 stem with max-pool
  (a stride-1 stem at 28^3 would cost ~10 GMAC per volume on CPU).
- ``cnn-2.5d`` [3D] slices as channels: a ``cnn-small`` whose input channels are
  ``in_channels * depth``. The depth is fixed when the model is built, by ``img_size``
  (an int means a cube, a tuple is (D, H, W)); inputs must be resampled to that depth.
- ``cnn-lstm`` [3D] shared 2D encoder per slice + bidirectional LSTM over slices
  (:mod:`.cnn_lstm`, hand-written glue); any depth.

``spec.defaults`` carries ``cam_layer`` (dotted name of the last conv block for Grad-CAM,
resolvable with ``model.get_submodule``), ``default_img_size``, ``lr``, ``batch_size`` and
``mc_dropout`` (whether the model has dropout layers for Monte-Carlo dropout).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.nets import DenseNet121, EfficientNet, EfficientNetBN, ViT, resnet18, resnet50
from torch import nn

from medlens.data.sample import Task
from medlens.errors import MedlensError
from medlens.models.deep.cnn_lstm import CNNLSTM
from medlens.models.deep.small_cnn import MediumCNN, SmallCNN
from medlens.models.registry import ModelSpec, register

CLASSIFICATION_TASKS = tuple(t.value for t in (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL, Task.ORDINAL))
SMALL_2D = 64  # inputs up to this size get the small-input stems (2D ResNets, DenseNet)
SMALL_3D = 32  # volumes up to this size get the 3x3x3 stride-2 stem (3D ResNet)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def spatial_size(img_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``img_size`` as a tuple of ``spatial_dims`` ints (an int means a square or a cube)."""
    if isinstance(img_size, int):
        return (int(img_size),) * spatial_dims
    size = tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise MedlensError(f"img_size {size} does not have {spatial_dims} spatial dimensions")
    return size


# --------------------------------------------------------------------------------------------
# 2D builders


def build_small_cnn(*, in_channels: int, num_outputs: int, spatial_dims: int = 2, img_size=28, **kw) -> nn.Module:
    """``cnn-small``: see :class:`~medlens.models.deep.small_cnn.SmallCNN` (kw: channels, dropout)."""
    return SmallCNN(in_channels, num_outputs, img_size=spatial_size(img_size, 2), **kw)


def build_medium_cnn(*, in_channels: int, num_outputs: int, spatial_dims: int = 2, img_size=28, **kw) -> nn.Module:
    """``cnn-medium``: see :class:`~medlens.models.deep.small_cnn.MediumCNN` (kw: channels, dropout)."""
    return MediumCNN(in_channels, num_outputs, img_size=spatial_size(img_size, 2), **kw)


def _build_resnet(factory, *, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
    size = spatial_size(img_size, spatial_dims)
    if spatial_dims == 2:
        small = min(size) <= SMALL_2D
        stem = (
            dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True)
            if small
            else dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
        )
    else:
        small = min(size) <= SMALL_3D
        stem = (
            dict(conv1_t_size=3, conv1_t_stride=2, no_max_pool=True)
            if small
            else dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
        )
    stem.update(kw)
    return factory(
        pretrained=False,
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_outputs,
        **stem,
    )


def build_resnet18(**kw) -> nn.Module:
    """``resnet18`` (2D) and ``resnet18-3d`` (3D): MONAI ResNet-18 with a size-dependent stem."""
    return _build_resnet(resnet18, **kw)


def build_resnet50(**kw) -> nn.Module:
    """``resnet50``: MONAI ResNet-50 (bottleneck blocks) with a size-dependent stem."""
    return _build_resnet(resnet50, **kw)


def build_densenet121(*, in_channels: int, num_outputs: int, spatial_dims: int = 2, img_size=64, **kw) -> nn.Module:
    """``densenet121``: MONAI DenseNet121; 3x3 stride-1 stem without max-pool up to 64 px."""
    model = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=num_outputs, **kw)
    if min(spatial_size(img_size, 2)) <= SMALL_2D:
        init_features = model.features.conv0.out_channels
        model.features.conv0 = nn.Conv2d(in_channels, init_features, kernel_size=3, stride=1, padding=1, bias=False)
        model.features.pool0 = nn.Identity()
    return model


# B0's block definitions, as in MONAI's EfficientNetBN (which does not expose image_size)
_B0_BLOCKS = [
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]


EFFICIENTNET_NORM = ("batch", {"eps": 1e-3, "momentum": 0.1})  # MONAI's eps; PyTorch's momentum


def build_efficientnet_b0(
    *, in_channels: int, num_outputs: int, spatial_dims: int = 2, img_size=224, **kw
) -> nn.Module:
    """``efficientnet-b0``: MONAI EfficientNet-B0 with paddings computed for ``img_size``.

    BatchNorm keeps PyTorch's running-statistics momentum (0.1), not MONAI's TensorFlow-style 0.01:
    with 0.01 the statistics lag the weights over a short schedule. On PneumoniaMNIST (10 epochs,
    seed 0, validation split): mean p(pneumonia) 0.84 against a prevalence of 0.74, ACC at 0.5
    0.746, AUC 0.984; with 0.1: mean p 0.74, ACC 0.945, AUC 0.985 (chosen on validation). The
    momentum only acts in training: trained weights load and answer the same either way."""
    size = max(spatial_size(img_size, 2))
    if size == 224 and not kw:
        return EfficientNetBN(
            "efficientnet-b0",
            pretrained=False,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=num_outputs,
            norm=EFFICIENTNET_NORM,
        )
    params: dict[str, Any] = dict(width_coefficient=1.0, depth_coefficient=1.0, dropout_rate=0.2, drop_connect_rate=0.2)
    params.update(kw)
    return EfficientNet(
        blocks_args_str=_B0_BLOCKS,
        spatial_dims=2,
        in_channels=in_channels,
        num_classes=num_outputs,
        image_size=size,
        norm=EFFICIENTNET_NORM,
        **params,
    )


def vit_patch_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    """Per axis, the largest patch of (16, 14, 8, 7, 4, 2) that divides the size into >= 7 patches.

    28 px -> 4 (7x7 tokens), 32 -> 4 (8x8), 64 -> 8 (8x8), 224 -> 16 (14x14). Falls back to
    1 (one token per pixel) for sizes no candidate divides, e.g. prime sizes.
    """
    out = []
    for s in spatial_size(img_size, 2):
        out.append(next((p for p in (16, 14, 8, 7, 4, 2) if s % p == 0 and s // p >= 7), 1))
    return out[0], out[1]


class ViTClassifier(nn.Module):
    """MONAI ViT returning logits, with a spatial hook point for Grad-CAM.

    MONAI's ViT returns ``(logits, hidden_states)`` and, for classification, ends in a Tanh by
    default; this wrapper uses a plain linear head and returns logits only. The patch tokens
    entering the last transformer block pass through ``cam_map`` (an identity) reshaped to
    (N, hidden, h, w), so Grad-CAM can hook a real feature map (the CLS token's gradient
    reaches the patch tokens through the last block's attention).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_outputs: int,
        img_size,
        hidden_size: int = 192,
        num_layers: int = 6,
        num_heads: int = 3,
        mlp_dim: int = 768,
        dropout_rate: float = 0.1,
        patch_size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        size = spatial_size(img_size, 2)
        patch = vit_patch_size(size) if patch_size is None else spatial_size(patch_size, 2)
        if any(s % p for s, p in zip(size, patch)):
            raise MedlensError(f"ViT patch size {patch} does not divide img_size {size}")
        self.grid = (size[0] // patch[0], size[1] // patch[1])
        self.patch = patch
        self.vit = ViT(
            in_channels=in_channels,
            img_size=size,
            patch_size=patch,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            classification=True,
            num_classes=num_outputs,
            dropout_rate=dropout_rate,
            spatial_dims=2,
            post_activation=None,
        )
        for block in self.vit.blocks:
            # MONAI builds this LayerNorm even without cross-attention; unused parameters would
            # break DistributedDataParallel (find_unused_parameters) and plain gradient checks
            if not block.with_cross_attention:
                block.norm_cross_attn = nn.Identity()
        self.cam_map = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.classification_head(self.tokens(x)[:, 0])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The normalized tokens after the last block (N, 1 + patches, hidden): the CLS token,
        then the patches in row-major order of the patch grid (what masked-image pretraining reads)."""
        vit = self.vit
        tokens = vit.patch_embedding(x)
        tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        for block in vit.blocks[:-1]:
            tokens = block(tokens)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        n, _, c = patches.shape
        fmap = self.cam_map(patches.transpose(1, 2).reshape(n, c, *self.grid))
        tokens = torch.cat([cls, fmap.reshape(n, c, -1).transpose(1, 2)], dim=1)
        return vit.norm(vit.blocks[-1](tokens))


def build_vit(*, in_channels: int, num_outputs: int, spatial_dims: int = 2, img_size=32, **kw) -> nn.Module:
    """``vit``: a small MONAI ViT (kw: hidden_size, num_layers, num_heads, mlp_dim, dropout_rate, patch_size)."""
    return ViTClassifier(in_channels=in_channels, num_outputs=num_outputs, img_size=img_size, **kw)


# --------------------------------------------------------------------------------------------
# 3D builders


class SlicesAsChannels(nn.Module):
    """2.5D: fold the depth axis of (N, C, D, H, W) into channels and run a 2D ``SmallCNN``.

    The depth is fixed at build time; a volume of another depth is an error (resample first).
    """

    def __init__(self, in_channels: int, num_outputs: int, depth: int, img_size: tuple[int, int], **kw):
        super().__init__()
        self.in_channels = in_channels
        self.depth = depth
        self.cnn = SmallCNN(in_channels * depth, num_outputs, img_size=img_size, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels or x.shape[2] != self.depth:
            raise ValueError(
                f"cnn-2.5d was built for (N, {self.in_channels}, {self.depth}, H, W) volumes, got {tuple(x.shape)}"
            )
        n, c, d, h, w = x.shape
        return self.cnn(x.reshape(n, c * d, h, w))


def build_cnn_25d(*, in_channels: int, num_outputs: int, spatial_dims: int = 3, img_size=28, **kw) -> nn.Module:
    """``cnn-2.5d``: slices as channels; depth = ``img_size[0]`` (or ``img_size`` for a cube)."""
    d, h, w = spatial_size(img_size, 3)
    return SlicesAsChannels(in_channels, num_outputs, d, (h, w), **kw)


def build_cnn_lstm(*, in_channels: int, num_outputs: int, spatial_dims: int = 3, img_size=28, **kw) -> nn.Module:
    """``cnn-lstm``: per-slice CNN + BiLSTM (kw: hidden_size, num_layers, pooling, dropout)."""
    _, h, w = spatial_size(img_size, 3)
    return CNNLSTM(in_channels, num_outputs, img_size=(h, w), **kw)


# --------------------------------------------------------------------------------------------
# registration


def _checked(name: str, dims: tuple[int, ...], builder):
    """Wrap ``builder`` so a wrong ``spatial_dims`` is a clear MedlensError."""

    def build(*, in_channels: int, num_outputs: int, spatial_dims: int, img_size, **kw) -> nn.Module:
        if spatial_dims not in dims:
            want = " or ".join(f"{d}D" for d in dims)
            raise MedlensError(f"model '{name}' takes {want} images, not {spatial_dims}D")
        if in_channels < 1 or num_outputs < 1:
            raise MedlensError(f"model '{name}': in_channels and num_outputs must be >= 1")
        return builder(
            in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, img_size=img_size, **kw
        )

    build.__doc__ = builder.__doc__
    build.__name__ = f"build_{name}"
    return build


def _defaults(cam_layer: str, img: int, lr: float, batch: int, mc: bool) -> dict[str, Any]:
    return {"cam_layer": cam_layer, "default_img_size": img, "lr": lr, "batch_size": batch, "mc_dropout": mc}


_SPECS = [
    (
        "cnn-small",
        (2,),
        build_small_cnn,
        "Small 4-stage CNN (~0.3M params), fast on CPU",
        _defaults("features.stage4", 28, 1e-3, 128, True),
    ),
    (
        "cnn-medium",
        (2,),
        build_medium_cnn,
        "VGG-style CNN, 3 stages x 2 convs (~0.29M params)",
        _defaults("features.stage3", 28, 1e-3, 128, True),
    ),
    (
        "resnet18",
        (2,),
        build_resnet18,
        "MONAI ResNet-18 (3x3 stem up to 64 px)",
        _defaults("layer4", 28, 1e-3, 64, False),
    ),
    (
        "resnet50",
        (2,),
        build_resnet50,
        "MONAI ResNet-50 (3x3 stem up to 64 px)",
        _defaults("layer4", 28, 1e-3, 64, False),
    ),
    (
        "densenet121",
        (2,),
        build_densenet121,
        "MONAI DenseNet-121 (3x3 stem up to 64 px)",
        _defaults("class_layers.relu", 32, 1e-3, 64, False),
    ),
    (
        "efficientnet-b0",
        (2,),
        build_efficientnet_b0,
        "MONAI EfficientNet-B0 (paddings for the image size)",
        _defaults("_bn1", 64, 1e-3, 64, True),
    ),
    (
        "vit",
        (2,),
        build_vit,
        "Small MONAI ViT (192 hidden, 6 layers, 3 heads)",
        _defaults("cam_map", 32, 3e-4, 128, True),
    ),
    ("resnet18-3d", (3,), build_resnet18, "MONAI 3D ResNet-18", _defaults("layer4", 28, 1e-3, 16, False)),
    (
        "cnn-2.5d",
        (3,),
        build_cnn_25d,
        "2.5D: slices as channels of a small 2D CNN (depth fixed by img_size)",
        _defaults("cnn.features.stage4", 28, 1e-3, 64, True),
    ),
    (
        "cnn-lstm",
        (3,),
        build_cnn_lstm,
        "Per-slice 2D CNN + bidirectional LSTM over slices",
        _defaults("encoder.features.stage4", 28, 1e-3, 32, True),
    ),
]

for _name, _dims, _builder, _desc, _defs in _SPECS:
    register(
        ModelSpec(
            name=_name,
            kind="deep",
            dims=_dims,
            tasks=CLASSIFICATION_TASKS,
            description=_desc,
            build=_checked(_name, _dims, _builder),
            defaults=_defs,
        )
    )
