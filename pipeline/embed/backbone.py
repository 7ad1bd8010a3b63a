"""A backbone's forward pass: frames in, features out, fed as its card says.

Frames go uint8 ``[N, H, W, 3]`` -> ``resize.FrameResize`` (CPU, uint8, the card's interpolation with
antialias) -> ``normalize`` (on the device: float, the card's mean/std, channels_last) -> the model
-> ``[N, D]``. The embed stage, prediction and benchmarks all use these functions, so features agree
bit for bit. The network itself comes from ``backbones.resolve_backbone(...).build(device)``.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np
import torch
from torch import nn

from pipeline.embed.backbones.card import IMAGENET_MEAN, IMAGENET_STD
from pipeline.embed.resize import FrameResize, resized_chunks


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
