"""Each class's text embedding from the cache's own OpenCLIP model: the mean of its prompts' normalised
``encode_text`` embeddings, normalised again (CLIP's zero-shot classifier), kept on disk beside the cache.

The file ``CACHE.text/<digest>.npz`` holds the embeddings ``[C, D]``, the model's logit scale and the JSON
fingerprint they were made from (the backbone, its weights' identity, OpenCLIP's version, the classes and
every prompt); the digest is that fingerprint's hash, so a second run with the same prompts reads the file and a
changed prompt, class or weights file makes a new one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ActrecError
from pipeline.fileio import atomic_path

log = logging.getLogger(__name__)

TEXT_BATCH = 256  # prompts per forward pass of the text tower


@dataclass
class ClassEmbeddings:
    """The classifier: one unit vector per class and the model's logit scale (CLIP's learned temperature)."""

    vectors: np.ndarray  # [C, D] float32, unit rows
    logit_scale: float
    path: Path


def class_embeddings(backbone, prompts: dict[str, list[str]], cache_path: str | Path) -> ClassEmbeddings:
    """The class embeddings of ``prompts`` (class -> prompts, in label order) from ``backbone``'s text tower: read
    from beside the cache when made before with the same fingerprint, else computed and written there."""
    fingerprint = {"backbone": backbone.name, "weights": backbone.identity, "img_dim": backbone.img_dim,
                   "open_clip": importlib.metadata.version("open_clip_torch"), "prompts": prompts}
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(str(cache_path) + ".text") / f"{digest}.npz"
    stored = _read(path, fingerprint)
    if stored is not None:
        log.info("class text embeddings from %s", path)
        return stored
    vectors, scale = _encode(backbone, prompts)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, vectors=vectors, logit_scale=np.float64(scale), fingerprint=json.dumps(fingerprint))
    log.info("class text embeddings of %d prompts written to %s", sum(map(len, prompts.values())), path)
    return ClassEmbeddings(vectors, scale, path)


def prompt_embeddings(encoder, prompts: list[str]) -> np.ndarray:
    """Normalised text embeddings ``[N, D]`` of ``prompts``, in batches."""
    import torch

    with torch.inference_mode():
        parts = [encoder(prompts[i:i + TEXT_BATCH]).float().numpy() for i in range(0, len(prompts), TEXT_BATCH)]
    return np.concatenate(parts)


def _encode(backbone, prompts: dict[str, list[str]]) -> tuple[np.ndarray, float]:
    encoder = backbone.build_text("cpu")
    flat = [p for listed in prompts.values() for p in listed]
    embedded = prompt_embeddings(encoder, flat)
    vectors, start = [], 0
    for listed in prompts.values():
        mean = embedded[start:start + len(listed)].mean(axis=0)
        vectors.append(mean / np.linalg.norm(mean))
        start += len(listed)
    return np.stack(vectors).astype(np.float32), encoder.logit_scale


def _read(path: Path, fingerprint: dict) -> ClassEmbeddings | None:
    """The stored embeddings when the file is whole and was made from ``fingerprint``; else None (remade)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["fingerprint"])) != json.loads(json.dumps(fingerprint)):
                return None
            return ClassEmbeddings(data["vectors"], float(data["logit_scale"]), path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s is unreadable (%s); computing the class embeddings again", path, exc)
        return None


def check_text_tower(backbone, fingerprint: dict, cache_path) -> None:
    """The model that would embed the prompts must be the one that embedded the frames: same weights."""
    if backbone.identity != fingerprint.get("weights"):
        raise ActrecError(f"{cache_path} was embedded with weights {fingerprint.get('weights')}, but "
                          f"{backbone.name} with embed.weights={backbone.weights} is now {backbone.identity}; "
                          f"restore that weights file to use its text tower")


def check_open_clip_cache(cache, needs: str) -> None:
    """What ``needs`` says (zero-shot classification, a text query) takes the text tower of the model that embedded
    the cache: refused for another backbone's cache or imported features, with ``needs`` as the reason."""
    fingerprint = cache.fingerprint
    if "imported" in fingerprint or not str(fingerprint.get("backbone", "")).startswith("open_clip/"):
        made = fingerprint.get("backbone") or f"imported features ({fingerprint['imported']['made_by']})"
        raise ActrecError(f"{cache.path} holds features of {made}; {needs}")
