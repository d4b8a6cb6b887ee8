"""CNN-LSTM for volumes read as a sequence of 2D slices.

A shared 2D encoder (:class:`~medlens.models.deep.small_cnn.SmallCNN` features) embeds every
slice of an (N, C, D, H, W) batch, a bidirectional LSTM reads the D slice embeddings in order,
and the sequence is pooled over slices (attention, mean, or the last LSTM states) before a
dropout + linear head. Any depth D >= 1 works: the LSTM does not care about sequence length.

This is hand-written glue: MONAI has 2D encoders but no slice-sequence classifier.

Grad-CAM: the encoder's last conv block (``encoder.features.stage4``) sees the slices folded
into the batch axis, so its activations have shape (N * D, C', h, w); reshape them to
(N, D, C', h, w) to get one map per slice.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from medlens.models.deep.small_cnn import SmallCNN

Pooling = Literal["attention", "mean", "last"]


class CNNLSTM(nn.Module):
    """Shared per-slice 2D CNN -> bidirectional LSTM over slices -> pooling -> linear head.

    Args:
        in_channels: channels per slice.
        num_outputs: logits per volume.
        hidden_size: LSTM hidden units per direction.
        num_layers: stacked LSTM layers.
        pooling: "attention" (learned softmax weights over slices), "mean", or "last"
            (concatenated final forward state and final backward state).
        dropout: dropout before the head (kept > 0 for MC-dropout).
        img_size: in-plane size of a slice, passed to the encoder.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        hidden_size: int = 128,
        num_layers: int = 1,
        pooling: Pooling = "attention",
        dropout: float = 0.3,
        img_size: int | tuple[int, ...] = 28,
    ):
        super().__init__()
        if pooling not in ("attention", "mean", "last"):
            raise ValueError(f"pooling must be 'attention', 'mean' or 'last', got {pooling!r}")
        self.pooling = pooling
        self.encoder = SmallCNN(in_channels, 0, img_size=img_size, dropout=0.0)
        self.lstm = nn.LSTM(
            input_size=self.encoder.out_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
        )
        if pooling == "attention":
            self.attention = nn.Linear(2 * hidden_size, 1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * hidden_size, num_outputs)
        self.last_attention: torch.Tensor | None = None  # (N, D) weights of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"CNN-LSTM expects (N, C, D, H, W), got shape {tuple(x.shape)}")
        n, c, d, h, w = x.shape
        slices = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
        feats = self.encoder.embed(slices).reshape(n, d, -1)  # (N, D, F)
        seq, (h_n, _) = self.lstm(feats)  # seq: (N, D, 2*hidden)
        if self.pooling == "attention":
            weights = torch.softmax(self.attention(seq).squeeze(-1), dim=1)  # (N, D)
            self.last_attention = weights.detach()
            pooled = (weights.unsqueeze(-1) * seq).sum(dim=1)
        elif self.pooling == "mean":
            pooled = seq.mean(dim=1)
        else:  # last layer's final forward and backward states
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1)
        return self.fc(self.dropout(pooled))
