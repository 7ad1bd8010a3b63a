"""Frame preprocessing: the crop path is the ImageNet weights' own transform; squash is the seed's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from pipeline.config import load_config
from pipeline.embed.backbone import FrameResize, frame_resize, normalize

CPU = torch.device("cpu")


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB frame with smooth structure and noise, so a wrong crop or scale shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(240, 320), (320, 240)])
def test_crop_equals_the_weights_own_transforms(height, width):
    weights = torchvision.models.ResNet152_Weights.IMAGENET1K_V2  # resize 232, crop 224
    cfg = load_config(None, ["embed.img_dim=224", "embed.resize=crop"])
    resize = frame_resize(cfg.embed)
    assert resize == FrameResize(224, 232)
    frame = photo_like(height, width)
    ours = normalize(resize(frame[None]), CPU)[0]
    theirs = weights.transforms()(torch.from_numpy(frame).permute(2, 0, 1))
    assert ours.shape == theirs.shape == (3, 224, 224)
    # Within one uint8 step of rounding, after normalisation by the smallest std (0.224).
    assert (ours - theirs).abs().max() <= 1 / 255 / 0.224 + 1e-5


def test_crop_keeps_the_aspect_and_squash_does_not():
    frame = photo_like(240, 320)
    frame[:, :40] = 0  # a black band on the left: centre crop cuts it away, squash keeps it
    cropped, squashed = FrameResize(112, 116)(frame[None])[0], FrameResize(112)(frame[None])[0]
    assert cropped.shape == squashed.shape == (3, 112, 112)
    assert cropped[:, :, :4].float().mean() > 30 and squashed[:, :, :4].float().mean() < 5


def test_crop_ratio_follows_the_backbone_weights():
    cfg = load_config(None, ["embed.img_dim=112", "embed.resize=crop"])
    assert frame_resize(cfg.embed) == FrameResize(112, 116)  # 112 * 232 / 224
    cfg = load_config(None, ["embed.img_dim=112", "embed.resize=crop", "embed.backbone=resnet18"])
    assert frame_resize(cfg.embed) == FrameResize(112, 128)  # resnet18 V1: 256 / 224
