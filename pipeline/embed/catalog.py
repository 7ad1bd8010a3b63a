"""What torchvision's classification models offer as frozen backbones, from their weights' metadata.

Feature width (the input of the head that ``load_backbone`` removes), the input size (fixed
for ViT and MaxViT, whose position embeddings or window partitions are built for one size),
GFLOPs and ImageNet top-1: all from torchvision itself, without downloading any weights.
"""

from __future__ import annotations

import contextlib
import warnings
from unittest import mock

import torch
import torchvision
from torch import nn

from pipeline.errors import ActrecError

HEAD_ATTRIBUTES = ("fc", "classifier", "head", "heads")
# Builder module -> the keyword that fixes the input size when such a model is built.
FIXED_SIZE_KWARG = {"vision_transformer": "image_size", "maxvit": "input_size"}


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


def pretrained_weights(name: str, weights: str):
    """The torchvision weights ``embed.weights`` names for model ``name``: 'imagenet' is the model's default, a
    member name (``IMAGENET1K_SWAG_E2E_V1``) that one; None for 'none' (random init) or a state dict path."""
    enum_type = torchvision.models.get_model_weights(name)
    if weights == "imagenet":
        return enum_type.DEFAULT
    return enum_type[weights] if weights in enum_type.__members__ else None


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
    enum = pretrained_weights(name, weights)
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
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack:
        for n in names:
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


def list_backbones(names: list[str] | None = None, every_weights: bool = False) -> list[dict]:
    """One row per torchvision classification model (or per name of ``names``), from its default weights'
    metadata; with ``every_weights``, one row per model and weights."""
    rows = []
    for name in names or torchvision.models.list_models(module=torchvision.models):
        default, dim, fixed = default_weights(name), feature_width(name), fixed_size_kwarg(name) is not None
        for enum in torchvision.models.get_model_weights(name) if every_weights else [default]:
            meta = enum.meta
            rows.append({"name": name, "dim": dim, "fixed": fixed, "min_size": meta["min_size"][0],
                         "trained_size": getattr(enum.transforms(), "crop_size", [None])[0],
                         "gflops": meta.get("_ops"), "top1": meta["_metrics"]["ImageNet-1K"]["acc@1"],
                         "weights": "imagenet" if enum == default else enum.name, "enum": str(enum)})
    return rows


def format_catalog(rows: list[dict], show_all: bool = False) -> str:
    """A table sorted by ImageNet top-1, best first."""
    lines = [f"{'embed.backbone':<20} {'dim':>5} {'img_dim':<16} {'GFLOPs':>8} {'top1':>6}  "
             f"{'embed.weights':<26} torchvision weights"]
    lines.append("-" * len(lines[0]))
    for row in sorted(rows, key=lambda r: -r["top1"]):
        if row["dim"] is None and not show_all:
            continue
        size = (f"{row['trained_size']} only" if row["fixed"]
                else f">={row['min_size']} ({row['trained_size']})")
        dim = "-" if row["dim"] is None else str(row["dim"])
        lines.append(f"{row['name']:<20} {dim:>5} {size:<16} {row['gflops']:>8.2f} {row['top1']:>6.2f}  "
                     f"{row['weights']:<26} {row['enum']}")
    lines.append("img_dim: the input size with these weights ('only': fixed; else the minimum and, in brackets, "
                 "the size the weights were trained at). GFLOPs at the trained size. With embed.weights=none, ViT "
                 "takes any multiple of its patch size. `actrec backbones --every-weights` lists every weights.")
    return "\n".join(lines)
