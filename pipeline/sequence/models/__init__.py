"""The sequence-model registry: ``model.name`` -> a model class, and the ``model.*`` keys each model uses.

A model is one module of this package, named after the model, whose class registers itself::

    @register_model("tcn", keys=("latent_dim", "hidden_dim", "dropout"))
    class TCN(nn.Module):
        @classmethod
        def from_config(cls, cfg, feature_dim, num_classes): ...

Every model maps features ``[B, T, D]`` to logits ``[B, num_classes]`` (the softmax lives in the loss and in
evaluation). Listing the names reads this folder only (modules starting with ``_`` hold shared layers), so the
config schema takes its ``model.name`` choices from here without importing torch; a model's module is imported
when it is built; its keys are read from its source.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ActrecError

if TYPE_CHECKING:
    from pipeline.config import Config


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


def build_model(cfg: Config, feature_dim: int, num_classes: int):
    """The model named by ``cfg.model.name`` for features of width ``feature_dim``."""
    return model_spec(cfg.model.name).cls.from_config(cfg, feature_dim, num_classes)


def used_model_keys(name: str) -> set[str]:
    """Dotted ``model.*`` keys that model ``name`` reads (``model.name`` included).

    Read from the ``keys=`` of the module's ``@register_model`` call without importing the module, so planning a
    sweep and grouping runs in a report need no torch (a test checks it agrees with the registered keys)."""
    if name not in model_names():
        raise ActrecError(f"model.name: unknown model {name!r}. Allowed: {', '.join(model_names())}")
    return {"model.name"} | {f"model.{key}" for key in _declared_keys(name)}


@functools.lru_cache(maxsize=None)
def _declared_keys(name: str) -> tuple[str, ...]:
    tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_model":
            keys = next(k.value for k in node.keywords if k.arg == "keys")
            return tuple(ast.literal_eval(keys))
    raise ActrecError(f"pipeline/sequence/models/{name}.py registers no model (no @register_model(...) call)")


def ignored_model_keys(config: dict) -> list[str]:
    """Dotted ``model.*`` keys of a resolved config (``Config.to_dict()`` form) set to something other than
    their default although its model does not read them, in schema order."""
    from pipeline.config import ModelConfig

    defaults, used = ModelConfig().__dict__, used_model_keys(config["model"]["name"])
    return [f"model.{key}" for key, value in config["model"].items()
            if f"model.{key}" not in used and key in defaults and str(value) != str(defaults[key])]
