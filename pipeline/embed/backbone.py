"""The frozen backbone: a torchvision classifier with its head removed, and the preprocessing it expects.

Any torchvision classification model works: its last Linear (under ``fc``, ``classifier``, ``head`` or
``heads``) becomes Identity, and the feature width is that Linear's input width.

Frames go uint8 ``[N, H, W, 3]`` -> ``resize_frames`` (CPU, uint8, bilinear with antialias) ->
``normalize`` (on the device: float, ImageNet mean/std, channels_last) -> the model -> ``[N, D]``.
The embed stage, prediction and benchmarks all use these functions, so features agree bit for bit.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.embed.catalog import build_error, build_kwargs, find_head, pretrained_weights
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
    if weights != "none":
        _check_name(name)
        enum = pretrained_weights(name, weights)
        if enum is not None:
            return str(enum)
    if weights == "none":
        return f"none (random init, seed {RANDOM_INIT_SEED})"
    path = Path(weights)
    if not path.is_file():
        return f"missing file {path}"
    stat = path.stat()
    return "sha256:" + _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _build(name: str, weights: str, img_dim: int | None = None) -> nn.Module:
    kwargs = build_kwargs(name, weights, img_dim)
    enum = pretrained_weights(name, weights)
    if enum is not None:
        try:
            return torchvision.models.get_model(name, weights=enum)
        except Exception as exc:  # urllib/OSError/RuntimeError depending on how the download failed
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
            raise ActrecError(f"cannot load the ImageNet weights {enum} ({type(exc).__name__}: {exc}). Offline? "
                              f"Download {enum.url} elsewhere and place it at {target}, or set embed.weights to "
                              f"'none' or a state dict path") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except (AssertionError, ValueError) as exc:  # a size ViT / MaxViT cannot be built for
            raise build_error(name, img_dim, exc) from exc


def _load_state_dict(model: nn.Module, head: str, path: Path, name: str) -> None:
    if not path.is_file():
        names = ", ".join(torchvision.models.get_model_weights(name).__members__)
        raise ActrecError(f"embed.weights={path}: no such file; use 'imagenet', 'none', a path to a state dict or "
                          f"one of {name}'s torchvision weights ({names})")
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


def load_backbone(name: str, weights: str, device: torch.device | str, img_dim: int | None = None) -> nn.Module:
    """A frozen, eval-mode, channels_last torchvision model whose head is Identity; ``model.feature_dim`` is D.

    ``img_dim`` matters to models with a fixed input size (ViT, MaxViT): refused unless they can take it.
    """
    _check_name(name)
    if weights == "none":
        log.warning(f"embed.weights=none: {name} is randomly initialised (seed {RANDOM_INIT_SEED}); "
                    f"its features are not ImageNet features")
    model = _build(name, weights, img_dim)
    head, linear = find_head(model)
    parent = model.get_submodule(head.rpartition(".")[0]) if "." in head else model
    setattr(parent, head.rpartition(".")[2], nn.Identity())
    if weights != "none" and pretrained_weights(name, weights) is None:
        _load_state_dict(model, head, Path(weights), name)
    model.feature_dim = linear.in_features
    model.requires_grad_(False)
    return model.eval().to(device, memory_format=torch.channels_last)


@dataclass(frozen=True)
class FrameResize:
    """How frames become ``img_dim x img_dim``: ``squash`` the whole frame (aspect changed), or, with a
    ``short_side``, resize the short side to it and centre-crop ``img_dim``, as the weights' own transforms do.

    Calling it maps uint8 ``[N, H, W, 3]`` to uint8 ``[N, 3, img_dim, img_dim]`` (channels_last) on the CPU:
    bilinear with antialias on uint8, as torchvision's transforms resize.
    """
    img_dim: int
    short_side: int | None = None

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        if self.short_side is None:
            return resize_frames(frames, self.img_dim)
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NHWC memory is channels_last
        height, width = x.shape[2:]
        # torchvision's rule for one requested size: the short side gets it, the long side keeps the aspect.
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.short_side * long / short)
        size = (new_long, self.short_side) if width <= height else (self.short_side, new_long)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        top, left = int(round((size[0] - self.img_dim) / 2.0)), int(round((size[1] - self.img_dim) / 2.0))
        return x[:, :, top:top + self.img_dim, left:left + self.img_dim]

    @property
    def description(self) -> str:
        """What the fingerprint records (squash keeps the text caches of format 1 hold)."""
        if self.short_side is None:
            return RESIZE
        return f"short side to {self.short_side}, centre crop {self.img_dim}; {RESIZE}"


def frame_resize(embed_cfg) -> FrameResize:
    """The resize ``embed.resize`` and ``embed.img_dim`` ask for; crop keeps the weights' resize/crop ratio
    (ResNet-152 IMAGENET1K_V2: 232/224), so ``img_dim`` 224 gives exactly the weights' own preprocessing."""
    if embed_cfg.resize == "squash":
        return FrameResize(embed_cfg.img_dim)
    ratio = _resize_to_crop(embed_cfg.backbone, embed_cfg.weights)
    return FrameResize(embed_cfg.img_dim, round(embed_cfg.img_dim * ratio))


@functools.lru_cache(maxsize=None)
def _resize_to_crop(name: str, weights: str = "imagenet") -> float:
    """resize_size / crop_size of the backbone's torchvision weights named by ``weights`` (the default ImageNet
    weights for 'none' or a state dict; metadata only: nothing downloads)."""
    _check_name(name)
    enum = pretrained_weights(name, weights) or torchvision.models.get_model_weights(name).DEFAULT
    transforms = enum.transforms()
    return transforms.resize_size[0] / transforms.crop_size[0]


def resize_frames(frames: np.ndarray, img_dim: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, 3, img_dim, img_dim]`` (channels_last), on the CPU: the squash.

    Bilinear with antialias on uint8, as torchvision's transforms do.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NHWC memory is channels_last
    return F.interpolate(x, size=(img_dim, img_dim), mode="bilinear", antialias=True, align_corners=False)


def resized_chunks(frames: Iterable[np.ndarray], resize: FrameResize | int, chunk: int) -> Iterator[torch.Tensor]:
    """Resize a stream of uint8 frames ``[H, W, 3]`` in chunks of ``chunk`` as they arrive, so that a long video
    never sits in memory at full size. An int ``resize`` squashes to that size."""
    resize = FrameResize(resize) if isinstance(resize, int) else resize
    pending = []
    for frame in frames:
        pending.append(frame)
        if len(pending) == chunk:
            yield resize(np.stack(pending))
            pending = []
    if pending:
        yield resize(np.stack(pending))


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


def embed_frames(model: nn.Module, frames: Iterable[np.ndarray], resize: FrameResize | int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Features ``[N, D]`` float32 of uint8 frames ``[H, W, 3]`` (an array or a stream), resized as they arrive
    and run through the model ``batch_size`` at a time: what predict computes, frame for frame as embed does."""
    out = [forward(model, resized, device, amp_dtype, flip) for resized in resized_chunks(frames, resize, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.feature_dim), np.float32)
