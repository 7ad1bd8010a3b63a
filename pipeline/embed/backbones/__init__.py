"""The backbone libraries: which library a backbone name belongs to, and one way to check, build and list them.

Names: a plain name (``resnet152``) is torchvision's; ``timm/<model>[.<tag>]`` is timm's;
``open_clip/<architecture>[:<tag>]`` is OpenCLIP's. Each library is one module of this package
with the same functions (``check_name``, ``named``, ``identity``, ``card``, ``build``, ``rows``,
``preprocess_names``, ``weights_hint``; constants ``LIBRARY``, ``PACKAGE`` and ``INSTALL``),
registered in the ``backbone`` registry (``libraries.py``) under the prefix of its names and imported only when a
name asks for it: adding a library is one module and its registration. ``resolve_backbone`` turns a name into one
``Backbone`` object that every caller shares. This module imports no torch; ``Backbone.build`` does.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pipeline.embed.backbones.card import Card
from pipeline.errors import ActrecError
from pipeline.optional import require
from pipeline.registry import registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from pipeline.embed.resize import FrameResize

log = logging.getLogger(__name__)

LIBRARIES = registry("backbone")
RANDOM_INIT_SEED = 0  # weights=none is a fixed random network, so resumed and repeated runs agree


def library(name: str) -> ModuleType:
    """The library module ``name`` (a registered library); refused with the install command if not installed."""
    module = LIBRARIES.get(name, "embed.backbone").load()
    require(module.PACKAGE, f"{name} backbones")
    return module


def _library_of(backbone: str) -> tuple[ModuleType, str]:
    """``embed.backbone`` -> its library module and the library's own name for the model."""
    prefix, slash, rest = backbone.partition("/")
    named = {LIBRARIES.get(name).attrs["prefix"]: name for name in LIBRARIES.names()}
    if slash and f"{prefix}/" in named:
        return library(named[f"{prefix}/"]), rest
    return library(named[""]), backbone


@dataclass(eq=False)
class Backbone:
    """One backbone as ``embed.*`` names it, resolved once (``resolve_backbone``): its library module, the
    library's own name for the model, the weights' preprocessing card, and the checks already passed. Everything
    that needs the backbone (the fingerprint, stage one, prediction, the API) reads this object; only ``build``
    imports torch."""
    name: str             # embed.backbone, e.g. 'resnet152', 'timm/convnext_tiny', 'open_clip/ViT-B-32:openai'
    weights: str          # embed.weights: 'imagenet', 'none', a library's weights or tag, or a state dict file
    library: ModuleType   # the library module (``check_name``, ``card``, ``build``, ...)
    model: str            # the library's own name for the model
    card: Card            # the preprocessing the weights expect (embed.preprocess's for a random init or a file)
    img_dim: int | None = None  # the input size (models with a fixed input size are built for it)
    resize: str = "crop"  # embed.resize: 'crop' keeps the card's resize/crop ratio; 'squash' resizes whole frames

    @property
    def identity(self) -> str:
        """What the features' weights are: the library's weights (resolved), a seeded random init, or a file's
        SHA-256 (cached by the file's size and time). The cache fingerprint records it and prediction compares
        against it."""
        if self.weights == "none":
            return f"none (random init, seed {RANDOM_INIT_SEED})"
        from pipeline.embed.backbones import weightfile

        return self.library.identity(self.model, self.weights) or weightfile.identity(self.weights)

    @property
    def versions(self) -> dict:
        """``{library: version}`` for a library other than torchvision (whose version the fingerprint always
        holds): model code changes across releases."""
        if LIBRARIES.get(self.library.LIBRARY).attrs["prefix"] == "":
            return {}
        return {self.library.LIBRARY: importlib.import_module(self.library.PACKAGE).__version__}

    @property
    def preprocessing(self) -> FrameResize:
        """How frames become this backbone's input at ``img_dim``: crop keeps the card's resize/crop ratio
        (ResNet-152 IMAGENET1K_V2: 232/224), so ``img_dim`` at the card's crop size is exactly the weights' own
        preprocessing; squash keeps the card's interpolation and statistics."""
        from pipeline.embed.resize import FrameResize  # which imports this package's card module

        if self.img_dim is None:
            raise ValueError(f"{self.name}: resolved without img_dim, so it has no preprocessing")
        card = self.card
        short_side = None if self.resize == "squash" else round(self.img_dim * card.ratio)
        return FrameResize(self.img_dim, short_side, card.interpolation, card.keep_aspect, card.mean, card.std,
                           card.source)

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """A frozen, eval-mode, channels_last network whose output is the feature; ``model.feature_dim`` is D. A
        random init is seeded (``RANDOM_INIT_SEED``), so resumed and repeated runs agree."""
        import torch

        if self.weights == "none":
            log.warning(f"embed.weights=none: {self.name} is randomly initialised (seed {RANDOM_INIT_SEED}); its "
                        f"features are not pretrained features")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = self.library.build(self.model, self.weights, self.img_dim)
        model.requires_grad_(False)
        return model.eval().to(device, memory_format=torch.channels_last)


    def build_text(self, device: torch.device | str = "cpu") -> nn.Module:
        """The text tower of the same model as ``build``'s (the same seeded init, or the same weights), for the
        libraries that have one (OpenCLIP); called with prompts, it gives L2-normalised embeddings ``[N, D]``."""
        import torch

        if not hasattr(self.library, "build_text"):
            raise ActrecError(f"{self.name}: a {self.library.LIBRARY} backbone has no text tower; zero-shot "
                              f"classification needs an OpenCLIP cache (embed.backbone=open_clip/...)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = self.library.build_text(self.model, self.weights, self.img_dim)
        model.requires_grad_(False)
        return model.eval().to(device)


def resolve_backbone(name: str, weights: str = "none", preprocess: str = "auto", img_dim: int | None = None,
                     resize: str = "crop") -> Backbone:
    """The backbone ``name`` with ``weights``, checked (name, weights, ``embed.preprocess``) and its card read
    from the library's metadata (nothing downloads). ``preprocess`` names the weights or tag whose preprocessing
    a random init or a state dict gets; 'auto' is the backbone's default (its tag's, for a name with a tag)."""
    module, model = _library_of(name)
    module.check_name(model)
    if weights != "none" and not module.named(model, weights) and not Path(weights).is_file():
        raise ActrecError(f"embed.weights={weights}: no such file; use 'imagenet' (the pretrained weights), 'none' "
                          f"(random init), a path to a state dict or {module.weights_hint(model)}")
    if preprocess != "auto":
        if module.named(model, weights):
            raise ActrecError(f"embed.preprocess={preprocess}: applies to embed.weights=none or a state dict file; "
                              f"embed.weights={weights} brings its own preprocessing (set embed.preprocess=auto)")
        known = module.preprocess_names(model)
        if preprocess not in known:
            raise ActrecError(f"embed.preprocess={preprocess}: {name} has no such weights or tag; use auto or one "
                              f"of {', '.join(known) or '(none)'}")
    return Backbone(name, weights, module, model, module.card(model, weights, preprocess), img_dim, resize)


def backbone_of(embed) -> Backbone:
    """The backbone an ``embed`` config section names (``cfg.embed``)."""
    return resolve_backbone(embed.backbone, embed.weights, embed.preprocess, embed.img_dim, embed.resize)


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
