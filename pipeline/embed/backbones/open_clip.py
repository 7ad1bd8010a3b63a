"""OpenCLIP image encoders as frozen backbones: ``open_clip/<architecture>[:<pretrained tag>]``
(``open_clip/ViT-B-32:laion2b_s34b_b79k``).

The feature is ``encode_image`` before its L2 normalisation: the image tower's projected embedding
(width ``embed_dim``); the text tower is dropped once the weights are in (``build_text`` keeps it instead, for
zero-shot classification). Preprocessing is OpenCLIP's
own: its ``PreprocessCfg`` at the tower's image size, overlaid by the tag's config (mean, std,
interpolation, ``resize_mode``: ``shortest`` = short side then centre crop, ``squash`` = both sides).
``embed.weights``: ``imagenet`` (the tag in the name: OpenCLIP's weights are not ImageNet's, the word
means "the pretrained weights"), ``none``, or a file holding a whole OpenCLIP model's state dict.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.embed.backbones import weightfile
from pipeline.embed.backbones.card import Card
from pipeline.errors import ActrecError
from pipeline.optional import require

LIBRARY = "open_clip"
PACKAGE = "open_clip"
INSTALL = "pip install -e '.[clip]'"


def _open_clip():
    """OpenCLIP, through the project's one optional import."""
    return require("open_clip", "open_clip backbones")


class ImageEncoder(nn.Module):
    """``encode_image(x, normalize=False)`` of an OpenCLIP model, holding its image tower only."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.visual(x)
        return out[0] if isinstance(out, tuple) else out  # CoCa's tower also returns its tokens


def split(name: str) -> tuple[str, str | None]:
    """``ViT-B-32:laion2b_s34b_b79k`` -> architecture and tag (None when the name has no tag)."""
    arch, _, tag = name.partition(":")
    return arch, tag or None


def model_config(arch: str) -> dict:
    open_clip = _open_clip()

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ActrecError(f"embed.backbone=open_clip/{arch}: OpenCLIP has no architecture {arch!r}; `actrec "
                          f"backbones --library open_clip` lists them with their tags")
    return config


def tag_config(arch: str, tag: str) -> dict:
    open_clip = _open_clip()

    config = open_clip.get_pretrained_cfg(arch, tag)
    if not config:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ActrecError(f"open_clip/{arch}:{tag}: no such pretrained tag; {arch}'s tags: {', '.join(tags) or 'none'}")
    return config


def check_name(name: str) -> None:
    arch, tag = split(name)
    model_config(arch)
    if tag:
        tag_config(arch, tag)


def weights_hint(name: str) -> str:
    return f"put a pretrained tag in the name instead (open_clip/{split(name)[0]}:<tag>)"


def named(name: str, weights: str) -> bool:
    """'imagenet' means the tag's weights; a name without a tag has none to load."""
    if weights != "imagenet":
        return False
    arch, tag = split(name)
    if tag is None:
        open_clip = _open_clip()

        raise ActrecError(f"embed.backbone=open_clip/{arch} names no pretrained tag: use open_clip/{arch}:<tag> "
                          f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}), or "
                          f"embed.weights=none or a file")
    return True


def identity(name: str, weights: str) -> str | None:
    return f"open_clip {name}" if named(name, weights) else None


def preprocess_names(name: str) -> list[str]:
    """What ``embed.preprocess`` may name: the architecture's pretrained tags."""
    open_clip = _open_clip()

    return open_clip.list_pretrained_tags_by_model(split(name)[0])


def card(name: str, weights: str, preprocess: str) -> Card:
    """OpenCLIP's preprocess config for the name's tag (or ``embed.preprocess``'s, or the architecture's)."""
    arch, tag = split(name)
    return card_of(arch, tag if named(name, weights) or preprocess == "auto" else preprocess)


def card_of(arch: str, tag: str | None) -> Card:
    transform = require("open_clip.transform", "open_clip backbones")
    PreprocessCfg, merge_preprocess_dict = transform.PreprocessCfg, transform.merge_preprocess_dict

    size = model_config(arch)["vision_cfg"]["image_size"]
    base = PreprocessCfg(size=size if isinstance(size, int) else tuple(size))
    cfg = merge_preprocess_dict(base, tag_config(arch, tag) if tag else {})
    source = f"open_clip {arch}" + (f":{tag}" if tag else " (default preprocess)")
    size = cfg["size"]
    if not isinstance(size, int) and size[0] != size[1] or cfg["resize_mode"] not in ("shortest", "squash"):
        raise ActrecError(f"{source}: its preprocessing (size {size}, resize_mode {cfg['resize_mode']}) is not "
                          f"implemented (square input, resize_mode shortest or squash only)")
    size = size if isinstance(size, int) else size[0]
    return Card(crop_size=size, resize_size=size, interpolation=cfg["interpolation"], mean=tuple(cfg["mean"]),
                std=tuple(cfg["std"]), keep_aspect=cfg["resize_mode"] == "shortest", source=source)


def build(name: str, weights: str, img_dim: int | None) -> nn.Module:
    """The image tower of ``name`` at ``img_dim``, weights loaded; ``feature_dim`` set."""
    model, config = create(name, weights, img_dim)
    encoder = ImageEncoder(model.visual)
    encoder.feature_dim = config["embed_dim"]
    return encoder


def build_text(name: str, weights: str, img_dim: int | None) -> TextEncoder:
    """The text tower of the same model as ``build``'s image tower (created the same way, so a seeded random init
    gives the same network), with its tokenizer."""
    model, config = create(name, weights, img_dim)
    encoder = TextEncoder(model, _open_clip().get_tokenizer(split(name)[0]))
    encoder.feature_dim = config["embed_dim"]
    return encoder


class TextEncoder(nn.Module):
    """``encode_text`` of an OpenCLIP model (its image tower dropped), its tokenizer and its logit scale."""

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        model.visual = None  # the image side is the cache's: only the text tower is needed here
        self.model, self.tokenizer = model, tokenizer

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> their L2-normalised text embeddings ``[N, D]``."""
        return self.model.encode_text(self.tokenizer(prompts), normalize=True)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())


def create(name: str, weights: str, img_dim: int | None) -> tuple[nn.Module, dict]:
    """The whole OpenCLIP model ``name`` (both towers) at ``img_dim`` with ``weights``, and its config."""
    open_clip = _open_clip()

    arch, tag = split(name)
    config = model_config(arch)
    pretrained = tag if named(name, weights) else None
    quick_gelu = bool(tag and tag_config(arch, tag).get("quick_gelu", False))  # as the tag was trained
    size = config["vision_cfg"]["image_size"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = open_clip.create_model(arch, pretrained=pretrained, force_quick_gelu=quick_gelu,
                                           force_image_size=img_dim if img_dim and img_dim != size else None,
                                           pretrained_text=False)
    except (AssertionError, ValueError, TypeError) as exc:
        raise ActrecError(f"embed.backbone=open_clip/{name} cannot be built for embed.img_dim={img_dim} "
                          f"({' '.join(str(exc).split())[:200]}); try embed.img_dim={size}") from exc
    except Exception as exc:  # hub, HTTP and file errors differ by version; each means the download failed
        raise download_error(arch, tag, exc) from exc
    if weights not in ("imagenet", "none"):
        weightfile.load_into(model, Path(weights), f"open_clip {arch}")
    return model, config


def download_error(arch: str, tag: str, exc: Exception) -> ActrecError:
    """Where to put the weights when they cannot be downloaded."""
    cfg = tag_config(arch, tag)
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    if cfg.get("hf_hub"):
        where = weightfile.hub_download_hint(cfg["hf_hub"].rstrip("/"))
    else:
        where = f"download {cfg.get('url')} into {Path('~/.cache/clip').expanduser()}"
    return ActrecError(f"cannot load the weights of open_clip/{arch}:{tag} ({reason}). Offline? {where}; or set "
                       f"embed.backbone=open_clip/{arch}, embed.weights to the file's path and embed.preprocess={tag}")


def rows(text: str, every_weights: bool) -> list[dict]:
    """One row per (architecture, tag) whose ``open_clip/<arch>:<tag>`` contains ``text``; from the configs."""
    open_clip = _open_clip()

    out = []
    for arch, tag in open_clip.list_pretrained():
        name = f"open_clip/{arch}:{tag}"
        if text.lower() not in name.lower():
            continue
        try:
            weights_card = card_of(arch, tag)
            summary, size = weights_card.summary(), weights_card.crop_size
        except ActrecError:
            summary, size = "not implemented", None
        out.append({"name": name, "dim": model_config(arch)["embed_dim"], "trained_size": size, "size": f"{size}",
                    "preprocessing": summary, "gflops": None, "top1": None, "weights": "imagenet",
                    "source": f"open_clip {arch}:{tag}"})
    return out
