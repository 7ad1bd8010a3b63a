"""timm's models as frozen backbones: ``timm/<model>[.<pretrained tag>]`` (``timm/convnext_base.fb_in22k_ft_in1k``).

The feature is timm's own pre-logits embedding, ``forward_head(forward_features(x), pre_logits=True)``
(the pooled, and where the model has one, head-MLP'd features the classifier reads). Preprocessing is
timm's ``resolve_data_config`` of the pretrained config: ``input_size``, ``crop_pct`` (resize to
``floor(size / crop_pct)``), ``crop_mode``, ``interpolation``, ``mean``, ``std``. ``embed.weights``:
``imagenet`` (the name's pretrained tag, or timm's default tag for the architecture), ``none``, or a
state dict in timm's format (a timm model's ``state_dict()``, or the Hub's ``model.safetensors``).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.embed.backbones import weightfile
from pipeline.embed.backbones.card import Card
from pipeline.errors import ActrecError
from pipeline.optional import require

if TYPE_CHECKING:
    from pipeline.config import Config

LIBRARY = "timm"
PACKAGE = "timm"
INSTALL = "pip install -e '.[timm]'"
WIDTHS_AT_MOST = 40  # architectures built (shapes only) for the backbones table's feature widths: ~0.2 s each


def _timm():
    """timm with the submodules used here, through the project's one optional import."""
    timm = require("timm", "timm backbones")
    for module in ("timm.models", "timm.data"):
        require(module, "timm backbones")
    return timm


class PreLogits(nn.Module):
    """A timm model whose output is its pre-logits feature (the classifier stays, unused, so that a full state
    dict loads strictly)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def pretrained_cfg(name: str, tag: str | None = None):
    """timm's pretrained config of ``name`` (its tag, or the architecture's default tag), or ``tag``'s."""
    timm = _timm()

    arch, own_tag = timm.models.split_model_name_tag(name)
    if not timm.models.is_model(arch):
        raise ActrecError(f"embed.backbone=timm/{name}: timm has no model {arch!r}; `actrec backbones --library "
                          f"timm --filter TEXT` lists them")
    wanted = f"{arch}.{tag}" if tag else name
    try:
        cfg = timm.models.get_pretrained_cfg(wanted)
    except RuntimeError:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise ActrecError(f"timm/{wanted}: {arch} has no pretrained tag {wanted.partition('.')[2]!r}; its tags: "
                          f"{', '.join(tags) or 'none'}") from None
    if cfg is None:
        raise ActrecError(f"timm/{name}: timm has no pretrained config for {arch}, so no preprocessing to follow")
    return cfg


def check_name(name: str) -> None:
    pretrained_cfg(name)


def weights_hint(name: str) -> str:
    return f"put a pretrained tag in the name instead (timm/{name.split('.')[0]}.<tag>)"


def named(name: str, weights: str) -> bool:
    return weights == "imagenet"


def identity(name: str, weights: str) -> str | None:
    """The model and its pretrained tag, resolved: timm's default tag for an architecture may change."""
    if not named(name, weights):
        return None
    cfg = pretrained_cfg(name)
    return f"timm {cfg.architecture}.{cfg.tag}"


def preprocess_names(name: str) -> list[str]:
    """What ``embed.preprocess`` may name: the architecture's pretrained tags."""
    timm = _timm()

    return [n.split(".", 1)[1] for n in timm.list_pretrained(f"{name.split('.')[0]}.*")]


def card(name: str, weights: str, preprocess: str) -> Card:
    """From timm's ``resolve_data_config`` of the name's pretrained config (or ``embed.preprocess``'s tag)."""
    cfg = pretrained_cfg(name, None if named(name, weights) or preprocess == "auto" else preprocess)
    return card_of(cfg)


def card_of(cfg: Config) -> Card:
    resolve_data_config = _timm().data.resolve_data_config

    data = resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    source = f"timm {cfg.architecture}.{cfg.tag}"
    _, height, width = data["input_size"]
    if height != width or data.get("crop_mode", "center") not in ("center", "squash"):
        raise ActrecError(f"{source}: its preprocessing ({height}x{width}, crop_mode {data.get('crop_mode')}) is "
                          f"not implemented (square input, crop_mode center or squash only); pick another tag")
    return Card(crop_size=height, resize_size=math.floor(height / data["crop_pct"]),
                interpolation=data["interpolation"], mean=tuple(data["mean"]), std=tuple(data["std"]),
                keep_aspect=data.get("crop_mode", "center") == "center", source=source)


def build(name: str, weights: str, img_dim: int | None) -> nn.Module:
    """The model built for ``img_dim`` (fixed-size models: ViT, Swin, ...), weights loaded; ``feature_dim`` set."""
    timm = _timm()

    cfg = pretrained_cfg(name)
    kwargs = {"img_size": img_dim} if img_dim and cfg.fixed_input_size else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=named(name, weights), **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ActrecError(f"embed.backbone=timm/{name} cannot be built for embed.img_dim={img_dim} "
                          f"({' '.join(str(exc).split())[:200]}); try embed.img_dim={cfg.input_size[-1]}") from exc
    except Exception as exc:  # hub, HTTP and file errors differ by version; each means the download failed
        raise download_error(cfg, exc) from exc
    if weights not in ("imagenet", "none"):
        weightfile.load_into(model, Path(weights), f"timm {name}")
    wrapped = PreLogits(model)
    wrapped.feature_dim = width(model)
    return wrapped


def width(model: nn.Module) -> int:
    """The pre-logits width: the head MLP's where the model has one, else the pooled features'."""
    return getattr(model, "head_hidden_size", None) or model.num_features


def download_error(cfg: Config, exc: Exception) -> ActrecError:
    """Where to put the weights when they cannot be downloaded."""
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    if cfg.hf_hub_id:
        where = weightfile.hub_download_hint(cfg.hf_hub_id)
    else:
        where = f"download {cfg.url} and place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
    return ActrecError(f"cannot load the weights of timm {cfg.architecture}.{cfg.tag} ({reason}). Offline? "
                       f"{where}; or set embed.weights to the file's path (embed.preprocess={cfg.tag})")


def rows(text: str, every_weights: bool) -> list[dict]:
    """One row per pretrained timm model whose ``timm/<name>`` contains ``text`` (every tag; ``every_weights``
    changes nothing here: each tag is its own name). Feature widths need a shape-only build per architecture,
    so they are filled in for at most ``WIDTHS_AT_MOST`` architectures."""
    timm = _timm()

    found = [n for n in timm.list_pretrained() if text.lower() in f"timm/{n}".lower()]
    architectures = sorted({n.split(".")[0] for n in found})
    widths = {a: _skeleton_width(a) for a in architectures} if len(architectures) <= WIDTHS_AT_MOST else {}
    out = []
    for name in found:
        cfg = pretrained_cfg(name)
        try:
            summary = card_of(cfg).summary()
        except ActrecError:
            summary = f"not implemented (crop_mode {cfg.crop_mode})"
        out.append({"name": f"timm/{name}", "dim": widths.get(name.split(".")[0]), "trained_size": cfg.input_size[-1],
                    "size": f"{cfg.input_size[-1]}" + (" (fixed)" if cfg.fixed_input_size else ""),
                    "preprocessing": summary, "gflops": None, "top1": None, "weights": "imagenet",
                    "source": f"timm {name}"})
    return out


def _skeleton_width(arch: str) -> int | None:
    timm = _timm()

    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return width(timm.create_model(arch, pretrained=False))
    except Exception:  # a model whose construction computes with tensor values cannot be built on meta
        return None
