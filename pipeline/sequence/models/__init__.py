"""The sequence-model registry: ``model.name`` -> a network from features ``[B, T, D]`` to logits
``[B, num_classes]``, with the ``model.*`` keys it takes.

A model is its settings dataclass and its network, registered together (fairseq's ``register_model``)::

    @dataclass
    class MyLSTMConfig:
        hidden_dim: int = key(256, "LSTM width", min=1, affects="training")

    @register_model("mylstm", dataclass=MyLSTMConfig)
    class MyLSTM(nn.Module):
        def __init__(self, feature_dim, num_classes, length, hidden_dim): ...

The built-ins (one module per model here) register their network as ``"pipeline.sequence.networks:Name"``,
so reading the registry (the config schema does, for ``model.name`` and its keys) imports no torch; the network
is imported when a model is built. ``length`` is the longest clip the network sees (``train.sequence_length``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.registry import registry

if TYPE_CHECKING:
    from pipeline.config import Config

MODELS = registry("model")


def register_model(name: str, dataclass: type | None = None, build: Any = None, help: str = ""):
    """Register a model: ``build`` (a network class, a callable or ``"module:attribute"``) called as
    ``build(feature_dim, num_classes, length, **settings)``; without ``build``, a decorator."""
    return MODELS.register(name, dataclass, build, help)


def model_settings(cfg: Config) -> dict:
    """The keys of ``cfg``'s model (``model.name`` left out) with their values."""
    return MODELS.get(cfg.model.name, "model.name").values(cfg.model)


def build_model(cfg: Config, feature_dim: int, num_classes: int):
    """The model ``cfg.model`` describes, for features of width ``feature_dim``."""
    return MODELS.build(cfg.model.name, feature_dim, num_classes, cfg.train.sequence_length, **model_settings(cfg))
