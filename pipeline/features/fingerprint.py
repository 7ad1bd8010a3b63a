"""What changes the cached features: the fingerprint a cache is made with, and how two fingerprints differ.

A cache stores the fingerprint of the config that embedded it; stage two and a resumed embed compute
it again from their own config and refuse a cache whose fingerprint differs. Caches written before
must keep matching, so the keys and values below are part of the cache format (cache/README.md).

This module is imported by the storage layer (``pipeline.features.cache``) for the comparison, which
needs neither torch nor the dataset code; those load only when a fingerprint is computed.
"""

from __future__ import annotations

import functools

from pipeline.config import keys_affecting
from pipeline.errors import ActrecError

# The config keys that change the features are marked `affects="features"` in the schema (pipeline/config.py).
# Most are recorded as is under their own name; these are recorded otherwise (see _derived_entries):
DERIVED = {"data.splits", "embed.weights", "embed.resize", "extract.jpeg_quality"}
RENAMED = {"data.name": "dataset"}  # the name caches of format 1 use

# Fingerprint key -> config key, for the keys copied as is.
FEATURE_KEYS = {RENAMED.get(name, name.split(".")[1]): name for name in keys_affecting("features")
                if name not in DERIVED}

# Recorded by embed from the machine it ran on (not derivable from a config): a resumed embed must match
# it, so one cache never mixes fp32 and bf16 features; stage two, which may run elsewhere, does not ask.
# Compared only where both sides record it.
MACHINE_KEYS = {"forward_dtype"}
# Keys added after caches of format 1 were written: compared where the cache records them, so those
# caches stay readable (they were written with one batch size throughout, as embed never changed it).
LATER_KEYS = {"batch_size"}


def embed_fingerprint(cfg) -> dict:
    """Everything that changes the cached features; stage two and a resumed embed compare against it."""
    fingerprint = {key: _config_value(cfg, name) for key, name in FEATURE_KEYS.items()}
    fingerprint.update(_derived_entries(cfg))
    return fingerprint


def _config_value(cfg, dotted: str):
    return functools.reduce(getattr, dotted.split("."), cfg)


def _derived_entries(cfg) -> dict:
    """Entries that are not a config value as is: each is computed, or fixed by the code rather than the config."""
    import torch
    import torchvision

    from pipeline.data.datasets import split_files_signature
    from pipeline.features.backbone import IMAGENET_MEAN, IMAGENET_STD, frame_resize, weights_identity

    derived = {
        # The lists decide which videos and labels a cache holds; a hash, since data.splits is only a folder.
        "split_files": split_files_signature(cfg),
        # embed.weights names a file or a tag; the identity says which network it is (enum, seed, SHA-256).
        "weights": weights_identity(cfg.embed.backbone, cfg.embed.weights),
        # Preprocessing and frame sampling are fixed in code; recorded so a change there invalidates caches.
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "resize": frame_resize(cfg.embed).description,  # squash keeps format 1's text: those caches stay valid
        "frames": "every frame",
        # Kernels change across releases; major.minor is the granularity that changes numbers.
        "torch": _major_minor(torch.__version__),
        "torchvision": _major_minor(torchvision.__version__),
    }
    if cfg.embed.source == "frames":
        derived["jpeg_quality"] = cfg.extract.jpeg_quality  # JPEG loss changes the features; videos have none
    return derived


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def fingerprint_differences(cached: dict, expected: dict) -> list[str]:
    """One line per key whose value differs between a cache and the current config."""
    keys = [k for k in sorted(set(cached) | set(expected))
            if k not in MACHINE_KEYS | LATER_KEYS or (k in cached and k in expected)]
    source = {k: "this machine (embed.device, embed.precision) gives" for k in MACHINE_KEYS}
    return [f"{k}: cache has {cached.get(k, '<missing>')!r}, {source.get(k, 'config gives')} "
            f"{expected.get(k, '<missing>')!r}" for k in keys if cached.get(k) != expected.get(k)]


def mismatch_error(path, differences: list[str]) -> ActrecError:
    """The refusal of a cache made with other settings, listing what differs and what to do."""
    return ActrecError(f"{path} was made with other settings ({'; '.join(differences)}). Set cache.path to a "
                       f"new file (the default path includes dataset, backbone, weights, img_dim and source), "
                       f"or delete {path} and run `actrec embed` again")
