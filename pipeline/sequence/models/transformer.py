"""``transformer``: a pre-norm temporal Transformer encoder over the projected features, with learned position
embeddings for ``train.sequence_length`` frames, read out from a class token or the mean of the encoded frames,
then the MLP head."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ActrecError
from pipeline.sequence.models import register_model
from pipeline.sequence.models._layers import Projection, classifier_head


@register_model("transformer", keys=("latent_dim", "hidden_dim", "layers", "heads", "pooling", "dropout"))
class TemporalTransformer(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, latent_dim: int, hidden_dim: int, layers: int,
                 heads: int, pooling: str, dropout: float, length: int):
        super().__init__()
        if latent_dim % heads:
            raise ActrecError(f"model.latent_dim={latent_dim} is not a multiple of model.heads={heads}; each head "
                              f"takes latent_dim / heads channels: choose heads that divide latent_dim")
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

    @classmethod
    def from_config(cls, cfg, feature_dim: int, num_classes: int) -> TemporalTransformer:
        m = cfg.model
        return cls(feature_dim, num_classes, m.latent_dim, m.hidden_dim, m.layers, m.heads, m.pooling, m.dropout,
                   length=cfg.train.sequence_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = self.encoder(x + self.position[:, :x.shape[1]])
        return self.head(x[:, 0] if self.pooling == "cls" else x.mean(dim=1))
