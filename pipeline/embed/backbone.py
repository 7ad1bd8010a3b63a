"""The frozen backbone in use: loaded through the registry (``pipeline.embed.backbones``), fed as its card says.

Frames go uint8 ``[N, H, W, 3]`` -> ``FrameResize`` (CPU, uint8, the card's interpolation with
antialias) -> ``normalize`` (on the device: float, the card's mean/std, channels_last) -> the model
-> ``[N, D]``. The embed stage, prediction and benchmarks all use these functions, so features agree
bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.embed import backbones
from pipeline.embed.backbones.card import IMAGENET_MEAN, IMAGENET_STD

RESIZE = "{interpolation}+antialias, uint8, torch.nn.functional.interpolate on CPU"


def load_backbone(name: str, weights: str, device: torch.device | str, img_dim: int | None = None) -> nn.Module:
    """A frozen, eval-mode, channels_last model whose output is the feature; ``model.feature_dim`` is D."""
    return backbones.load(name, weights, device, img_dim)


def weights_identity(name: str, weights: str) -> str:
    """What the features' weights are: the library's weights, a seeded random init, or a file's SHA-256."""
    return backbones.weights_identity(name, weights)


@dataclass(frozen=True)
class FrameResize:
    """How frames become the model's input. ``short_side`` None: ``squash`` the whole frame to ``img_dim``
    (aspect changed); else resize the short side to it (both sides, without ``keep_aspect``) and centre-crop
    ``img_dim``, as the weights' own transforms do. ``mean``/``std`` are applied on the device (``normalize``).

    Calling it maps uint8 ``[N, H, W, 3]`` to uint8 ``[N, 3, img_dim, img_dim]`` (channels_last) on the CPU:
    ``interpolation`` with antialias on uint8, as torchvision's transforms (and PIL) resize.
    """
    img_dim: int
    short_side: int | None = None
    interpolation: str = "bilinear"
    keep_aspect: bool = True
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    source: str = ""  # whose preprocessing card this is (weights or tag)

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # NHWC memory is channels_last
        if self.short_side is None:
            return self._resize(x, (self.img_dim, self.img_dim))
        height, width = x.shape[2:]
        size = (self.short_side, self.short_side)
        if self.keep_aspect:
            # torchvision's rule for one requested size: the short side gets it, the long side keeps the aspect.
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(self.short_side * long / short)
            size = (new_long, self.short_side) if width <= height else (self.short_side, new_long)
        x = self._resize(x, size)
        top, left = int(round((size[0] - self.img_dim) / 2.0)), int(round((size[1] - self.img_dim) / 2.0))
        return x[:, :, top:top + self.img_dim, left:left + self.img_dim]

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)

    @property
    def description(self) -> str:
        """What the fingerprint records (a bilinear squash keeps the text caches of format 1 hold)."""
        resize = RESIZE.format(interpolation=self.interpolation)
        if self.short_side is None:
            return resize
        how = "short side" if self.keep_aspect else "both sides"
        return f"{how} to {self.short_side}, centre crop {self.img_dim}; {resize}"


def frame_resize(embed_cfg) -> FrameResize:
    """The preprocessing ``embed.*`` asks for, from the backbone's card (``embed.preprocess`` for a random init or
    a file): crop keeps the card's resize/crop ratio (ResNet-152 IMAGENET1K_V2: 232/224), so ``img_dim`` at
    the card's crop size gives exactly the weights' own preprocessing; squash keeps the card's interpolation."""
    card = _card(embed_cfg.backbone, embed_cfg.weights, embed_cfg.preprocess)
    short_side = None if embed_cfg.resize == "squash" else round(embed_cfg.img_dim * card.ratio)
    return FrameResize(embed_cfg.img_dim, short_side, card.interpolation, card.keep_aspect, card.mean, card.std,
                       card.source)


@functools.lru_cache(maxsize=None)
def _card(backbone: str, weights: str, preprocess: str):
    return backbones.card(backbone, weights, preprocess)


def resize_frames(frames: np.ndarray, img_dim: int) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> uint8 ``[N, 3, img_dim, img_dim]`` (channels_last), on the CPU: the bilinear
    squash."""
    return FrameResize(img_dim)(frames)


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


def normalize(frames: torch.Tensor, device: torch.device, mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD
              ) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float normalised by ``mean``/``std`` on ``device``, channels_last."""
    x = frames.to(device, non_blocking=True).float().div_(255)
    mean_t, std_t = _mean_std(device, tuple(mean), tuple(std))
    return ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)


@functools.lru_cache(maxsize=16)
def _mean_std(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The constants on ``device``, made once: a fresh copy per batch is a blocking host-to-device copy, which
    would stall the asynchronous feed on a GPU."""
    with torch.inference_mode(False):
        return (torch.tensor(mean, device=device).view(1, 3, 1, 1),
                torch.tensor(std, device=device).view(1, 3, 1, 1))


@torch.inference_mode()
def forward(model: nn.Module, resized: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None = None,
            flip: bool = False, resize: FrameResize | None = None) -> torch.Tensor:
    """Features ``[N, D]`` float32 on the CPU of resized uint8 frames, normalised as ``resize`` says (ImageNet
    mean/std without one); ``flip`` mirrors them left-right first."""
    resize = resize or FrameResize(resized.shape[-1])
    x = normalize(resized, device, resize.mean, resize.std)
    if flip:
        x = torch.flip(x, dims=[3])
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return model(x).float().cpu()


def embed_frames(model: nn.Module, frames: Iterable[np.ndarray], resize: FrameResize | int, device: torch.device,
                 amp_dtype: torch.dtype | None = None, batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Features ``[N, D]`` float32 of uint8 frames ``[H, W, 3]`` (an array or a stream), resized as they arrive
    and run through the model ``batch_size`` at a time: what predict computes, frame for frame as embed does."""
    resize = FrameResize(resize) if isinstance(resize, int) else resize
    out = [forward(model, resized, device, amp_dtype, flip, resize)
           for resized in resized_chunks(frames, resize, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.feature_dim), np.float32)
