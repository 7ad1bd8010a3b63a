"""Layers the sequence models share: the trainable projection of frozen features, pooling over time, the head."""

from __future__ import annotations

import torch
from torch import nn


class Projection(nn.Module):
    """Frozen-backbone features ``[B, T, D]`` -> a trainable latent space ``[B, T, latent_dim]``.

    BatchNorm over all frames of the batch removes each channel's offset: frozen features share a
    large common component (most of a frame is background) that would otherwise drown the motion.
    """

    def __init__(self, feature_dim: int, latent_dim: int):
        super().__init__()
        self.linear = nn.Linear(feature_dim, latent_dim)
        self.norm = nn.BatchNorm1d(latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return torch.relu(self.norm(x.flatten(0, 1)).view_as(x))


def classifier_head(in_dim: int, hidden_dim: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Pooled clip vector -> class logits."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, num_classes),
    )


class AttentionPool(nn.Module):
    """A learned score per timestep, softmax over time, weighted sum of the timesteps."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(x).squeeze(-1), dim=1)  # [B, T]
        return torch.einsum("bt,btc->bc", weights, x)


class MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)
