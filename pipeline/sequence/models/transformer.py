"""``transformer``: a pre-norm temporal Transformer encoder over the projected features, with learned position
embeddings for ``train.sequence_length`` frames, read out from a class token or the mean of the encoded frames,
then the MLP head."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ActrecError
from pipeline.schema import key
from pipeline.sequence.models import register_model


@dataclass
class TransformerConfig:
    latent_dim: int = key(512, "the model width (the projection of cached features)", min=1, max=16384,
                          affects="training")
    hidden_dim: int = key(1024, "the feed-forward width of each encoder layer and the head's hidden layer", min=1,
                          max=16384, affects="training")
    layers: int = key(1, "encoder layers", min=1, max=16, affects="training")
    heads: int = key(4, "attention heads (a divisor of model.latent_dim)", min=1, max=64, affects="training")
    pooling: str = key("cls", "read the clip out of a class token ('cls') or the mean of the encoded frames "
                       "('mean')", choices=["cls", "mean"], affects="training")
    dropout: float = key(0.5, "dropout in each encoder layer and before the head's layers", min=0.0, max=0.95,
                         affects="training")

    def check(self) -> None:
        if self.latent_dim % self.heads:
            raise ActrecError(f"model.latent_dim={self.latent_dim} is not a multiple of model.heads={self.heads}; "
                              f"each head takes latent_dim / heads channels: choose heads that divide latent_dim")


register_model("transformer", TransformerConfig, "pipeline.sequence.networks:TemporalTransformer", __doc__)
