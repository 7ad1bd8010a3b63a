"""torchvision's classification models as frozen backbones: plain names (``resnet152``, ``vit_b_16``, ...).

The feature is the input of the model's last ``nn.Linear`` under ``fc``, ``classifier``, ``head`` or
``heads`` (that Linear becomes Identity). Weights: ``imagenet`` (the model's default weights), another of
its weights by name (``IMAGENET1K_SWAG_E2E_V1``), or a state dict. Preprocessing, feature width, input
size, GFLOPs and ImageNet top-1 all come from the weights' metadata: nothing downloads to list or plan.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torch import nn

from pipeline.embed.backbones import weightfile
from pipeline.embed.backbones.card import Card
from pipeline.errors import ActrecError

LIBRARY = "torchvision"
PACKAGE = "torchvision"
INSTALL = ""  # a dependency of the project itself
HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")
# Builder module -> the keyword that fixes the input size when such a model is built.
FIXED_SIZE_KWARG = {"vision_transformer": "image_size", "maxvit": "input_size"}


def names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> None:
    known = names()
    if name not in known:
        raise ActrecError(f"embed.backbone={name!r} is not a torchvision classification model (nor timm/<model> or "
                          f"open_clip/<architecture>:<tag>). Some that work: resnet18, resnet50, resnet152, "
                          f"efficientnet_b0, convnext_tiny (all: `actrec backbones`)")


def named_weights(name: str, weights: str):
    """The torchvision weights ``weights`` names for model ``name``: 'imagenet' is the model's default, a member
    name (``IMAGENET1K_SWAG_E2E_V1``) that one; None for 'none' or a state dict path. Weights whose head cannot
    give a finite penultimate feature are refused."""
    enum_type = torchvision.models.get_model_weights(name)
    enum = enum_type.DEFAULT if weights == "imagenet" else enum_type.__members__.get(weights)
    if enum is not None and _no_classifier(enum):
        raise ActrecError(f"embed.weights={weights}: {enum} trains only the convolutional features; its "
                          f"classifier layers (whose output is the feature here) hold NaN, so no feature would be "
                          f"finite. Use {name}'s {enum_type.DEFAULT.name} weights")
    return enum


def _no_classifier(enum) -> bool:
    # VGG-16 IMAGENET1K_FEATURES: no categories, NaN accuracy; the metadata says what the docs do.
    return enum.meta.get("categories") is None or math.isnan(enum.meta["_metrics"]["ImageNet-1K"]["acc@1"])


def weights_hint(name: str) -> str:
    return f"one of {name}'s torchvision weights ({', '.join(torchvision.models.get_model_weights(name).__members__)})"


def named(name: str, weights: str) -> bool:
    return named_weights(name, weights) is not None


def identity(name: str, weights: str) -> str | None:
    enum = named_weights(name, weights)
    return None if enum is None else str(enum)


def preprocess_names(name: str) -> list[str]:
    """What ``embed.preprocess`` may name for this model: its weights."""
    return list(torchvision.models.get_model_weights(name).__members__)


def card(name: str, weights: str, preprocess: str) -> Card:
    """From ``weights.transforms()`` of the named weights, else of ``embed.preprocess``'s, else the default's."""
    return card_of(named_weights(name, weights) or named_weights(name, preprocess) or default_weights(name))


def card_of(enum) -> Card:
    transforms = enum.transforms()
    return Card(crop_size=transforms.crop_size[0], resize_size=transforms.resize_size[0],
                interpolation=transforms.interpolation.value, mean=tuple(transforms.mean),
                std=tuple(transforms.std), antialias=bool(transforms.antialias), source=str(enum))


def build(name: str, weights: str, img_dim: int | None) -> nn.Module:
    """The model with its head removed (Identity), weights loaded; ``feature_dim`` set. Random init is seeded by
    the caller."""
    model = _build(name, weights, img_dim)
    head, linear = find_head(model)
    parent = model.get_submodule(head.rpartition(".")[0]) if "." in head else model
    setattr(parent, head.rpartition(".")[2], nn.Identity())
    if weights != "none" and named_weights(name, weights) is None:
        weightfile.load_into(model, Path(weights), f"torchvision {name} ({type(model).__name__})",
                             ignored=(head + ".",))
    model.feature_dim = linear.in_features
    return model


def _build(name: str, weights: str, img_dim: int | None) -> nn.Module:
    kwargs = build_kwargs(name, weights, img_dim)
    enum = named_weights(name, weights)
    if enum is not None:
        try:
            return torchvision.models.get_model(name, weights=enum)
        except Exception as exc:  # urllib/OSError/RuntimeError depending on how the download failed
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise ActrecError(f"cannot load the ImageNet weights {enum} ({type(exc).__name__}: {exc}). Offline? "
                              f"Download {enum.url} elsewhere and place it at {target}, or set embed.weights to "
                              f"'none' or a state dict path") from exc
    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except (AssertionError, ValueError) as exc:  # a size ViT / MaxViT cannot be built for
        raise build_error(name, img_dim, exc) from exc


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Dotted name and module of the classification layer: the last nn.Linear of the model's head attribute.

    The head is ``fc`` (ResNet, RegNet, ...), ``classifier`` (EfficientNet, ConvNeXt, MaxViT, ...), ``head``
    (Swin) or ``heads`` (ViT); within it, modules register in forward order, so the last Linear is the last
    one the forward pass reaches (MaxViT's pre-logits Linear + Tanh stay as part of the features).
    """
    for attr in HEAD_ATTRIBUTES:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Linear):
            return attr, module
        if isinstance(module, nn.Module):
            linears = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                return f"{attr}.{linears[-1][0]}", linears[-1][1]
    raise ActrecError(f"{type(model).__name__}: no nn.Linear in its head ({', '.join(HEAD_ATTRIBUTES)}) to remove; "
                      f"pick another backbone (`actrec backbones` lists the ones that work)")


def fixed_size_kwarg(name: str) -> str | None:
    """The builder keyword that fixes the input size of ``name`` (ViT, MaxViT), or None if any size works."""
    module = torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
    return FIXED_SIZE_KWARG.get(module)


def default_weights(name: str):
    return torchvision.models.get_model_weights(name).DEFAULT


def weights_sizes(name: str) -> str:
    """The input size each of the model's weights takes, e.g. '224 (imagenet), 384 (IMAGENET1K_SWAG_E2E_V1)'."""
    default = default_weights(name)
    return ", ".join(f"{w.meta['min_size'][0]} ({'imagenet' if w == default else w.name})"
                     for w in torchvision.models.get_model_weights(name))


def build_kwargs(name: str, weights: str, img_dim: int | None) -> dict:
    """Builder keywords for a fixed-size model at ``img_dim``; refuses a size its pretrained weights cannot take.

    With pretrained weights the size is the one they were trained at (their ``min_size`` metadata). A random
    init or a state dict is built for ``img_dim`` itself (ViT: any multiple of its patch size).
    """
    kwarg = fixed_size_kwarg(name)
    if kwarg is None:
        return {}
    enum = named_weights(name, weights)
    if enum is not None:
        size = enum.meta["min_size"][0]
        if img_dim not in (None, size):
            raise ActrecError(f"embed.img_dim={img_dim}: {name} with weights {enum} takes {size}x{size} input only; "
                              f"set embed.img_dim={size}, or pick weights for another size (embed.weights): "
                              f"{weights_sizes(name)}")
        return {}
    dim = img_dim or default_weights(name).meta["min_size"][0]
    return {kwarg: dim if kwarg == "image_size" else (dim, dim)}


def build_error(name: str, img_dim: int | None, exc: Exception) -> ActrecError:
    """The one-line refusal of a model that cannot be built for ``img_dim``, with the sizes its weights take."""
    size = default_weights(name).meta["min_size"][0]
    reason = " ".join(str(exc).split())[:200]
    return ActrecError(f"embed.backbone={name} cannot take embed.img_dim={img_dim} ({reason}); its pretrained "
                       f"weights take {weights_sizes(name)}; try embed.img_dim={size}")


@contextlib.contextmanager
def _no_init():
    """Skip weight initialisation: building a model only to read its shapes need not fill 600M parameters."""
    inits = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack:
        for n in inits:
            stack.enter_context(mock.patch.object(nn.init, n, lambda tensor, *a, **k: tensor))
        yield


def skeleton(name: str) -> nn.Module:
    """Model ``name`` with the right shapes and meaningless values, built in a moment (no weights, no init)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(name, weights=None)
        except (NotImplementedError, RuntimeError):  # RegNet computes its widths with tensors: meta cannot
            with _no_init():
                return torchvision.models.get_model(name, weights=None)


def feature_width(name: str) -> int | None:
    """Width of the features ``name`` gives with its head removed (None if the head is not removable)."""
    try:
        return find_head(skeleton(name))[1].in_features
    except ActrecError:
        return None


def rows(text: str, every_weights: bool) -> list[dict]:
    """The backbones table's rows: one per model whose name contains ``text`` (per model and weights with
    ``every_weights``), from the weights' metadata."""
    out = []
    for name in names():
        if text.lower() not in name.lower():
            continue
        default, dim, fixed = default_weights(name), feature_width(name), fixed_size_kwarg(name) is not None
        for enum in torchvision.models.get_model_weights(name) if every_weights else [default]:
            usable = dim is not None and not _no_classifier(enum)
            weights_card = card_of(enum)
            out.append({"name": name, "dim": dim if usable else None, "trained_size": weights_card.crop_size,
                        "size": f"{weights_card.crop_size} only" if fixed else f">={enum.meta['min_size'][0]}",
                        "preprocessing": weights_card.summary(), "gflops": enum.meta.get("_ops"),
                        "top1": enum.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                        "weights": "imagenet" if enum == default else enum.name, "source": str(enum)})
    return out
