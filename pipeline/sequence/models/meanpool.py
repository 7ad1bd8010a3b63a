"""``meanpool``: the mean over time of the projected features, then the MLP head: blind to frame order."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.schema import key
from pipeline.sequence.models import register_model


@dataclass
class MeanPoolConfig:
    latent_dim: int = key(512, "width of the trainable projection of cached features", min=1, max=16384,
                          affects="training")
    hidden_dim: int = key(1024, "the head's hidden layer", min=1, max=16384, affects="training")
    dropout: float = key(0.5, "dropout before the head's layers", min=0.0, max=0.95, affects="training")


register_model("meanpool", MeanPoolConfig, "pipeline.sequence.networks:MeanPoolModel", __doc__)
