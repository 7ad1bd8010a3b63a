"""Stage one's fingerprint of a cache: everything that changes the features, computed from a config.

The keys and values are part of the cache format (docs/cache-format.md). The comparison of two fingerprints lives
with the cache (``pipeline.cache.fingerprint``).
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import TYPE_CHECKING

from pipeline.cache.fingerprint import feature_keys
from pipeline.embed.backbones import Backbone, backbone_of
from pipeline.inputs.formats import split_files_signature

if TYPE_CHECKING:
    import torch

    from pipeline.config import Config


def embed_fingerprint(cfg: Config, backbone: Backbone | None = None) -> dict:
    """Everything that changes the cached features; a resumed embed and the join of shards compare against it.
    ``backbone``: ``cfg.embed``'s, already resolved (resolved here without one)."""
    fingerprint = {key: _config_value(cfg, name) for key, name in feature_keys().items()}
    fingerprint.update(_derived_entries(cfg, backbone))
    return fingerprint


def _config_value(cfg: Config, dotted: str):
    return functools.reduce(getattr, dotted.split("."), cfg)


def _derived_entries(cfg: Config, backbone: Backbone | None = None) -> dict:
    """Entries that are not a config value as is: each is computed, or fixed by the code rather than the config."""
    backbone = backbone or backbone_of(cfg.embed)
    preprocessing = backbone.preprocessing
    derived = {
        # The lists decide which videos and labels a cache holds; a hash, since data.splits is only a folder.
        "split_files": split_files_signature(cfg),
        # embed.weights names a file or a tag; the identity says which network it is (enum, seed, SHA-256).
        "weights": backbone.identity,
        # The preprocessing applied: the backbone's card (embed.preprocess, embed.resize, embed.img_dim).
        "mean": list(preprocessing.mean),
        "std": list(preprocessing.std),
        "resize": preprocessing.description,
        "frames": "every frame",  # fixed in code; recorded so a change there invalidates caches
        # Kernels change across releases; major.minor is the granularity that changes numbers.
        "torch": _major_minor(importlib.metadata.version("torch")),
        "torchvision": _major_minor(importlib.metadata.version("torchvision")),
        **{name: _major_minor(v) for name, v in backbone.versions.items()},  # timm, OpenCLIP
    }
    if cfg.embed.preprocess != "auto":  # whose card a random init or a file follows (absent: the default's)
        derived["preprocess"] = preprocessing.source
    if cfg.embed.source == "frames":
        derived["jpeg_quality"] = cfg.extract.jpeg_quality  # JPEG loss changes the features; videos have none
    return derived


def device_kind(device: torch.device) -> str:
    """The kind of device a forward pass runs on, for the fingerprint's machine key ``device``: kernels, and so the
    features' last bits, differ between the CPU and a GPU, and between GPU models and CUDA/cuDNN versions."""
    import torch

    if device.type != "cuda":
        return device.type
    runtime = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
    return f"{torch.cuda.get_device_name(device)} ({runtime}, cuDNN {torch.backends.cudnn.version()})"


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])
