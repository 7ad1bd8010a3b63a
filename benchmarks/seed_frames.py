"""The seed's way of loading frames: one PIL open per extracted JPEG, bicubic resize, ToTensor, Normalize.

Row 2 (embed vs the seed's loading path) and row 3 (the seed's training loop) both load frames this way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pipeline.config import Config


def seed_transform(img_dim: int):
    """The seed's per-frame preprocessing: a function from a JPEG path to a normalised fp32 CHW tensor."""
    from PIL import Image
    from torchvision import transforms

    from pipeline.embed.backbone import IMAGENET_MEAN, IMAGENET_STD

    transform = transforms.Compose([transforms.Resize((img_dim, img_dim), Image.BICUBIC), transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return lambda path: transform(Image.open(path).convert("RGB"))


def jpeg_paths(cfg: Config) -> list[Path]:
    """Every extracted JPEG frame of the dataset's videos, in order."""
    from pipeline.inputs.formats import embed_items
    from pipeline.inputs.splits import frames_dir
    from pipeline.inputs.video import frame_paths

    _, items = embed_items(cfg, check_videos=False)
    return [p for item in items for p in frame_paths(frames_dir(cfg, item))]


class SeedFrames(Dataset):
    """The dataset's JPEG frames, one item per frame, loaded the seed's way (for a DataLoader)."""

    def __init__(self, cfg: Config):
        self.paths, self.load = jpeg_paths(cfg), seed_transform(cfg.embed.img_dim)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.load(self.paths[i])


def seed_frame_stream(cfg: Config, img_dim: int) -> Iterator[torch.Tensor]:
    """Endless stream of the dataset's frames loaded the seed's way, at ``img_dim``."""
    paths, load = jpeg_paths(cfg), seed_transform(img_dim)
    while True:
        for path in paths:
            yield load(path)
