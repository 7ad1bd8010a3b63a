"""The sequence networks: frozen features ``[B, T, D]`` -> class logits ``[B, num_classes]`` (the softmax lives in
the loss and in evaluation), and the layers they share.

Each network is built as ``Network(feature_dim, num_classes, length, **settings)``: ``length`` is the longest
clip it sees (``train.sequence_length``), ``settings`` its model's keys (``pipeline/sequence/models/NAME.py``
declares them and registers the network, without importing this module).
"""

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


class BiLSTM(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, length: int, latent_dim: int, hidden_dim: int,
                 layers: int, bidirectional: bool, attention: bool, dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.lstm = nn.LSTM(latent_dim, hidden_dim, num_layers=layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        out_dim = hidden_dim * (2 if bidirectional else 1)
        self.pool = AttentionPool(out_dim) if attention else MeanPool()
        self.head = classifier_head(out_dim, hidden_dim, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.project(x))
        return self.head(self.pool(x))


class MeanPoolModel(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, length: int, latent_dim: int, hidden_dim: int,
                 dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.head = classifier_head(latent_dim, hidden_dim, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.project(x).mean(dim=1))


class LinearProbe(nn.Module):
    # Normalised per channel (BatchNorm without learned scale: still one linear map at inference).
    def __init__(self, feature_dim: int, num_classes: int, length: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.linear = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.mean(dim=1)))


class TemporalBlock(nn.Module):
    """A residual dilated convolution over time (same length in and out)."""

    def __init__(self, channels: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation)
        self.norm = nn.BatchNorm1d(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.relu(self.norm(self.conv(x))))


class TCN(nn.Module):
    # Three blocks with dilations 1, 2, 4 see 15 neighbouring frames: local motion order, not the whole clip.
    dilations = (1, 2, 4)

    def __init__(self, feature_dim: int, num_classes: int, length: int, latent_dim: int, hidden_dim: int,
                 dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.blocks = nn.Sequential(*[TemporalBlock(latent_dim, d, dropout) for d in self.dilations])
        self.head = classifier_head(latent_dim, hidden_dim, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.project(x).transpose(1, 2))  # [B, C, T]
        return self.head(x.mean(dim=2))


class TemporalTransformer(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, length: int, latent_dim: int, hidden_dim: int,
                 layers: int, heads: int, pooling: str, dropout: float):
        super().__init__()
        self.pooling = pooling
        self.project = Projection(feature_dim, latent_dim)
        # A clip has at most `length` frames (train.sequence_length), plus the class token in front.
        tokens = length + (pooling == "cls")
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, latent_dim), std=0.02))
        if pooling == "cls":
            self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, latent_dim), std=0.02))
        layer = nn.TransformerEncoderLayer(latent_dim, heads, dim_feedforward=hidden_dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # Pre-norm layers leave their output unnormalised: one LayerNorm closes the stack.
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(latent_dim),
                                             enable_nested_tensor=False)
        self.head = classifier_head(latent_dim, hidden_dim, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = self.encoder(x + self.position[:, :x.shape[1]])
        return self.head(x[:, 0] if self.pooling == "cls" else x.mean(dim=1))
