"""The frozen backbone: a torchvision classifier with its head removed, and the preprocessing it expects.

Frames go uint8 ``[N, H, W, 3]`` -> ``resize_frames`` (CPU, uint8, bilinear with antialias) ->
``normalize`` (on the device: float, ImageNet mean/std, channels_last) -> the model -> ``[N, D]``.
The embed stage, prediction and benchmarks all use these functions, so features agree bit for bit.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.errors import ActrecError
from pipeline.fileio import sha256_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE = "bilinear+antialias, uint8, torch.nn.functional.interpolate on CPU"
RANDOM_INIT_SEED = 0  # weights=none is a fixed random network, so resumed and repeated runs agree


def _check_name(name: str) -> None:
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ActrecError(f"embed.backbone={name!r} is not a torchvision classification model. Some that work: "
                          f"resnet18, resnet50, resnet152, efficientnet_b0, mobilenet_v3_large, convnext_tiny "
                          f"(all: {', '.join(known)})")


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached per (path, size, mtime): the fingerprint is asked for more than once per run."""
    return sha256_file(path)


def weights_identity(name: str, weights: str) -> str:
    """What the features' weights are: the torchvision enum, a seeded random init, or a file's SHA-256."""
    if weights == "imagenet":
        _check_name(name)
        return str(torchvision.models.get_model_weights(name).DEFAULT)
    if weights == "none":
        return f"none (random init, seed {RANDOM_INIT_SEED})"
    path = Path(weights)
    if not path.is_file():
        return f"missing file {path}"
    stat = path.stat()
    return "sha256:" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _head(model: nn.Module) -> tuple[str, nn.Linear]:
    """Dotted name and module of the final classification layer (``fc``, or the last Linear of ``classifier``)."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc", model.fc
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return "classifier", classifier
    if isinstance(classifier, nn.Sequential):
        for index in reversed(range(len(classifier))):
            if isinstance(classifier[index], nn.Linear):
                return f"classifier.{index}", classifier[index]
    raise ActrecError(f"{type(model).__name__}: no `fc` or `classifier` head to remove; pick a backbone such as "
                      f"resnet*, efficientnet_*, mobilenet_*, convnext_* or vgg*")


def _build(name: str, weights: str) -> nn.Module:
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(name).DEFAULT
        try:
            return torchvision.models.get_model(name, weights=enum)
        except Exception as exc:  # urllib/OSError/RuntimeError depending on how the download failed
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise ActrecError(f"cannot load the ImageNet weights {enum} ({type(exc).__name__}: {exc}). Offline? "
                              f"Download {enum.url} elsewhere and place it at {target}, or set embed.weights to "
                              f"'none' or a state dict path") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return torchvision.models.get_model(name, weights=None)


def _load_state_dict(model: nn.Module, head: str, path: Path) -> None:
    if not path.is_file():
        raise ActrecError(f"embed.weights={path}: no such file; use 'imagenet', 'none' or a path to a state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ActrecError(f"{path}: cannot be read as a torch state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        raise ActrecError(f"{path}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        summary = " ".join(str(exc).split())[:600]
        raise ActrecError(f"{path} does not fit {type(model).__name__} ({summary}); it must be a state dict of the "
                          f"torchvision model named in embed.backbone (head keys {head}.* are ignored)") from exc


def load_backbone(name: str, weights: str, device: torch.device | str) -> nn.Module:
    """A frozen, eval-mode, channels_last torchvision model whose head is Identity; ``model.feature_dim`` is D."""
    _check_name(name)
    if weights == "none":
        log.warning(f"embed.weights=none: {name} is randomly initialised (seed {RANDOM_INIT_SEED}); "
                    f"its features are not ImageNet features")
    model = _build(name, weights)
    head, linear = _head(model)
    parent = model.get_submodule(head.rpartition(".")[0]) if "." in head else model
    setattr(parent, head.rpartition(".")[2], nn.Identity())
    if weights not in ("imagenet", "none"):
        _load_state_dict(model, head, Path(weights))
    model.feature_dim = linear.in_features
    model.requires_grad_(False)
    return model.eval().to(device, memory_format=torch.channels_last)


def resize_frames(frames: np.ndarray, img_dim: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, 3, img_dim, img_dim]`` (channels_last), on the CPU.

    The one resize of the project: bilinear with antialias on uint8, as torchvision's transforms do.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NHWC memory is channels_last
    return F.interpolate(x, size=(img_dim, img_dim), mode="bilinear", antialias=True, align_corners=False)


def resized_chunks(frames: Iterable[np.ndarray], img_dim: int, chunk: int) -> Iterator[torch.Tensor]:
    """Resize a stream of uint8 frames ``[H, W, 3]`` in chunks of ``chunk`` as they arrive, so that a long video
    never sits in memory at full size."""
    pending = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == chunk:
            yield resize_frames(np.stack(pending), img_dim)
            pending = []
    if pending:
        yield resize_frames(np.stack(pending), img_dim)


def normalize(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float ImageNet-normalised on ``device``, channels_last."""
    x = frames.to(device, non_blocking=True).float().div_(255)
    mean, std = _mean_std(device)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants on ``device``, made once: a fresh copy per batch is a blocking host-to-device copy, which
    would stall the asynchronous feed on a GPU."""
    with torch.inference_mode(False):
        return (torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1))


@torch.inference_mode()
def forward(model: nn.Module, resized: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None = None,
            flip: bool = False) -> torch.Tensor:
    """Features ``[N, D]`` float32 on the CPU of resized uint8 frames; ``flip`` mirrors them left-right first."""
    x = normalize(resized, device)
    if flip:
        x = torch.flip(x, dims=[3])
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(x).float().cpu()


def embed_frames(model: nn.Module, frames: Iterable[np.ndarray], img_dim: int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Features ``[N, D]`` float32 of uint8 frames ``[H, W, 3]`` (an array or a stream), resized as they arrive
    and run through the model ``batch_size`` at a time: what predict computes, frame for frame as embed does."""
    out = [forward(model, resized, device, amp_dtype, flip) for resized in resized_chunks(frames, img_dim, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.feature_dim), np.float32)
