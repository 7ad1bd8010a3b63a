"""The backbone libraries: which library a backbone name belongs to, and one way to check, build and list them.

Names: a plain name (``resnet152``) is torchvision's; ``timm/<model>[.<tag>]`` is timm's;
``open_clip/<architecture>[:<tag>]`` is OpenCLIP's. Each library is one module of this package
with the same functions (``check_name``, ``named``, ``identity``, ``card``, ``build``, ``rows``,
``preprocess_names``, ``weights_hint``; constants ``PACKAGE`` and ``INSTALL``), registered in the ``backbone``
registry (``libraries.py``) under the prefix of its names and imported only when a name asks for it: adding a
library is one module and its registration. This module imports no torch; ``load`` does.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pipeline.embed.backbones.card import Card  # before `def card` below, which must win the name
from pipeline.errors import ActrecError
from pipeline.optional import require
from pipeline.registry import registry

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

LIBRARIES = registry("backbone")
RANDOM_INIT_SEED = 0  # weights=none is a fixed random network, so resumed and repeated runs agree


def library(name: str) -> ModuleType:
    """The library module ``name`` (a registered library); refused with the install command if not installed."""
    module = LIBRARIES.get(name, "embed.backbone").load()
    require(module.PACKAGE, f"{name} backbones")
    return module


def resolve(backbone: str) -> tuple[ModuleType, str]:
    """``embed.backbone`` -> its library module and the library's own name for the model."""
    prefix, slash, rest = backbone.partition("/")
    named = {LIBRARIES.get(name).attrs["prefix"]: name for name in LIBRARIES.names()}
    if slash and f"{prefix}/" in named:
        return library(named[f"{prefix}/"]), rest
    return library(named[""]), backbone


def check_weights(backbone: str, weights: str) -> None:
    """Refuse an ``embed.weights`` that is neither 'none', the library's weights or tag, nor an existing file."""
    module, name = resolve(backbone)
    module.check_name(name)
    if weights != "none" and not module.named(name, weights) and not Path(weights).is_file():
        raise ActrecError(f"embed.weights={weights}: no such file; use 'imagenet' (the pretrained weights), 'none' "
                          f"(random init), a path to a state dict or {module.weights_hint(name)}")


def weights_identity(backbone: str, weights: str) -> str:
    """What the features' weights are: the library's weights (resolved), a seeded random init, or a file's
    SHA-256. The cache fingerprint records it."""
    if weights == "none":
        return f"none (random init, seed {RANDOM_INIT_SEED})"
    from pipeline.embed.backbones import weightfile

    module, name = resolve(backbone)
    module.check_name(name)
    return module.identity(name, weights) or weightfile.identity(weights)


def card(backbone: str, weights: str, preprocess: str = "auto") -> Card:
    """The preprocessing the backbone's weights expect, from the library's metadata (nothing downloads).

    ``preprocess`` (``embed.preprocess``) names the weights or tag whose preprocessing a random init or a
    state dict gets; 'auto' is the backbone's default (its tag's, for a name with a tag)."""
    module, name = resolve(backbone)
    module.check_name(name)
    if preprocess != "auto":
        if module.named(name, weights):
            raise ActrecError(f"embed.preprocess={preprocess}: applies to embed.weights=none or a state dict file; "
                              f"embed.weights={weights} brings its own preprocessing (set embed.preprocess=auto)")
        known = module.preprocess_names(name)
        if preprocess not in known:
            raise ActrecError(f"embed.preprocess={preprocess}: {backbone} has no such weights or tag; use auto or one "
                              f"of {', '.join(known) or '(none)'}")
    return module.card(name, weights, preprocess)


def load(backbone: str, weights: str, device: torch.device | str, img_dim: int | None = None) -> nn.Module:
    """A frozen, eval-mode, channels_last backbone whose output is its feature; ``model.feature_dim`` is D.

    ``img_dim`` matters to models with a fixed input size (ViT, MaxViT, ...): built for it, or refused."""
    import torch

    module, name = resolve(backbone)
    check_weights(backbone, weights)
    if weights == "none":
        log.warning(f"embed.weights=none: {backbone} is randomly initialised (seed {RANDOM_INIT_SEED}); its "
                    f"features are not pretrained features")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = module.build(name, weights, img_dim)
    model.requires_grad_(False)
    return model.eval().to(device, memory_format=torch.channels_last)


def library_version(backbone: str) -> dict:
    """``{library: version}`` for a library other than torchvision (whose version the fingerprint always
    holds): model code changes across releases."""
    module, _ = resolve(backbone)
    if LIBRARIES.get(module.LIBRARY).attrs["prefix"] == "":  # the version the fingerprint always holds
        return {}
    return {module.LIBRARY: importlib.import_module(module.PACKAGE).__version__}


def rows(libraries: list[str] | None = None, text: str = "", every_weights: bool = False) -> list[dict]:
    """The backbones table's rows for ``libraries`` (default: every installed one) whose names contain ``text``."""
    out = []
    for name in libraries or LIBRARIES.names():
        try:
            module = library(name)
        except ActrecError:
            if libraries:
                raise
            log.info(f"{name} is not installed: its backbones are not listed")
            continue
        out += module.rows(text, every_weights)
    return out
