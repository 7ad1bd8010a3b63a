"""``linear``: a linear probe on the mean feature over time, the standard frozen-feature baseline (order-blind).

The features are normalised per channel (BatchNorm without learned scale: still one linear map at inference),
since frozen features share a large common offset; no projection, no hidden layer, no model.* key.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.sequence.models import register_model


@register_model("linear", keys=())
class LinearProbe(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.linear = nn.Linear(feature_dim, num_classes)

    @classmethod
    def from_config(cls, cfg, feature_dim: int, num_classes: int) -> LinearProbe:
        return cls(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.mean(dim=1)))
