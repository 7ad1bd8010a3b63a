"""``bilstm``: a (bi)directional LSTM over the projected features, then attention pooling or the mean of all
timesteps, then the MLP head."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.sequence.models import register_model
from pipeline.sequence.models._layers import AttentionPool, MeanPool, Projection, classifier_head


@register_model("bilstm", keys=("latent_dim", "hidden_dim", "layers", "bidirectional", "attention", "dropout"))
class BiLSTM(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, latent_dim: int, hidden_dim: int, layers: int,
                 bidirectional: bool, attention: bool, dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.lstm = nn.LSTM(latent_dim, hidden_dim, num_layers=layers, batch_first=True,
                            bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        out_dim = hidden_dim * (2 if bidirectional else 1)
        self.pool = AttentionPool(out_dim) if attention else MeanPool()
        self.head = classifier_head(out_dim, hidden_dim, num_classes, dropout)

    @classmethod
    def from_config(cls, cfg, feature_dim: int, num_classes: int) -> BiLSTM:
        m = cfg.model
        return cls(feature_dim, num_classes, m.latent_dim, m.hidden_dim, m.layers, m.bidirectional, m.attention,
                   m.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.project(x))
        return self.head(self.pool(x))
