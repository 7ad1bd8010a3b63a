"""How frames become a backbone's input on the CPU: ``FrameResize`` (uint8 resize and centre crop, as the weights'
own transforms do) and ``resized_chunks`` (a stream of frames resized in chunks as they arrive).

Importing this module imports no torch (the settings travel to decode workers and into the fingerprint before
torch is needed); resizing does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from pipeline.embed.backbones.card import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch

RESIZE = "{interpolation}+antialias, uint8, torch.nn.functional.interpolate on CPU"


@dataclass(frozen=True)
class FrameResize:
    """How frames become the model's input. ``short_side`` None: ``squash`` the whole frame to ``img_dim``
    (aspect changed); else resize the short side to it (both sides, without ``keep_aspect``) and centre-crop
    ``img_dim``, as the weights' own transforms do. ``mean``/``std`` are applied on the device
    (``backbone.normalize``).

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
        import torch

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
        import torch.nn.functional as F

        return F.interpolate(x, size=size, mode=self.interpolation, antialias=True, align_corners=False)

    @property
    def description(self) -> str:
        """What the fingerprint records."""
        resize = RESIZE.format(interpolation=self.interpolation)
        if self.short_side is None:
            return resize
        how = "short side" if self.keep_aspect else "both sides"
        return f"{how} to {self.short_side}, centre crop {self.img_dim}; {resize}"


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
