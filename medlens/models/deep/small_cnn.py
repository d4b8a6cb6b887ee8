"""A small, fast 2D CNN: the workhorse for CPU training on 28-224 px images.

Four conv-BN-ReLU stages (channels 32, 64, 128, 192 by default, about 0.3 M parameters),
each followed by 2x2 max-pooling except the last, then global average pooling, dropout and
a linear head. Large inputs (>= 96 px) get a stride-2 stem and one extra pooling so the
cost per image stays moderate; the layer names do not change, so a checkpoint trained at one
size loads at another.

MONAI has no network this small (its ``Classifier``/``Regressor`` are strided-conv stacks
without pooling heads), so this one is written by hand from MONAI's ``Convolution`` blocks.

Module names used elsewhere: ``features.stage4`` is the last convolutional block (the
Grad-CAM layer), ``head.dropout`` is the dropout used for MC-dropout.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

DEFAULT_CHANNELS = (32, 64, 128, 192)
LARGE_INPUT = 96  # from this size on, the stem has stride 2 and there is one extra pooling


def _block(in_ch: int, out_ch: int, *, stride: int = 1) -> nn.Module:
    """conv 3x3 -> BatchNorm -> ReLU (MONAI ``Convolution`` with ADN order "NA")."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_ch,
        out_channels=out_ch,
        strides=stride,
        kernel_size=3,
        act="relu",
        norm="batch",
        adn_ordering="NA",
        bias=False,
    )


def _is_large(img_size: int | Sequence[int]) -> bool:
    """Whether the smallest side reaches :data:`LARGE_INPUT` (stride-2 stem, extra pooling)."""
    size = min(img_size) if isinstance(img_size, (tuple, list)) else int(img_size)
    return size >= LARGE_INPUT


def _head(channels: int, num_outputs: int, dropout: float) -> nn.Sequential:
    """Global average pooling, dropout (the MC-dropout layer ``head.dropout``) and a linear layer
    (``num_outputs`` 0: none, the pooled features are returned)."""
    head = nn.Sequential()
    head.add_module("pool", nn.AdaptiveAvgPool2d(1))
    head.add_module("flatten", nn.Flatten(1))
    head.add_module("dropout", nn.Dropout(dropout))
    head.add_module("fc", nn.Linear(channels, num_outputs) if num_outputs > 0 else nn.Identity())
    return head


class SmallCNN(nn.Module):
    """conv-BN-ReLU stages, global average pooling, dropout, linear.

    Args:
        in_channels: input channels (1 gray, 3 RGB, or the depth for slices-as-channels).
        num_outputs: logits returned per image; 0 gives a feature extractor returning the
            pooled (N, channels[-1]) features (no linear head).
        channels: output channels of the four stages.
        dropout: dropout probability before the linear head (kept > 0 for MC-dropout).
        img_size: typical input size; >= 96 px gives a stride-2 stem plus one extra pooling.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dropout: float = 0.3,
        img_size: int | Sequence[int] = 28,
    ):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"SmallCNN needs 4 stage widths, got {tuple(channels)}")
        large = _is_large(img_size)
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.features = nn.Sequential()
        self.features.add_module("stage1", _block(in_channels, c1, stride=2 if large else 1))
        self.features.add_module("pool1", nn.MaxPool2d(2))
        self.features.add_module("stage2", _block(c1, c2))
        self.features.add_module("pool2", nn.MaxPool2d(2))
        self.features.add_module("stage3", _block(c2, c3))
        # ceil_mode keeps a 1x1 map alive for tiny inputs (a 7x7 map pools to 4x4, not 3x3)
        self.features.add_module("pool3", nn.MaxPool2d(2, ceil_mode=True) if not large else nn.MaxPool2d(4))
        self.features.add_module("stage4", _block(c3, c4))
        self.head = _head(c4, num_outputs, dropout)
        self.out_features = c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, channels[-1]) before dropout and the head (used by the CNN-LSTM)."""
        return self.head.flatten(self.head.pool(self.features(x)))


MEDIUM_CHANNELS = (32, 64, 128)


class MediumCNN(nn.Module):
    """VGG-style: three stages of two conv-BN-ReLU blocks (32, 64, 128 channels by default, about
    0.29 M parameters), 2x2 max-pooling between stages, global average pooling, dropout, linear.

    Unlike :class:`SmallCNN` it convolves twice at full resolution before the first pooling, which
    costs about three times the compute per image at 28 px. Large inputs (>= 96 px) get a stride-2
    first convolution and a 4x4 pooling before the last stage. ``features.stage3`` is the
    Grad-CAM layer; ``head.dropout`` the MC-dropout.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        channels: Sequence[int] = MEDIUM_CHANNELS,
        dropout: float = 0.3,
        img_size: int | Sequence[int] = 28,
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"MediumCNN needs 3 stage widths, got {tuple(channels)}")
        large = _is_large(img_size)
        c1, c2, c3 = (int(c) for c in channels)
        self.features = nn.Sequential()
        self.features.add_module(
            "stage1", nn.Sequential(_block(in_channels, c1, stride=2 if large else 1), _block(c1, c1))
        )
        self.features.add_module("pool1", nn.MaxPool2d(2))
        self.features.add_module("stage2", nn.Sequential(_block(c1, c2), _block(c2, c2)))
        self.features.add_module("pool2", nn.MaxPool2d(4) if large else nn.MaxPool2d(2, ceil_mode=True))
        self.features.add_module("stage3", nn.Sequential(_block(c2, c3), _block(c3, c3)))
        self.head = _head(c3, num_outputs, dropout)
        self.out_features = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
