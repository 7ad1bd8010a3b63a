"""The sequence-model registry: ``model.name`` -> a model class, and the ``model.*`` keys each model uses.

A model is one module of this package, named after the model, whose class registers itself::

    @register_model("tcn", keys=("latent_dim", "hidden_dim", "dropout"))
    class TCN(nn.Module):
        @classmethod
        def from_config(cls, cfg, feature_dim, num_classes): ...

Every model maps features ``[B, T, D]`` to logits ``[B, num_classes]`` (the softmax lives in the loss and in
evaluation). Listing the names reads this folder only (modules starting with ``_`` hold shared layers), so the
config schema takes its ``model.name`` choices from here without importing torch; a model's module is imported
when it is built or asked for its keys.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ActrecError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    keys: tuple[str, ...]  # the model.* keys (without the section) that the model reads
    cls: type


_MODELS: dict[str, ModelSpec] = {}


def model_names() -> list[str]:
    """The registered models' names, from this package's module files (no import of the models)."""
    return sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if not info.name.startswith("_"))


def register_model(name: str, keys: tuple[str, ...]):
    """Class decorator: register a model under ``name`` (its module's name) with the ``model.*`` keys it reads."""
    def register(cls):
        module = cls.__module__.rsplit(".", 1)[-1]
        if module != name:
            raise ValueError(f"model {name!r} must live in models/{name}.py, not in {module}.py")
        _MODELS[name] = ModelSpec(name, tuple(keys), cls)
        return cls
    return register


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name`` (its module imported on first use)."""
    if name not in model_names():
        raise ActrecError(f"model.name: unknown model {name!r}. Allowed: {', '.join(model_names())}")
    if name not in _MODELS:
        importlib.import_module(f"{__name__}.{name}")
    return _MODELS[name]


def build_model(cfg, feature_dim: int, num_classes: int):
    """The model named by ``cfg.model.name`` for features of width ``feature_dim``."""
    return model_spec(cfg.model.name).cls.from_config(cfg, feature_dim, num_classes)


def used_model_keys(name: str) -> set[str]:
    """Dotted ``model.*`` keys that model ``name`` reads (``model.name`` included)."""
    return {"model.name"} | {f"model.{key}" for key in model_spec(name).keys}


def ignored_model_keys(config: dict) -> list[str]:
    """Dotted ``model.*`` keys of a resolved config (``Config.to_dict()`` form) set to something other than
    their default although its model does not read them, in schema order."""
    from pipeline.config import ModelConfig

    defaults, used = ModelConfig().__dict__, used_model_keys(config["model"]["name"])
    return [f"model.{key}" for key, value in config["model"].items()
            if f"model.{key}" not in used and key in defaults and str(value) != str(defaults[key])]
