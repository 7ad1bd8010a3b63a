"""``bilstm``: a (bi)directional LSTM over the projected features, then attention pooling or the mean of all
timesteps, then the MLP head."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.schema import key
from pipeline.sequence.models import register_model


@dataclass
class BiLSTMConfig:
    latent_dim: int = key(512, "width of the trainable projection of cached features", min=1, max=16384,
                          affects="training")
    hidden_dim: int = key(1024, "LSTM hidden size per direction and the head's hidden layer", min=1, max=16384,
                          affects="training")
    layers: int = key(1, "LSTM layers", min=1, max=16, affects="training")
    bidirectional: bool = key(True, "bidirectional LSTM", affects="training")
    attention: bool = key(True, "attention pooling over time (else mean over all timesteps)", affects="training")
    dropout: float = key(0.5, "dropout before the head's layers and between LSTM layers", min=0.0, max=0.95,
                         affects="training")


register_model("bilstm", BiLSTMConfig, "pipeline.sequence.networks:BiLSTM", __doc__)
