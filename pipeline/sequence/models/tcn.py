"""``tcn``: three residual dilated 1-D convolutions over time (dilations 1, 2, 4: 15 neighbouring frames), then
the mean over time and the MLP head: order-aware, but local."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.schema import key
from pipeline.sequence.models import register_model


@dataclass
class TCNConfig:
    latent_dim: int = key(512, "width of the trainable projection of cached features (the convolutions' "
                          "channels)", min=1, max=16384, affects="training")
    hidden_dim: int = key(1024, "the head's hidden layer", min=1, max=16384, affects="training")
    dropout: float = key(0.5, "dropout in each block and before the head's layers", min=0.0, max=0.95,
                         affects="training")


register_model("tcn", TCNConfig, "pipeline.sequence.networks:TCN", __doc__)
