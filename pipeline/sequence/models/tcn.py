"""``tcn``: a few residual dilated 1-D convolutions over time, then the mean over time and the MLP head:
order-aware, but local."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.sequence.models import register_model
from pipeline.sequence.models._layers import Projection, classifier_head


class TemporalBlock(nn.Module):
    """A residual dilated convolution over time (same length in and out)."""

    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.norm(self.conv(x))))


@register_model("tcn", keys=("latent_dim", "hidden_dim", "dropout"))
class TCN(nn.Module):
    # Three blocks with dilations 1, 2, 4 see 15 neighbouring frames: local motion order, not the whole clip.
    dilations = (1, 2, 4)

    def __init__(self, feature_dim: int, num_classes: int, latent_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.blocks = nn.Sequential(*[TemporalBlock(latent_dim, d, dropout) for d in self.dilations])
        self.head = classifier_head(latent_dim, hidden_dim, num_classes, dropout)

    @classmethod
    def from_config(cls, cfg, feature_dim: int, num_classes: int) -> TCN:
        m = cfg.model
        return cls(feature_dim, num_classes, m.latent_dim, m.hidden_dim, m.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.project(x).transpose(1, 2))  # [B, C, T]
        return self.head(x.mean(dim=2))
