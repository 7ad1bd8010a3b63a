"""``meanpool``: the mean over time of the projected features, then the MLP head: blind to frame order."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.sequence.models import register_model
from pipeline.sequence.models._layers import Projection, classifier_head


@register_model("meanpool", keys=("latent_dim", "hidden_dim", "dropout"))
class MeanPoolModel(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, latent_dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.project = Projection(feature_dim, latent_dim)
        self.head = classifier_head(latent_dim, hidden_dim, num_classes, dropout)

    @classmethod
    def from_config(cls, cfg, feature_dim: int, num_classes: int) -> MeanPoolModel:
        m = cfg.model
        return cls(feature_dim, num_classes, m.latent_dim, m.hidden_dim, m.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.project(x).mean(dim=1))
